package blobstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Manifest lists a blob's chunks. Its canonical binary encoding (docs/design.md) is what the blob CID hashes.
type Manifest struct {
	Size      uint64     // total blob size in bytes
	ChunkSize uint32     // ChunkSize for manifests written by this version
	SHA256    [32]byte   // sha256 of the whole blob, so anyone can sha256sum an exported file: the producer's claim, not re-hashed on receipt
	Chunks    [][32]byte // sha2-256 digest of each chunk, in order
}

// Manifest encoding constants (docs/design.md 3.2).
const (
	manifestMagic   = "NPUM"
	manifestVersion = 1
	// ManifestHeaderSize is the length of the fixed part of an encoded manifest, before the chunk digests.
	ManifestHeaderSize = 56
	// MaxManifestSize bounds an encoded manifest: the header plus one digest per chunk of a MaxBlobSize blob.
	MaxManifestSize = ManifestHeaderSize + 32*(MaxBlobSize/ChunkSize)
)

// ErrInvalidManifest is returned (wrapped) for a manifest that breaks the encoding rules.
var ErrInvalidManifest = errors.New("invalid manifest")

// ErrInvalidCID is returned (wrapped) for a CID that is not CIDv1, codec raw, multihash sha2-256.
var ErrInvalidCID = errors.New("not a CIDv1 raw sha2-256")

// cidPrefix is the binary prefix of every CID this project uses: version 1, codec raw (0x55), multihash
// sha2-256 (0x12) with a 32-byte digest (0x20).
var cidPrefix = []byte{0x01, 0x55, 0x12, 0x20}

// ChunkCID is the CIDv1 (raw, sha2-256) of a chunk with this digest.
func ChunkCID(digest [32]byte) cid.Cid { return digestCID(digest[:]) }

// DigestCID is the CIDv1 (raw, sha2-256) with this digest, for a chunk or a blob.
func DigestCID(digest [32]byte) cid.Cid { return digestCID(digest[:]) }

func digestCID(d []byte) cid.Cid {
	m, err := mh.Encode(d, mh.SHA2_256)
	if err != nil {
		panic(err) // only on a wrong digest length, a programming error
	}
	return cid.NewCidV1(cid.Raw, m)
}

// Digest returns the sha2-256 digest a CID names, or ErrInvalidCID if it is not CIDv1 raw sha2-256.
func Digest(c cid.Cid) ([32]byte, error) {
	var d [32]byte
	b := []byte(c.KeyString())
	if len(b) != len(cidPrefix)+32 || !bytes.Equal(b[:len(cidPrefix)], cidPrefix) {
		return d, fmt.Errorf("%w: %s", ErrInvalidCID, c)
	}
	copy(d[:], b[len(cidPrefix):])
	return d, nil
}

// ParseCID parses the string form of a CID and accepts only CIDv1 raw sha2-256, the kind every chunk and blob has.
func ParseCID(s string) (cid.Cid, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: %q: %w", ErrInvalidCID, s, err)
	}
	if _, err := Digest(c); err != nil {
		return cid.Undef, err
	}
	return c, nil
}

// NumChunks is the number of chunks a blob of this size has: ceil(size / ChunkSize).
func (m *Manifest) NumChunks() int {
	if m.ChunkSize == 0 {
		return 0
	}
	return int((m.Size + uint64(m.ChunkSize) - 1) / uint64(m.ChunkSize))
}

// ChunkOffset is the offset of chunk i in the blob.
func (m *Manifest) ChunkOffset(i int) uint64 { return uint64(i) * uint64(m.ChunkSize) }

// ChunkLen is the length of chunk i: ChunkSize but for the last chunk, which holds the remainder.
func (m *Manifest) ChunkLen(i int) int {
	off := m.ChunkOffset(i)
	if off >= m.Size {
		return 0
	}
	return int(min(uint64(m.ChunkSize), m.Size-off))
}

// Validate checks the rules DecodeManifest enforces, for a manifest built in memory.
func (m *Manifest) Validate() error {
	if m.ChunkSize != ChunkSize {
		return fmt.Errorf("%w: chunk size %d, want %d", ErrInvalidManifest, m.ChunkSize, ChunkSize)
	}
	if m.Size > MaxBlobSize {
		return fmt.Errorf("%w: size %d above the limit %d", ErrInvalidManifest, m.Size, uint64(MaxBlobSize))
	}
	if n := m.NumChunks(); len(m.Chunks) != n {
		return fmt.Errorf("%w: %d chunk digests for size %d, want %d", ErrInvalidManifest, len(m.Chunks), m.Size, n)
	}
	return nil
}

// Encode returns the canonical encoding (docs/design.md 3.2). The manifest should be valid (Validate).
func (m *Manifest) Encode() []byte {
	b := make([]byte, ManifestHeaderSize+32*len(m.Chunks))
	copy(b[0:4], manifestMagic)
	b[4] = manifestVersion
	binary.LittleEndian.PutUint32(b[8:12], m.ChunkSize)
	binary.LittleEndian.PutUint64(b[12:20], m.Size)
	copy(b[20:52], m.SHA256[:])
	binary.LittleEndian.PutUint32(b[52:56], uint32(len(m.Chunks)))
	for i, d := range m.Chunks {
		copy(b[ManifestHeaderSize+32*i:], d[:])
	}
	return b
}

// CID is the blob's identity: CIDv1 raw sha2-256 of the encoded manifest.
func (m *Manifest) CID() cid.Cid { return DigestCID(sha256.Sum256(m.Encode())) }

// DecodeManifest parses and validates an encoded manifest. It checks the header and the length before it
// allocates, so a hostile input costs at most its own length.
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) < ManifestHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrInvalidManifest, len(b), ManifestHeaderSize)
	}
	if string(b[0:4]) != manifestMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrInvalidManifest, b[0:4])
	}
	if b[4] != manifestVersion {
		return nil, fmt.Errorf("%w: unknown version %d", ErrInvalidManifest, b[4])
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return nil, fmt.Errorf("%w: reserved bytes not zero", ErrInvalidManifest)
	}
	m := &Manifest{
		ChunkSize: binary.LittleEndian.Uint32(b[8:12]),
		Size:      binary.LittleEndian.Uint64(b[12:20]),
	}
	copy(m.SHA256[:], b[20:52])
	n := binary.LittleEndian.Uint32(b[52:56])
	if m.ChunkSize != ChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d, want %d", ErrInvalidManifest, m.ChunkSize, ChunkSize)
	}
	if m.Size > MaxBlobSize {
		return nil, fmt.Errorf("%w: size %d above the limit %d", ErrInvalidManifest, m.Size, uint64(MaxBlobSize))
	}
	if want := m.NumChunks(); int(n) != want {
		return nil, fmt.Errorf("%w: %d chunks for size %d, want %d", ErrInvalidManifest, n, m.Size, want)
	}
	if want := ManifestHeaderSize + 32*int(n); len(b) != want {
		return nil, fmt.Errorf("%w: %d bytes, want %d for %d chunks", ErrInvalidManifest, len(b), want, n)
	}
	m.Chunks = make([][32]byte, n)
	for i := range m.Chunks {
		copy(m.Chunks[i][:], b[ManifestHeaderSize+32*i:])
	}
	return m, nil
}
