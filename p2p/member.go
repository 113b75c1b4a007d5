package p2p

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
)

// Member records: "peer P, reachable at these addresses, is a member (hostname, class, tags)", encoded canonically
// and sealed in a libp2p signed envelope by P itself. docs/design.md section 6.2 is normative.
const (
	MemberDomain = "npu-agent-member"
	// MaxMemberEnvelope bounds a whole signed member record, checked before anything is decoded.
	MaxMemberEnvelope = 4 << 10

	memberMagic          = "NPMB"
	memberVersion        = 1
	memberPayloadTypeS   = "/npu-agent/member/1"
	maxMemberAddrs       = 16
	maxMemberAddrLen     = 128
	maxMemberHostnameLen = 64
	maxMemberClassLen    = 128
	maxMemberTags        = 16
	maxMemberTagLen      = 64
	maxMemberVersionLen  = 64
	memberProofLen       = 32
	memberProofDomain    = "npu-agent/member/1\x00"
)

// MemberPayloadType is the envelope payload type of a member record.
var MemberPayloadType = []byte(memberPayloadTypeS)

// ErrBadMember wraps every member record verification error.
var ErrBadMember = errors.New("invalid member record")

// MemberInfo is what a member says about itself, verified.
type MemberInfo struct {
	ID       peer.ID        `json:"id"`
	Seq      uint64         `json:"seq"` // Unix nanoseconds when the member signed it; strictly increasing per member
	Addrs    []ma.Multiaddr `json:"addrs"`
	Hostname string         `json:"hostname,omitempty"`
	Class    string         `json:"class,omitempty"`
	Tags     []string       `json:"tags,omitempty"`
	// Version is the member's npu-agent version; empty in records of versions before it was added.
	Version string `json:"version,omitempty"`
	// Proof is HMAC-SHA256(fleet key, "npu-agent/member/1\0" || peer ID bytes), or empty without a fleet key:
	// it shows that the key's holder vouches for this identity, as a connection would.
	Proof []byte `json:"-"`
}

// memberProof is the fleet key's proof for id; nil without a key.
func memberProof(psk pnet.PSK, id peer.ID) []byte {
	if len(psk) == 0 {
		return nil
	}
	m := hmac.New(sha256.New, psk)
	m.Write([]byte(memberProofDomain))
	m.Write([]byte(id))
	return m.Sum(nil)
}

type memberPayload struct{ m MemberInfo }

func (*memberPayload) Domain() string { return MemberDomain }
func (*memberPayload) Codec() []byte  { return MemberPayloadType }

func (p *memberPayload) MarshalRecord() ([]byte, error) { return encodeMember(p.m) }

func (p *memberPayload) UnmarshalRecord(b []byte) error {
	m, err := decodeMember(b)
	if err != nil {
		return err
	}
	p.m = m
	return nil
}

func printable(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

func checkMemberFields(m MemberInfo) error {
	switch {
	case len(m.ID) == 0 || len(m.ID) > maxProducerLen:
		return fmt.Errorf("%w: peer ID of %d bytes", ErrBadMember, len(m.ID))
	case len(m.Addrs) > maxMemberAddrs:
		return fmt.Errorf("%w: %d addresses, above %d", ErrBadMember, len(m.Addrs), maxMemberAddrs)
	case !printable(m.Hostname, 0, maxMemberHostnameLen):
		return fmt.Errorf("%w: hostname %q", ErrBadMember, m.Hostname)
	case !printable(m.Class, 0, maxMemberClassLen):
		return fmt.Errorf("%w: class %q", ErrBadMember, m.Class)
	case len(m.Tags) > maxMemberTags:
		return fmt.Errorf("%w: %d tags, above %d", ErrBadMember, len(m.Tags), maxMemberTags)
	case !printable(m.Version, 0, maxMemberVersionLen):
		return fmt.Errorf("%w: version %q", ErrBadMember, m.Version)
	case len(m.Proof) != 0 && len(m.Proof) != memberProofLen:
		return fmt.Errorf("%w: proof of %d bytes", ErrBadMember, len(m.Proof))
	}
	if _, err := peer.IDFromBytes([]byte(m.ID)); err != nil {
		return fmt.Errorf("%w: peer ID: %w", ErrBadMember, err)
	}
	for _, a := range m.Addrs {
		if l := len(a.Bytes()); l == 0 || l > maxMemberAddrLen {
			return fmt.Errorf("%w: address of %d bytes", ErrBadMember, l)
		}
	}
	for _, t := range m.Tags {
		if !printable(t, 1, maxMemberTagLen) {
			return fmt.Errorf("%w: tag %q", ErrBadMember, t)
		}
	}
	return nil
}

// encodeMember: magic, version, then each field with a u8 length or count (seq u64 little-endian). The npu-agent
// version is an optional trailing field, absent when empty, so that records of older members still decode.
func encodeMember(m MemberInfo) ([]byte, error) {
	if err := checkMemberFields(m); err != nil {
		return nil, err
	}
	b := append([]byte(memberMagic), memberVersion)
	b = append(b, byte(len(m.ID)))
	b = append(b, m.ID...)
	b = binary.LittleEndian.AppendUint64(b, m.Seq)
	b = append(b, byte(len(m.Addrs)))
	for _, a := range m.Addrs {
		ab := a.Bytes()
		b = append(append(b, byte(len(ab))), ab...)
	}
	b = append(append(b, byte(len(m.Hostname))), m.Hostname...)
	b = append(append(b, byte(len(m.Class))), m.Class...)
	b = append(b, byte(len(m.Tags)))
	for _, t := range m.Tags {
		b = append(append(b, byte(len(t))), t...)
	}
	b = append(append(b, byte(len(m.Proof))), m.Proof...)
	if m.Version != "" {
		b = append(append(b, byte(len(m.Version))), m.Version...)
	}
	return b, nil
}

// decodeMember accepts exactly what encodeMember produces; every length is checked before its field is sliced.
func decodeMember(b []byte) (MemberInfo, error) {
	var m MemberInfo
	if len(b) > MaxMemberEnvelope {
		return m, fmt.Errorf("%w: %d bytes", ErrBadMember, len(b))
	}
	d := &recordReader{b: b}
	if v := d.take(len(memberMagic)); d.err == nil && string(v) != memberMagic {
		return m, fmt.Errorf("%w: bad magic", ErrBadMember)
	}
	if v := d.u8(); d.err == nil && v != memberVersion {
		return m, fmt.Errorf("%w: version %d", ErrBadMember, v)
	}
	m.ID = peer.ID(d.bounded(d.u8(), maxProducerLen, "peer ID"))
	m.Seq = d.u64()
	n := d.u8()
	if d.err == nil && n > maxMemberAddrs {
		return m, fmt.Errorf("%w: %d addresses", ErrBadMember, n)
	}
	for i := 0; i < n && d.err == nil; i++ {
		ab := d.bounded(d.u8(), maxMemberAddrLen, "address")
		if d.err != nil {
			break
		}
		a, err := ma.NewMultiaddrBytes(ab)
		if err != nil {
			return m, fmt.Errorf("%w: address: %w", ErrBadMember, err)
		}
		m.Addrs = append(m.Addrs, a)
	}
	m.Hostname = string(d.bounded(d.u8(), maxMemberHostnameLen, "hostname"))
	m.Class = string(d.bounded(d.u8(), maxMemberClassLen, "class"))
	n = d.u8()
	if d.err == nil && n > maxMemberTags {
		return m, fmt.Errorf("%w: %d tags", ErrBadMember, n)
	}
	for i := 0; i < n && d.err == nil; i++ {
		m.Tags = append(m.Tags, string(d.bounded(d.u8(), maxMemberTagLen, "tag")))
	}
	if p := d.bounded(d.u8(), memberProofLen, "proof"); len(p) > 0 {
		m.Proof = bytes.Clone(p)
	}
	if d.err == nil && len(d.b) > 0 {
		m.Version = string(d.bounded(d.u8(), maxMemberVersionLen, "version"))
	}
	if d.err != nil {
		return m, fmt.Errorf("%w: %w", ErrBadMember, d.err)
	}
	again, err := encodeMember(m)
	if err != nil {
		return m, err
	}
	if !bytes.Equal(again, b) {
		return m, fmt.Errorf("%w: not canonical", ErrBadMember)
	}
	return m, nil
}

// SealMember signs m with key, whose peer ID must be m.ID, and returns the marshalled envelope.
func SealMember(m MemberInfo, key crypto.PrivKey) ([]byte, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("seal member: %w", err)
	}
	if id != m.ID {
		return nil, fmt.Errorf("%w: member %s is not the signer %s", ErrBadMember, m.ID, id)
	}
	env, err := record.Seal(&memberPayload{m: m}, key)
	if err != nil {
		return nil, fmt.Errorf("seal member: %w", err)
	}
	raw, err := env.Marshal()
	if err != nil {
		return nil, fmt.Errorf("seal member: %w", err)
	}
	if len(raw) > MaxMemberEnvelope {
		return nil, fmt.Errorf("%w: envelope is %d bytes, above %d", ErrBadMember, len(raw), MaxMemberEnvelope)
	}
	return raw, nil
}

// OpenMember verifies a signed member record: size before anything else, signature, payload type, canonical
// fields, member == signer. It does not check the proof or the allowlist (the member book does).
func OpenMember(raw []byte) (MemberInfo, error) {
	if len(raw) > MaxMemberEnvelope {
		return MemberInfo{}, fmt.Errorf("%w: envelope is %d bytes, above %d", ErrBadMember, len(raw), MaxMemberEnvelope)
	}
	var p memberPayload
	env, err := record.ConsumeTypedEnvelope(raw, &p)
	if err != nil {
		return MemberInfo{}, fmt.Errorf("%w: %w", ErrBadMember, err)
	}
	if !bytes.Equal(env.PayloadType, MemberPayloadType) {
		return MemberInfo{}, fmt.Errorf("%w: payload type %q", ErrBadMember, env.PayloadType)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return MemberInfo{}, fmt.Errorf("%w: signer key: %w", ErrBadMember, err)
	}
	if p.m.ID != signer {
		return MemberInfo{}, fmt.Errorf("%w: member %s is not the signer %s", ErrBadMember, p.m.ID, signer)
	}
	p.m.Addrs = slices.Clip(p.m.Addrs)
	return p.m, nil
}

// seqTime is the signing time a seq stands for.
func seqTime(seq uint64) time.Time { return time.Unix(0, int64(min(seq, 1<<63-1))) }
