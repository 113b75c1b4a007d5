package p2p

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/record"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Record signing: a blobstore.Record is encoded canonically (recordPayload) and sealed in a libp2p signed envelope
// under RecordDomain with RecordPayloadType; docs/design.md section 6.4 is normative.
const (
	RecordDomain = "npu-agent-record"

	recordMagic   = "NPUR"
	recordVersion = 1

	// Limits every decoded record must respect.
	MaxRecordEnvelope  = 64 << 10 // a whole signed envelope, as sent and stored
	maxIDLen           = 256      // model and profile IDs
	maxKindLen         = 64
	maxFingerprintLen  = 16 << 10
	maxCIDLen          = 64
	maxProducerLen     = 128
	maxCompileTime     = 7 * 24 * time.Hour
	maxClockSkew       = 10 * time.Minute // how far in the future Created may be
	recordHeaderLen    = len(recordMagic) + 1
	recordFixedLen     = 8 + 8 + 8 // size, compile time, created
	recordMinLen       = recordHeaderLen + 2 + 2 + 1 + 4 + recordFixedLen + 1 + 1
	recordMaxLen       = recordHeaderLen + 2 + maxIDLen + 2 + maxIDLen + 1 + maxCIDLen + 4 + maxFingerprintLen + recordFixedLen + 1 + maxProducerLen + 1 + maxKindLen
	recordPayloadTypeS = "/npu-agent/record/1"
)

// RecordPayloadType is the envelope payload type of a record.
var RecordPayloadType = []byte(recordPayloadTypeS)

// Errors of record verification; all wrap ErrBadRecord.
var (
	ErrBadRecord = errors.New("invalid record")
	ErrUntrusted = errors.New("record producer is not trusted")
)

// SignedRecord is a record whose signature and fields have been verified.
type SignedRecord struct {
	blobstore.Record
	Signer   peer.ID  // == Record.Producer
	Envelope []byte   // the signed envelope as sent on the wire and stored
	ID       [32]byte // sha256 of the canonical payload: identical claims have one ID
}

// recordPayload adapts blobstore.Record to libp2p's record.Record for Seal and ConsumeTypedEnvelope.
type recordPayload struct{ r blobstore.Record }

func (*recordPayload) Domain() string { return RecordDomain }
func (*recordPayload) Codec() []byte  { return RecordPayloadType }

func (p *recordPayload) MarshalRecord() ([]byte, error) { return encodeRecord(p.r) }

func (p *recordPayload) UnmarshalRecord(b []byte) error {
	r, err := decodeRecord(b)
	if err != nil {
		return err
	}
	p.r = r
	return nil
}

// encodeRecord returns the canonical encoding of r: magic, version, then each field in a fixed order with a
// fixed-width little-endian length or value. It rejects what decodeRecord would reject.
func encodeRecord(r blobstore.Record) ([]byte, error) {
	if err := checkRecordFields(r); err != nil {
		return nil, err
	}
	cb := r.Blob.Bytes()
	b := make([]byte, 0, recordMinLen+len(r.ModelID)+len(r.ProfileID)+len(cb)+len(r.Fingerprint)+len(r.Producer)+len(r.Kind))
	b = append(b, recordMagic...)
	b = append(b, recordVersion)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.ModelID)))
	b = append(b, r.ModelID...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.ProfileID)))
	b = append(b, r.ProfileID...)
	b = append(b, byte(len(cb)))
	b = append(b, cb...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Fingerprint)))
	b = append(b, r.Fingerprint...)
	b = binary.LittleEndian.AppendUint64(b, r.Size)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.CompileTime))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Created.UnixNano()))
	b = append(b, byte(len(r.Producer)))
	b = append(b, r.Producer...)
	b = append(b, byte(len(r.Kind)))
	b = append(b, r.Kind...)
	return b, nil
}

// checkRecordFields validates everything about r that does not depend on the signature or the clock.
func checkRecordFields(r blobstore.Record) error {
	switch {
	case r.ModelID == "" || len(r.ModelID) > maxIDLen:
		return fmt.Errorf("%w: model ID length %d not in 1..%d", ErrBadRecord, len(r.ModelID), maxIDLen)
	case r.ProfileID == "" || len(r.ProfileID) > maxIDLen:
		return fmt.Errorf("%w: profile ID length %d not in 1..%d", ErrBadRecord, len(r.ProfileID), maxIDLen)
	case len(r.Kind) > maxKindLen:
		return fmt.Errorf("%w: kind longer than %d bytes", ErrBadRecord, maxKindLen)
	case len(r.Fingerprint) == 0 || len(r.Fingerprint) > maxFingerprintLen:
		return fmt.Errorf("%w: fingerprint length %d not in 1..%d", ErrBadRecord, len(r.Fingerprint), maxFingerprintLen)
	case !json.Valid(r.Fingerprint):
		return fmt.Errorf("%w: fingerprint is not valid JSON", ErrBadRecord)
	case r.Size > blobstore.MaxBlobSize:
		return fmt.Errorf("%w: size %d above %d", ErrBadRecord, r.Size, uint64(blobstore.MaxBlobSize))
	case r.CompileTime < 0 || r.CompileTime > maxCompileTime:
		return fmt.Errorf("%w: compile time %s not in 0..%s", ErrBadRecord, r.CompileTime, maxCompileTime)
	case r.Created.IsZero() || r.Created.Before(time.Unix(0, 0)) || r.Created.Year() > 2200:
		return fmt.Errorf("%w: created time %s out of range", ErrBadRecord, r.Created)
	}
	if err := checkBlobCID(r.Blob); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if _, err := peer.Decode(r.Producer); err != nil || len(r.Producer) > maxProducerLen {
		return fmt.Errorf("%w: producer %.80q is not a peer ID", ErrBadRecord, r.Producer)
	}
	return nil
}

// checkBlobCID accepts only what blobstore produces: CIDv1, raw codec, sha2-256.
func checkBlobCID(c cid.Cid) error {
	if !c.Defined() {
		return errors.New("blob CID is undefined")
	}
	_, err := blobstore.Digest(c)
	return err
}

// recordReader consumes a canonical record encoding, failing once on the first short read.
type recordReader struct {
	b   []byte
	err error
}

func (d *recordReader) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.err = fmt.Errorf("%w: truncated", ErrBadRecord)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *recordReader) u8() int {
	v := d.take(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (d *recordReader) u16() int {
	v := d.take(2)
	if v == nil {
		return 0
	}
	return int(binary.LittleEndian.Uint16(v))
}

func (d *recordReader) u32() int {
	v := d.take(4)
	if v == nil {
		return 0
	}
	return int(binary.LittleEndian.Uint32(v))
}

func (d *recordReader) u64() uint64 {
	v := d.take(8)
	if v == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(v)
}

// bounded takes a field of length n, failing if n exceeds max (checked before anything is sliced).
func (d *recordReader) bounded(n, limit int, what string) []byte {
	if d.err == nil && n > limit {
		d.err = fmt.Errorf("%w: %s length %d above %d", ErrBadRecord, what, n, limit)
	}
	return d.take(n)
}

// decodeRecord parses a canonical record encoding; it accepts exactly the bytes encodeRecord produces.
func decodeRecord(b []byte) (blobstore.Record, error) {
	var r blobstore.Record
	if len(b) > recordMaxLen {
		return r, fmt.Errorf("%w: %d bytes, above %d", ErrBadRecord, len(b), recordMaxLen)
	}
	d := &recordReader{b: b}
	if m := d.take(len(recordMagic)); d.err == nil && string(m) != recordMagic {
		return r, fmt.Errorf("%w: bad magic", ErrBadRecord)
	}
	if v := d.u8(); d.err == nil && v != recordVersion {
		return r, fmt.Errorf("%w: unknown version %d", ErrBadRecord, v)
	}
	r.ModelID = string(d.bounded(d.u16(), maxIDLen, "model ID"))
	r.ProfileID = string(d.bounded(d.u16(), maxIDLen, "profile ID"))
	cb := d.bounded(d.u8(), maxCIDLen, "blob CID")
	fp := d.bounded(d.u32(), maxFingerprintLen, "fingerprint")
	r.Size = d.u64()
	ct := d.u64()
	created := d.u64()
	r.Producer = string(d.bounded(d.u8(), maxProducerLen, "producer"))
	r.Kind = string(d.bounded(d.u8(), maxKindLen, "kind"))
	if d.err != nil {
		return blobstore.Record{}, d.err
	}
	if len(d.b) != 0 {
		return blobstore.Record{}, fmt.Errorf("%w: %d trailing bytes", ErrBadRecord, len(d.b))
	}
	c, err := cid.Cast(cb)
	if err != nil {
		return blobstore.Record{}, fmt.Errorf("%w: blob CID: %w", ErrBadRecord, err)
	}
	r.Blob = c
	r.Fingerprint = json.RawMessage(bytes.Clone(fp))
	r.CompileTime = time.Duration(ct)
	r.Created = time.Unix(0, int64(created)).UTC()
	if err := checkRecordFields(r); err != nil {
		return blobstore.Record{}, err
	}
	// Canonical: one encoding per record (the CID and producer strings must round-trip too).
	if re, err := encodeRecord(r); err != nil || !bytes.Equal(re, b) {
		return blobstore.Record{}, fmt.Errorf("%w: not in canonical form", ErrBadRecord)
	}
	return r, nil
}

// SealRecord signs r with key; r.Producer must be key's peer ID.
func SealRecord(r blobstore.Record, key crypto.PrivKey) (SignedRecord, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("seal record: %w", err)
	}
	if r.Producer != id.String() {
		return SignedRecord{}, fmt.Errorf("%w: producer %q is not the signer %s", ErrBadRecord, r.Producer, id)
	}
	r.Created = r.Created.UTC().Round(0)
	if err := checkRecordFields(r); err != nil {
		return SignedRecord{}, err
	}
	env, err := record.Seal(&recordPayload{r: r}, key)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("seal record: %w", err)
	}
	raw, err := env.Marshal()
	if err != nil {
		return SignedRecord{}, fmt.Errorf("seal record: %w", err)
	}
	if len(raw) > MaxRecordEnvelope {
		return SignedRecord{}, fmt.Errorf("%w: envelope is %d bytes, above %d", ErrBadRecord, len(raw), MaxRecordEnvelope)
	}
	return SignedRecord{Record: r, Signer: id, Envelope: raw, ID: sha256.Sum256(env.RawPayload)}, nil
}

// OpenRecord verifies a signed envelope: size, signature, payload type, canonical fields, producer == signer,
// and a creation time no later than now plus a small clock skew. It does not apply a trust policy.
func OpenRecord(raw []byte, now time.Time) (SignedRecord, error) {
	if len(raw) > MaxRecordEnvelope {
		return SignedRecord{}, fmt.Errorf("%w: envelope is %d bytes, above %d", ErrBadRecord, len(raw), MaxRecordEnvelope)
	}
	var p recordPayload
	env, err := record.ConsumeTypedEnvelope(raw, &p)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if !bytes.Equal(env.PayloadType, RecordPayloadType) {
		return SignedRecord{}, fmt.Errorf("%w: payload type %q", ErrBadRecord, env.PayloadType)
	}
	signer, err := peer.IDFromPublicKey(env.PublicKey)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("%w: signer key: %w", ErrBadRecord, err)
	}
	if p.r.Producer != signer.String() {
		return SignedRecord{}, fmt.Errorf("%w: producer %s is not the signer %s", ErrBadRecord, p.r.Producer, signer)
	}
	if p.r.Created.After(now.Add(maxClockSkew)) {
		return SignedRecord{}, fmt.Errorf("%w: created %s is in the future", ErrBadRecord, p.r.Created.Format(time.RFC3339))
	}
	return SignedRecord{Record: p.r, Signer: signer, Envelope: bytes.Clone(raw), ID: sha256.Sum256(env.RawPayload)}, nil
}

// trustPolicy decides whose records are used: the listed producers, else the allowlisted members, else anyone
// who could connect (holding the fleet key). The local peer is always trusted.
type trustPolicy struct {
	self    peer.ID
	trusted map[peer.ID]bool // nil: any member
}

func newTrustPolicy(self peer.ID, producers, allowlist []peer.ID) trustPolicy {
	list := producers
	if len(list) == 0 {
		list = allowlist
	}
	if len(list) == 0 {
		return trustPolicy{self: self}
	}
	m := make(map[peer.ID]bool, len(list)+1)
	for _, p := range list {
		m[p] = true
	}
	m[self] = true
	return trustPolicy{self: self, trusted: m}
}

func (t trustPolicy) allows(p peer.ID) bool { return t.trusted == nil || t.trusted[p] }
