package flight

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

// Wire format version 1 (DESIGN.md, "Message encoding"). All integers big-endian; every string is a one-byte
// length followed by its bytes. The encoding is canonical: Decode accepts exactly the bytes Encode produces.
const (
	magic   = "NPFL"
	version = 1

	// MaxMessageSize bounds an encoded message; Decode rejects longer input before reading it.
	MaxMessageSize = 1024
	// MaxIDLen bounds each part of a Key and a blob CID.
	MaxIDLen = 128
	// MaxReasonLen bounds the failure reason of a DONE.
	MaxReasonLen = 200
	// MinTTL and MaxTTL bound the TTL a WANT or LEASE may carry.
	MinTTL = 10 * time.Millisecond
	MaxTTL = time.Hour
)

// Type is a message type. Types are append-only: a number is never reused.
type Type uint8

// Message types.
const (
	TypeWant     Type = 1 // a peer wants the key compiled and is a candidate compiler
	TypeLease    Type = 2 // a peer claims (or heartbeats) the compile of the key
	TypeDone     Type = 3 // the holder finished: a blob CID or a failure reason
	TypeRelease  Type = 4 // the holder drops its claim without a result and still wants the key
	TypeWithdraw Type = 5 // the peer no longer wants the key and drops any lease it holds
)

func (t Type) String() string {
	switch t {
	case TypeWant:
		return "WANT"
	case TypeLease:
		return "LEASE"
	case TypeDone:
		return "DONE"
	case TypeRelease:
		return "RELEASE"
	case TypeWithdraw:
		return "WITHDRAW"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Errors of message decoding and validation.
var (
	ErrMalformed = errors.New("malformed flight message")
	ErrVersion   = errors.New("unsupported flight message version")
)

// Key names one fleet-wide compile: a model compiled with a profile for a compatibility class, the same key as the
// local single flight of compiles. On the wire each part is 1 to MaxIDLen printable ASCII bytes (no spaces).
type Key = compile.FlightKey

// validateKey reports whether every part of k is well formed.
func validateKey(k Key) error {
	for _, p := range [...]struct{ name, v string }{{"model", k.ModelID}, {"profile", k.ProfileID}, {"class", k.Class}} {
		if err := checkID(p.v); err != nil {
			return fmt.Errorf("key %s: %w", p.name, err)
		}
	}
	return nil
}

// Message is one decoded flight message. Fields that a type does not carry are zero.
type Message struct {
	Type   Type
	Sender peer.ID // claimed author; the coordinator drops the message unless it equals the transport's author
	Key    Key

	Rank  uint16        // WANT, LEASE, DONE: the sender's rank within the class
	TTL   time.Duration // WANT, LEASE: how long the receiver treats it as live, from receipt; whole milliseconds
	Epoch uint64        // LEASE, DONE, RELEASE: lease epoch, at least 1
	Held  bool          // LEASE: false for a claim, true once the holder compiles

	CID    cid.Cid // DONE: the blob CID on success (CIDv1 raw sha2-256, blobstore.ParseCID)
	Reason string  // DONE: why the compile failed; empty on success
}

// Failed reports whether m is a DONE for a failed compile.
func (m *Message) Failed() bool { return m.Type == TypeDone && !m.CID.Defined() }

// Encode returns the canonical encoding of m, or an error if m is not valid.
func (m *Message) Encode() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 256)
	b = append(b, magic...)
	b = append(b, version, byte(m.Type))
	b = appendStr(b, string(m.Sender))
	b = appendStr(b, m.Key.ModelID)
	b = appendStr(b, m.Key.ProfileID)
	b = appendStr(b, m.Key.Class)
	switch m.Type {
	case TypeWant:
		b = binary.BigEndian.AppendUint16(b, m.Rank)
		b = binary.BigEndian.AppendUint32(b, uint32(m.TTL/time.Millisecond))
	case TypeLease:
		b = binary.BigEndian.AppendUint16(b, m.Rank)
		b = binary.BigEndian.AppendUint64(b, m.Epoch)
		b = binary.BigEndian.AppendUint32(b, uint32(m.TTL/time.Millisecond))
		b = append(b, boolByte(m.Held))
	case TypeDone:
		b = binary.BigEndian.AppendUint16(b, m.Rank)
		b = binary.BigEndian.AppendUint64(b, m.Epoch)
		if m.CID.Defined() {
			b = append(b, 0)
			b = appendStr(b, m.CID.String())
		} else {
			b = append(b, 1)
			b = appendStr(b, m.Reason)
		}
	case TypeRelease:
		b = binary.BigEndian.AppendUint64(b, m.Epoch)
	case TypeWithdraw:
	}
	return b, nil
}

// Decode parses one message. It rejects input longer than MaxMessageSize, a wrong magic, another version, an
// unknown type, an invalid field and trailing bytes.
func Decode(b []byte) (*Message, error) {
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(b), MaxMessageSize)
	}
	if len(b) < 6 || string(b[:4]) != magic {
		return nil, fmt.Errorf("%w: bad magic", ErrMalformed)
	}
	if b[4] != version {
		return nil, fmt.Errorf("%w: version %d", ErrVersion, b[4])
	}
	m := &Message{Type: Type(b[5])}
	r := reader{b: b[6:]}
	m.Sender = peer.ID(r.str())
	m.Key.ModelID = r.str()
	m.Key.ProfileID = r.str()
	m.Key.Class = r.str()
	switch m.Type {
	case TypeWant:
		m.Rank = r.u16()
		m.TTL = time.Duration(r.u32()) * time.Millisecond
	case TypeLease:
		m.Rank = r.u16()
		m.Epoch = r.u64()
		m.TTL = time.Duration(r.u32()) * time.Millisecond
		switch r.u8() {
		case 0:
		case 1:
			m.Held = true
		default:
			r.fail("lease phase")
		}
	case TypeDone:
		m.Rank = r.u16()
		m.Epoch = r.u64()
		switch r.u8() {
		case 0:
			// The one place a CID string becomes a cid.Cid: a DONE whose CID does not parse is dropped.
			if c, err := parseCID(r.str()); err != nil {
				r.fail("cid: " + err.Error())
			} else {
				m.CID = c
			}
		case 1:
			m.Reason = r.str()
		default:
			r.fail("done status")
		}
	case TypeRelease:
		m.Epoch = r.u64()
	case TypeWithdraw:
	default:
		return nil, fmt.Errorf("%w: unknown type %d", ErrMalformed, b[5])
	}
	if r.err != "" {
		return nil, fmt.Errorf("%w: %s %s", ErrMalformed, m.Type, r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %s has %d trailing bytes", ErrMalformed, m.Type, len(r.b))
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Message) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrMalformed, m.Type, fmt.Sprintf(format, args...))
	}
	if m.Type < TypeWant || m.Type > TypeWithdraw {
		return fmt.Errorf("%w: unknown type %d", ErrMalformed, uint8(m.Type))
	}
	if len(m.Sender) > 255 {
		return bad("sender is %d bytes", len(m.Sender))
	}
	if _, err := peer.IDFromBytes([]byte(m.Sender)); err != nil {
		return bad("sender is not a peer ID: %v", err)
	}
	if err := validateKey(m.Key); err != nil {
		return bad("%v", err)
	}
	carries := func(t ...Type) bool {
		for _, x := range t {
			if m.Type == x {
				return true
			}
		}
		return false
	}
	if !carries(TypeWant, TypeLease, TypeDone) && m.Rank != 0 {
		return bad("rank not carried")
	}
	if carries(TypeWant, TypeLease) {
		if m.TTL < MinTTL || m.TTL > MaxTTL || m.TTL%time.Millisecond != 0 {
			return bad("ttl %v outside [%v, %v] or not whole milliseconds", m.TTL, MinTTL, MaxTTL)
		}
	} else if m.TTL != 0 {
		return bad("ttl not carried")
	}
	if carries(TypeLease, TypeDone, TypeRelease) {
		if m.Epoch == 0 {
			return bad("epoch 0")
		}
	} else if m.Epoch != 0 {
		return bad("epoch not carried")
	}
	if m.Held && m.Type != TypeLease {
		return bad("held not carried")
	}
	if m.Type == TypeDone {
		switch {
		case m.CID.Defined() && m.Reason != "":
			return bad("both cid and reason")
		case m.CID.Defined():
			if err := checkCID(m.CID); err != nil {
				return bad("cid: %v", err)
			}
		default:
			if err := checkReason(m.Reason); err != nil {
				return bad("reason: %v", err)
			}
		}
	} else if m.CID.Defined() || m.Reason != "" {
		return bad("cid or reason not carried")
	}
	return nil
}

func checkID(s string) error {
	if len(s) == 0 || len(s) > MaxIDLen {
		return fmt.Errorf("length %d outside [1, %d]", len(s), MaxIDLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fmt.Errorf("byte %#x at %d is not printable ASCII", s[i], i)
		}
	}
	return nil
}

// checkCID reports whether c is a blob CID (CIDv1 raw sha2-256) whose string form fits a DONE.
func checkCID(c cid.Cid) error {
	if _, err := blobstore.Digest(c); err != nil {
		return err
	}
	return checkID(c.String())
}

// parseCID parses the CID of a DONE: a blob CID in its canonical string form (base32), so that Decode accepts
// exactly what Encode produces.
func parseCID(s string) (cid.Cid, error) {
	if err := checkID(s); err != nil {
		return cid.Undef, err
	}
	c, err := blobstore.ParseCID(s)
	if err != nil {
		return cid.Undef, err
	}
	if c.String() != s {
		return cid.Undef, fmt.Errorf("%q is not in canonical form %q", s, c)
	}
	return c, nil
}

func checkReason(s string) error {
	if len(s) == 0 || len(s) > MaxReasonLen {
		return fmt.Errorf("length %d outside [1, %d]", len(s), MaxReasonLen)
	}
	if !utf8.ValidString(s) {
		return errors.New("not UTF-8")
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return fmt.Errorf("control character %U", r)
		}
	}
	return nil
}

// reason turns an error into a valid DONE reason: control characters replaced, truncated on a rune boundary.
func reason(err error) string {
	s := []rune(err.Error())
	out := make([]byte, 0, MaxReasonLen)
	for _, r := range s {
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			r = ' '
		}
		if len(out)+utf8.RuneLen(r) > MaxReasonLen {
			break
		}
		out = utf8.AppendRune(out, r)
	}
	if len(out) == 0 {
		return "compile failed"
	}
	return string(out)
}

func appendStr(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// reader consumes fields; the first short read sets err and later reads return zero values.
type reader struct {
	b   []byte
	err string
}

func (r *reader) take(n int, what string) []byte {
	if r.err != "" {
		return nil
	}
	if len(r.b) < n {
		r.fail("truncated " + what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) fail(what string) {
	if r.err == "" {
		r.err = what
	}
}

func (r *reader) str() string {
	n := r.take(1, "length")
	if n == nil {
		return ""
	}
	return string(r.take(int(n[0]), "string"))
}

func (r *reader) u8() byte {
	if v := r.take(1, "byte"); v != nil {
		return v[0]
	}
	return 0xff
}

func (r *reader) u16() uint16 {
	if v := r.take(2, "uint16"); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4, "uint32"); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8, "uint64"); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}
