package p2p

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The all-zero seed makes the fuzz seeds reproducible.
var fuzzAuthority = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

func TestCertCodec(t *testing.T) {
	t.Parallel()
	_, id := newKey(t)
	_, other := newKey(t)
	pub := fuzzAuthority.Public().(ed25519.PublicKey)
	now := time.Unix(1_800_000_000, 0)
	b, err := IssueCert(fuzzAuthority, id, now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rl, err := IssueRevocations(fuzzAuthority, 3, now, []peer.ID{other, id, other})
	if err != nil {
		t.Fatal(err)
	}
	list, err := DecodeRevocations(rl, pub)
	if err != nil || list.Seq != 3 || len(list.Peers) != 2 || !list.Revoked(id) {
		t.Fatalf("revocation list %+v, %v", list, err)
	}
	otherCA, _, _ := ed25519.GenerateKey(nil)
	for _, tc := range []struct {
		name string
		b    []byte
		pub  ed25519.PublicKey
		p    peer.ID
		at   time.Time
		rl   *RevocationList
		want error
	}{
		{"valid", b, pub, id, now, nil, nil},
		{"within skew before", b, pub, id, now.Add(-4 * time.Minute), nil, nil},
		{"too early", b, pub, id, now.Add(-6 * time.Minute), nil, ErrCertExpired},
		{"expired", b, pub, id, now.Add(time.Hour + 6*time.Minute), nil, ErrCertExpired},
		{"another peer", b, pub, other, now, nil, ErrCertPeer},
		{"another authority", b, otherCA, id, now, nil, ErrCertAuthority},
		{"revoked", b, pub, id, now, list, ErrCertRevoked},
		{"trailing byte", append(append([]byte{}, b...), 0), pub, id, now, nil, ErrBadCert},
		{"truncated", b[:len(b)-1], pub, id, now, nil, ErrBadCert},
		{"tampered", flip(b, 20), pub, id, now, nil, ErrBadCert},
		{"tampered time", flip(b, len(b)-70), pub, id, now, nil, ErrBadCert},
		{"oversized", make([]byte, MaxCertSize+1), pub, id, now, nil, ErrBadCert},
	} {
		_, err := VerifyCert(tc.b, tc.pub, tc.p, tc.at, tc.rl)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	for name, bad := range map[string][]byte{
		"tampered":  flip(rl, 30),
		"truncated": rl[:len(rl)-1],
		"trailing":  append(append([]byte{}, rl...), 0),
	} {
		if _, err := DecodeRevocations(bad, pub); !errors.Is(err, ErrBadRevocations) {
			t.Errorf("revocation list %s: %v", name, err)
		}
	}
	if _, err := DecodeRevocations(rl, otherCA); !errors.Is(err, ErrBadRevocations) {
		t.Errorf("list of another authority: %v", err)
	}
	if pb, err := DecodePEM(EncodePEM(b, true), true); err != nil || string(pb) != string(b) {
		t.Errorf("PEM round trip: %v", err)
	}
	if _, err := DecodePEM(EncodePEM(b, false), true); err == nil {
		t.Error("a revocation list PEM block read as a certificate")
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 1
	return c
}

// FuzzCertDecode: no input panics or allocates past the bound; an accepted certificate re-issues to the same bytes.
func FuzzCertDecode(f *testing.F) {
	_, id := newKey(f)
	now := time.Unix(1_800_000_000, 0)
	b, err := IssueCert(fuzzAuthority, id, now, now.Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:20])
	f.Add([]byte("NPMC\x01"))
	pub := fuzzAuthority.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := DecodeCert(in, pub)
		if err != nil {
			return
		}
		again, err := IssueCert(fuzzAuthority, c.Peer, c.NotBefore, c.NotAfter)
		if err != nil || string(again) != string(in) {
			t.Fatalf("accepted certificate is not canonical: %v", err)
		}
	})
}

// FuzzRevocationsDecode: no input panics; an accepted list re-issues to the same bytes.
func FuzzRevocationsDecode(f *testing.F) {
	_, a := newKey(f)
	_, b := newKey(f)
	now := time.Unix(1_800_000_000, 0)
	for _, ps := range [][]peer.ID{nil, {a}, {a, b}} {
		rl, err := IssueRevocations(fuzzAuthority, 7, now, ps)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(rl)
	}
	f.Add([]byte("NPRL\x01"))
	pub := fuzzAuthority.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, in []byte) {
		l, err := DecodeRevocations(in, pub)
		if err != nil {
			return
		}
		again, err := IssueRevocations(fuzzAuthority, l.Seq, l.Issued, l.Peers)
		if err != nil || string(again) != string(in) {
			t.Fatalf("accepted list is not canonical: %v", err)
		}
	})
}
