package p2p

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"
	ma "github.com/multiformats/go-multiaddr"
)

// rawMember seals payload bytes as they are, bypassing encodeMember's checks: what a hostile member can send.
type rawMember []byte

func (rawMember) Domain() string                   { return MemberDomain }
func (rawMember) Codec() []byte                    { return MemberPayloadType }
func (r rawMember) MarshalRecord() ([]byte, error) { return r, nil }
func (rawMember) UnmarshalRecord([]byte) error     { return nil }

func sealRaw(t *testing.T, payload []byte, k crypto.PrivKey) []byte {
	t.Helper()
	env, err := record.Seal(rawMember(payload), k)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestMemberVersion: the npu-agent version travels in the member record as an optional trailing field; a record
// without it (as members before it sign them) decodes to an empty version and keeps its exact bytes.
func TestMemberVersion(t *testing.T) {
	t.Parallel()
	k, id := memberKey(t)
	m := MemberInfo{ID: id, Seq: 42, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.1/tcp/4801")}, Hostname: "npu-07",
		Proof: bytes.Repeat([]byte{3}, memberProofLen)}
	old, err := encodeMember(m)
	if err != nil {
		t.Fatal(err)
	}
	// The format before the version field, written out by hand: it must stay what an empty version encodes to.
	want := append([]byte("NPMB\x01"), byte(len(id)))
	want = append(want, id...)
	want = append(want, 42, 0, 0, 0, 0, 0, 0, 0, 1)
	a := m.Addrs[0].Bytes()
	want = append(append(want, byte(len(a))), a...)
	want = append(append(want, 6), "npu-07"...)
	want = append(want, 0, 0, memberProofLen)
	want = append(want, m.Proof...)
	if !bytes.Equal(old, want) {
		t.Fatalf("a record without a version encodes as\n%x, want the old format\n%x", old, want)
	}
	got, err := OpenMember(sealRaw(t, old, k))
	if err != nil || got.Version != "" || got.Hostname != "npu-07" {
		t.Fatalf("old record: %+v, %v", got, err)
	}
	m.Version = "1.4.0-rc.1+g1a2b3c4"
	raw, err := SealMember(m, k)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := OpenMember(raw); err != nil || got.Version != m.Version {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := SealMember(MemberInfo{ID: id, Version: strings.Repeat("9", maxMemberVersionLen)}, k); err != nil {
		t.Errorf("a version of %d bytes: %v", maxMemberVersionLen, err)
	}
}

// TestThreatMemberVersion: a member's signed record with a version that is too long, not printable ASCII, empty
// but present, or followed by more bytes is rejected whole; we never seal one either.
func TestThreatMemberVersion(t *testing.T) {
	t.Parallel()
	k, id := memberKey(t)
	base, err := encodeMember(MemberInfo{ID: id, Seq: 7, Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	withVersion := func(v string) []byte { return append(append(bytes.Clone(base), byte(len(v))), v...) }
	long := strings.Repeat("v", maxMemberVersionLen+1)
	for _, c := range []struct {
		name    string
		payload []byte
	}{
		{"too long", withVersion(long)},
		{"length beyond the record", append(bytes.Clone(base), 20, 'v')},
		{"space", withVersion("1.0 beta")},
		{"control character", withVersion("1.0\x1b[2J")},
		{"non-ASCII", withVersion("1.0\xc3\xa9")},
		{"present but empty", withVersion("")},
		{"bytes after the version", append(withVersion("1.0"), 0)},
	} {
		if _, err := decodeMember(c.payload); !errors.Is(err, ErrBadMember) {
			t.Errorf("%s: decode: %v, want ErrBadMember", c.name, err)
		}
		if _, err := OpenMember(sealRaw(t, c.payload, k)); !errors.Is(err, ErrBadMember) {
			t.Errorf("%s: open: %v, want ErrBadMember", c.name, err)
		}
	}
	for _, v := range []string{long, "1.0 beta", "1.0\n"} {
		if _, err := SealMember(MemberInfo{ID: id, Version: v}, k); err == nil {
			t.Errorf("sealed version %q", v)
		}
	}
}

func FuzzDecodeMember(f *testing.F) {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		f.Fatal(err)
	}
	m := MemberInfo{ID: id, Seq: uint64(time.Now().UnixNano()), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.1/tcp/4801")},
		Hostname: "npu-07", Class: "class-a", Tags: []string{"lab"}, Proof: bytes.Repeat([]byte{1}, memberProofLen)}
	old, err := encodeMember(m)
	if err != nil {
		f.Fatal(err)
	}
	m.Version = "1.4.0"
	payload, err := encodeMember(m)
	if err != nil {
		f.Fatal(err)
	}
	env, err := SealMember(m, k)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(old)
	f.Add(payload)
	f.Add(env)
	f.Add([]byte(memberMagic))
	f.Fuzz(func(t *testing.T, in []byte) {
		if m, err := decodeMember(in); err == nil {
			again, err := encodeMember(m)
			if err != nil || !bytes.Equal(again, in) {
				t.Fatalf("decoded member does not re-encode to its bytes: %v", err)
			}
			if len(m.Version) > maxMemberVersionLen {
				t.Fatalf("version of %d bytes", len(m.Version))
			}
		}
		if m, err := OpenMember(in); err == nil && checkMemberFields(m) != nil {
			t.Fatalf("opened a member record whose fields fail the checks")
		}
	})
}
