package flight

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// testPeerID derives a real peer ID from a deterministic Ed25519 key, so tests need no randomness.
func testPeerID(t testing.TB, seed int) peer.ID {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat(binary.BigEndian.AppendUint32(nil, uint32(seed)), 16)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

var testKey = Key{ModelID: "bafkreimodel", ProfileID: "prof-1", Class: "class-a"}

func validMessages(t testing.TB) []*Message {
	p := testPeerID(t, 1)
	return []*Message{
		{Type: TypeWant, Sender: p, Key: testKey, Rank: 3, TTL: 15 * time.Second},
		{Type: TypeLease, Sender: p, Key: testKey, Rank: 0, Epoch: 1, TTL: MinTTL},
		{Type: TypeLease, Sender: p, Key: testKey, Rank: 65535, Epoch: 1<<64 - 1, TTL: MaxTTL, Held: true},
		{Type: TypeDone, Sender: p, Key: testKey, Rank: 2, Epoch: 7, CID: testCID("blob")},
		{Type: TypeDone, Sender: p, Key: testKey, Rank: 2, Epoch: 7, Reason: "compiler exited 1: out of memory é"},
		{Type: TypeRelease, Sender: p, Key: testKey, Epoch: 4},
		{Type: TypeWithdraw, Sender: p, Key: testKey},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	t.Parallel()
	for _, m := range validMessages(t) {
		t.Run(m.Type.String(), func(t *testing.T) {
			t.Parallel()
			b, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > MaxMessageSize {
				t.Fatalf("encoded %d bytes", len(b))
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if *got != *m {
				t.Fatalf("decoded %+v, want %+v", got, m)
			}
		})
	}
}

func TestMessageMaxSizeFits(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", MaxIDLen)
	m := &Message{Type: TypeDone, Sender: testPeerID(t, 1), Key: Key{ModelID: long, ProfileID: long, Class: long}, Epoch: 1,
		Reason: strings.Repeat("y", MaxReasonLen)}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxMessageSize {
		t.Fatalf("largest message is %d bytes, limit %d", len(b), MaxMessageSize)
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	t.Parallel()
	p := testPeerID(t, 1)
	tests := []struct {
		name string
		m    Message
	}{
		{"unknown type", Message{Type: 9, Sender: p, Key: testKey}},
		{"bad sender", Message{Type: TypeWithdraw, Sender: "not-a-peer", Key: testKey}},
		{"empty model", Message{Type: TypeWithdraw, Sender: p, Key: Key{ModelID: "", ProfileID: "p", Class: "c"}}},
		{"space in class", Message{Type: TypeWithdraw, Sender: p, Key: Key{ModelID: "m", ProfileID: "p", Class: "c d"}}},
		{"long profile", Message{Type: TypeWithdraw, Sender: p, Key: Key{ModelID: "m", ProfileID: strings.Repeat("p", MaxIDLen+1), Class: "c"}}},
		{"ttl too small", Message{Type: TypeWant, Sender: p, Key: testKey, TTL: time.Millisecond}},
		{"ttl too large", Message{Type: TypeWant, Sender: p, Key: testKey, TTL: MaxTTL + time.Millisecond}},
		{"ttl fraction", Message{Type: TypeWant, Sender: p, Key: testKey, TTL: time.Second + 1}},
		{"lease epoch 0", Message{Type: TypeLease, Sender: p, Key: testKey, TTL: time.Second}},
		{"want with epoch", Message{Type: TypeWant, Sender: p, Key: testKey, TTL: time.Second, Epoch: 1}},
		{"release with rank", Message{Type: TypeRelease, Sender: p, Key: testKey, Epoch: 1, Rank: 1}},
		{"done neither", Message{Type: TypeDone, Sender: p, Key: testKey, Epoch: 1}},
		{"done both", Message{Type: TypeDone, Sender: p, Key: testKey, Epoch: 1, CID: testCID("c"), Reason: "r"}},
		{"done reason control", Message{Type: TypeDone, Sender: p, Key: testKey, Epoch: 1, Reason: "a\nb"}},
		{"done reason long", Message{Type: TypeDone, Sender: p, Key: testKey, Epoch: 1,
			Reason: strings.Repeat("r", MaxReasonLen+1)}},
		{"done not a blob cid", Message{Type: TypeDone, Sender: p, Key: testKey, Epoch: 1,
			CID: cid.NewCidV1(cid.DagProtobuf, testCID("x").Hash())}},
		{"held on want", Message{Type: TypeWant, Sender: p, Key: testKey, TTL: time.Second, Held: true}},
		{"cid on want", Message{Type: TypeWant, Sender: p, Key: testKey, TTL: time.Second, CID: testCID("c")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := tt.m.Encode(); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Encode: %v, want ErrMalformed", err)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	valid, err := validMessages(t)[2].Encode() // held LEASE
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"magic", mut(func(b []byte) []byte { b[0] = 'X'; return b }), ErrMalformed},
		{"version", mut(func(b []byte) []byte { b[4] = 2; return b }), ErrVersion},
		{"type", mut(func(b []byte) []byte { b[5] = 0; return b }), ErrMalformed},
		{"type 6", mut(func(b []byte) []byte { b[5] = 6; return b }), ErrMalformed},
		{"trailing", append(append([]byte(nil), valid...), 0), ErrMalformed},
		{"truncated", valid[:len(valid)-1], ErrMalformed},
		{"phase 2", mut(func(b []byte) []byte { b[len(b)-1] = 2; return b }), ErrMalformed},
		{"oversized", make([]byte, MaxMessageSize+1), ErrMalformed},
		{"string past end", mut(func(b []byte) []byte { b[6] = 255; return b }), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := Decode(tt.b); !errors.Is(err, tt.want) {
				t.Fatalf("Decode: %v, want %v", err, tt.want)
			}
		})
	}
}

// A DONE's CID string is parsed once, at Decode: anything but a blob CID in canonical form is malformed.
func TestDecodeRejectsBadCID(t *testing.T) {
	t.Parallel()
	p := testPeerID(t, 1)
	good := testCID("blob")
	// done encodes a DONE whose CID field holds s as is.
	done := func(s string) []byte {
		b := append([]byte(magic), version, byte(TypeDone))
		for _, f := range []string{string(p), testKey.ModelID, testKey.ProfileID, testKey.Class} {
			b = appendStr(b, f)
		}
		b = append(b, 0, 0 /* rank */, 0, 0, 0, 0, 0, 0, 0, 1 /* epoch */, 0 /* cid follows */)
		return appendStr(b, s)
	}
	if m, err := Decode(done(good.String())); err != nil || m.CID != good {
		t.Fatalf("valid DONE: %+v, %v", m, err)
	}
	upper, err := good.StringOfBase('B') // base32 upper: the same CID, not canonical
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{
		"empty":         "",
		"space":         "a b",
		"not a cid":     "bafkreiblob",
		"not canonical": upper,
		"not a blob":    cid.NewCidV1(cid.DagProtobuf, good.Hash()).String(),
		"cidv0":         cid.NewCidV0(good.Hash()).String(),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if m, err := Decode(done(s)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode: %+v, %v; want ErrMalformed", m, err)
			}
		})
	}
}

func TestReason(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"exit 1", "exit 1"},
		{"line1\nline2\x00", "line1 line2 "},
		{"", "compile failed"},
		{strings.Repeat("é", MaxReasonLen), strings.Repeat("é", MaxReasonLen/2)},
	}
	for _, tt := range tests {
		got := reason(errors.New(tt.in))
		if got != tt.want {
			t.Errorf("reason(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if err := checkReason(got); err != nil {
			t.Errorf("reason(%q) is not a valid reason: %v", tt.in, err)
		}
	}
}

// FuzzDecode checks that Decode never panics, and that whatever it accepts re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, m := range validMessages(f) {
		b, err := m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("NPFL\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		again, err := m.Encode()
		if err != nil {
			t.Fatalf("decoded message does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("not canonical:\n in  %x\n out %x", b, again)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	data, err := validMessages(b)[2].Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
