package p2p

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"

	"github.com/npu-agent/npu-agent/blobstore"
)

func newKey(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

func sampleRecord(producer peer.ID) blobstore.Record {
	return blobstore.Record{
		ModelID:     "bafkreimodel",
		ProfileID:   "profile-1",
		Blob:        testCID("blob"),
		Fingerprint: json.RawMessage(`{"arch":"3720","driver":"1.10.0"}`),
		Size:        16 << 20,
		CompileTime: 93 * time.Second,
		Created:     time.Date(2025, 3, 1, 12, 0, 0, 123, time.UTC),
		Producer:    producer.String(),
		Kind:        "npu",
	}
}

func TestRecordSealOpen(t *testing.T) {
	t.Parallel()
	k, id := newKey(t)
	r := sampleRecord(id)
	sr, err := SealRecord(r, k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenRecord(sr.Envelope, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got.Signer != id || got.ID != sr.ID || !got.Created.Equal(r.Created) || got.Blob != r.Blob ||
		!bytes.Equal(got.Fingerprint, r.Fingerprint) || got.ModelID != r.ModelID || got.CompileTime != r.CompileTime ||
		got.Kind != r.Kind || got.Size != r.Size {
		t.Fatalf("opened %+v, sealed %+v", got.Record, r)
	}
}

func TestSealRejects(t *testing.T) {
	t.Parallel()
	k, id := newKey(t)
	_, other := newKey(t)
	for _, tc := range []struct {
		name string
		mod  func(*blobstore.Record)
	}{
		{"producer is not the signer", func(r *blobstore.Record) { r.Producer = other.String() }},
		{"empty model", func(r *blobstore.Record) { r.ModelID = "" }},
		{"long profile", func(r *blobstore.Record) { r.ProfileID = strings.Repeat("p", maxIDLen+1) }},
		{"long kind", func(r *blobstore.Record) { r.Kind = strings.Repeat("k", maxKindLen+1) }},
		{"fingerprint not json", func(r *blobstore.Record) { r.Fingerprint = json.RawMessage("{") }},
		{"no fingerprint", func(r *blobstore.Record) { r.Fingerprint = nil }},
		{"huge size", func(r *blobstore.Record) { r.Size = blobstore.MaxBlobSize + 1 }},
		{"negative compile time", func(r *blobstore.Record) { r.CompileTime = -1 }},
		{"zero created", func(r *blobstore.Record) { r.Created = time.Time{} }},
		{"undefined blob", func(r *blobstore.Record) { r.Blob = cid.Undef }},
		{"cidv0 blob", func(r *blobstore.Record) { r.Blob = cid.NewCidV0(r.Blob.Hash()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := sampleRecord(id)
			tc.mod(&r)
			if _, err := SealRecord(r, k); !errors.Is(err, ErrBadRecord) {
				t.Fatalf("err = %v, want ErrBadRecord", err)
			}
		})
	}
}

// forge signs payload under the record domain and payload type with key, bypassing SealRecord's checks.
type rawPayload []byte

func (rawPayload) Domain() string                   { return RecordDomain }
func (rawPayload) Codec() []byte                    { return RecordPayloadType }
func (p rawPayload) MarshalRecord() ([]byte, error) { return p, nil }
func (p *rawPayload) UnmarshalRecord(b []byte) error {
	*p = b
	return nil
}

func forge(t *testing.T, payload []byte, k crypto.PrivKey) []byte {
	t.Helper()
	p := rawPayload(payload)
	env, err := record.Seal(&p, k)
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOpenRecordRejects(t *testing.T) {
	t.Parallel()
	k, id := newKey(t)
	k2, _ := newKey(t)
	good, err := SealRecord(sampleRecord(id), k)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := encodeRecord(sampleRecord(id))
	if err != nil {
		t.Fatal(err)
	}
	future := sampleRecord(id)
	future.Created = time.Now().Add(time.Hour)
	futurePayload, err := encodeRecord(future)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(good.Envelope)
	i := bytes.Index(tampered, []byte("profile-1"))
	tampered[i] = 'P'
	otherDomain := func() []byte {
		env, err := record.Seal(&peer.PeerRecord{PeerID: id, Seq: 1}, k)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := env.Marshal()
		return b
	}()
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"empty", nil},
		{"garbage", []byte("not an envelope")},
		{"tampered payload", tampered},
		{"signed by another key", forge(t, payload, k2)},
		{"non-canonical payload", forge(t, append(bytes.Clone(payload), 0), k)},
		{"created in the future", forge(t, futurePayload, k)},
		{"other record type", otherDomain},
		{"oversized", make([]byte, MaxRecordEnvelope+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := OpenRecord(tc.raw, time.Now()); !errors.Is(err, ErrBadRecord) {
				t.Fatalf("err = %v, want ErrBadRecord", err)
			}
		})
	}
}

func TestTrustPolicy(t *testing.T) {
	t.Parallel()
	_, self := newKey(t)
	_, a := newKey(t)
	_, b := newKey(t)
	for _, tc := range []struct {
		name                   string
		producers, allow       []peer.ID
		wantSelf, wantA, wantB bool
	}{
		{"anyone", nil, nil, true, true, true},
		{"listed producers", []peer.ID{a}, nil, true, true, false},
		{"producers win over allowlist", []peer.ID{a}, []peer.ID{a, b}, true, true, false},
		{"allowlisted members", nil, []peer.ID{b}, true, false, true},
	} {
		p := newTrustPolicy(self, tc.producers, tc.allow)
		if p.allows(self) != tc.wantSelf || p.allows(a) != tc.wantA || p.allows(b) != tc.wantB {
			t.Errorf("%s: self=%v a=%v b=%v", tc.name, p.allows(self), p.allows(a), p.allows(b))
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	k, id, err := func() (crypto.PrivKey, peer.ID, error) {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			return nil, "", err
		}
		id, err := peer.IDFromPrivateKey(k)
		return k, id, err
	}()
	if err != nil {
		f.Fatal(err)
	}
	payload, err := encodeRecord(sampleRecord(id))
	if err != nil {
		f.Fatal(err)
	}
	sr, err := SealRecord(sampleRecord(id), k)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(payload)
	f.Add(sr.Envelope)
	f.Add([]byte(recordMagic))
	f.Fuzz(func(t *testing.T, in []byte) {
		if r, err := decodeRecord(in); err == nil {
			again, err := encodeRecord(r)
			if err != nil || !bytes.Equal(again, in) {
				t.Fatalf("decoded record does not re-encode to its bytes: %v", err)
			}
		}
		if sr, err := OpenRecord(in, time.Now()); err == nil && sr.Producer != sr.Signer.String() {
			t.Fatalf("opened a record whose producer is not its signer")
		}
	})
}
