// Package blobstore defines the content-addressed, chunked blob store that npu-agent keeps compiled NPU blobs in.
//
// A blob is a sequence of fixed-size chunks plus a manifest. Chunk and blob identities are CIDv1 (raw codec,
// sha2-256 multihash): a chunk's CID hashes its bytes, a blob's CID hashes its encoded manifest. The format is
// normative in docs/design.md. This package imports nothing of the project; implementations live in
// sub-packages (badgerstore) and all pass the conformance suite in storetest.
package blobstore

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"time"

	"github.com/ipfs/go-cid"
)

// ChunkSize is the size of every chunk but the last. 1 MiB: big enough that per-chunk overhead (a badger entry,
// a CID, a request frame) is small against a GB/s pipe, small enough that a swarm has many units to spread across
// peers and a bad chunk costs little to refetch. See docs/design.md.
const ChunkSize = 1 << 20

// ChunkSumPutter is a ChunkStore that takes a received chunk with its sha2-256 already computed by the caller
// (p2p hashes a chunk's bytes while they arrive from the stream, off the critical path of the next request),
// instead of hashing it again. PutChunkSum is PutChunk with sum in place of sha2-256(data): the caller vouches
// that sum is the digest of exactly these bytes.
type ChunkSumPutter interface {
	PutChunkSum(ctx context.Context, blob cid.Cid, i int, data []byte, sum [32]byte) error
}

// MaxBlobSize bounds what a manifest may describe (and so the manifest's own size).
const MaxBlobSize = 64 << 30

// Errors every implementation returns (wrapped) so callers can branch with errors.Is.
var (
	ErrNotFound    = errors.New("blob not found")
	ErrInvalidData = errors.New("data does not match its hash")
	ErrIncomplete  = errors.New("blob is incomplete")
	ErrPinned      = errors.New("blob is pinned")
)

// Record says: for model ModelID compiled with profile ProfileID on a host with this fingerprint, the blob is Blob.
// The fingerprint is kept as opaque canonical JSON: compat owns its meaning.
type Record struct {
	ModelID     string          `json:"model_id"`
	ProfileID   string          `json:"profile_id"`
	Blob        cid.Cid         `json:"blob"`
	Fingerprint json.RawMessage `json:"fingerprint"`
	Size        uint64          `json:"size"`
	CompileTime time.Duration   `json:"compile_time_ns"`
	Created     time.Time       `json:"created"`
	Producer    string          `json:"producer"`
	// Kind distinguishes ordinary blobs from LLM/NPUW ones (which need the exact OpenVINO version).
	Kind string `json:"kind,omitempty"`
}

// Info describes a stored blob.
type Info struct {
	CID        cid.Cid   `json:"cid"`
	Size       uint64    `json:"size"`
	SHA256     string    `json:"sha256"` // hex: the manifest's whole-blob sha256, its producer's claim (Verify checks it)
	Complete   bool      `json:"complete"`
	HaveChunks int       `json:"have_chunks"`
	Chunks     int       `json:"chunks"`
	Pinned     bool      `json:"pinned"`
	LastAccess time.Time `json:"last_access"`
}

// GCResult reports what a gc pass removed.
type GCResult struct {
	Removed    []cid.Cid `json:"removed"`
	FreedBytes uint64    `json:"freed_bytes"`
	SizeAfter  uint64    `json:"size_after"`
}

// CorruptChunk names a stored chunk whose bytes no longer match its CID. Index -1 (and an undefined Chunk) means
// the blob's manifest itself is damaged.
type CorruptChunk struct {
	Blob  cid.Cid `json:"blob"`
	Index int     `json:"index"`
	Chunk cid.Cid `json:"chunk"`
}

// VerifyReport is the result of re-hashing every stored chunk.
type VerifyReport struct {
	Blobs   int            `json:"blobs"`
	Chunks  int            `json:"chunks"`
	Bytes   uint64         `json:"bytes"`
	Corrupt []CorruptChunk `json:"corrupt"`
	// WrongSHA256 lists complete blobs whose chunks are all intact but whose manifest claims another whole-blob
	// sha256 than its bytes have: the producer's claim is false (the bytes are still exactly what the CID names).
	WrongSHA256 []cid.Cid `json:"wrong_sha256,omitempty"`
}

// ChunkStore is the side of the store that peers see: the p2p layer serves chunks of what is held and brings
// blobs in chunk by chunk, verified against their manifest. It never decides what a blob is for (records are the
// agent's). All methods are safe for concurrent use.
type ChunkStore interface {
	// Has reports whether a complete, visible blob is stored.
	Has(ctx context.Context, c cid.Cid) (bool, error)
	// Manifest returns the manifest of a complete or partial blob.
	Manifest(ctx context.Context, c cid.Cid) (*Manifest, error)
	// BeginPartial records a manifest whose chunks will arrive out of order (a fetch). Idempotent: resuming a
	// fetch calls it again and keeps the chunks already stored.
	BeginPartial(ctx context.Context, m *Manifest) error
	// PutChunk stores chunk i of a partial blob after checking it against the manifest (ErrInvalidData).
	PutChunk(ctx context.Context, blob cid.Cid, i int, data []byte) error
	// HaveChunks reports, per chunk index, whether a verified chunk is stored (complete or partial blob).
	HaveChunks(ctx context.Context, blob cid.Cid) ([]bool, error)
	// ServeChunk appends chunk i of a complete or partial blob to dst for a peer, which verifies every chunk it
	// receives: the stored bytes are checked with a cheap checksum of the store's own instead of being re-hashed,
	// so that damage on disk is still found (ErrInvalidData) and not served.
	ServeChunk(ctx context.Context, blob cid.Cid, i int, dst []byte) ([]byte, error)
	// Commit makes a partial blob visible once every chunk is present (ErrIncomplete otherwise).
	Commit(ctx context.Context, blob cid.Cid) error
}

// RecordIndex maps (model, profile) to the blobs compiled for it. The agent is its only writer: it adds a record
// only after checking the blob itself against this host.
type RecordIndex interface {
	// AddRecord indexes a blob under (model, profile). The blob must be stored (complete).
	AddRecord(ctx context.Context, r Record) error
	// Records lists the records for (model, profile); empty strings list all.
	Records(ctx context.Context, modelID, profileID string) ([]Record, error)
}

// Store is a content-addressed blob store: the chunk side peers use, the record index, and whole-blob access and
// maintenance for the agent and the CLI. All methods are safe for concurrent use.
type Store interface {
	ChunkStore
	RecordIndex

	// Put streams r into the store, chunking and hashing as it goes, and returns the blob's manifest once every
	// chunk is stored and the blob is visible. An interrupted Put leaves no visible blob.
	Put(ctx context.Context, r io.Reader) (*Manifest, error)
	// Open returns a reader over a complete blob; every chunk is re-hashed as it is read (ErrInvalidData).
	Open(ctx context.Context, c cid.Cid) (Reader, error)
	// Export writes a complete blob to path atomically (temp file, fsync, rename, fsync dir).
	Export(ctx context.Context, c cid.Cid, path string) error
	// Stat describes a blob, complete or partial.
	Stat(ctx context.Context, c cid.Cid) (Info, error)
	// ReadChunk appends chunk i of a complete or partial blob to dst, re-verified, and returns it.
	ReadChunk(ctx context.Context, blob cid.Cid, i int, dst []byte) ([]byte, error)
	// Delete removes a blob (complete or partial) and its index records; ErrPinned if pinned.
	Delete(ctx context.Context, c cid.Cid) error
	// List describes every blob, complete and partial.
	List(ctx context.Context) ([]Info, error)
	// Pin or unpin a blob; gc never removes a pinned blob.
	Pin(ctx context.Context, c cid.Cid, pinned bool) error
	// Touch records an access (for LRU gc).
	Touch(ctx context.Context, c cid.Cid) error
	// GC removes least-recently-used unpinned blobs until the stored size is at most quota, skipping keep.
	GC(ctx context.Context, quota uint64, keep func(cid.Cid) bool) (GCResult, error)
	// Verify re-hashes every stored chunk and reports the corrupt ones, and checks each complete blob's whole-blob
	// sha256 against its manifest's claim.
	Verify(ctx context.Context) (VerifyReport, error)
	// Close releases the store.
	Close() error
}

// Checker is implemented by stores that check a complete blob's stored bytes cheaply (the store's own checksum,
// not a re-hash) and quarantine a damaged blob. Quarantine is the rule for every read that finds a chunk that does
// not match (ReadChunk, ServeChunk, Open, Export, CheckBlob): the blob goes back to partial (Has is false, Stat
// says incomplete, nothing serves it), the damaged chunk is dropped so that HaveChunks asks for it again, and
// the blob's records stay, so that a fetch (BeginPartial, PutChunk, Commit) or a Put of the same bytes heals it.
type Checker interface {
	// CheckBlob checks every chunk of a complete blob; a damaged one is quarantined and ErrInvalidData returned.
	CheckBlob(ctx context.Context, c cid.Cid) error
}

// Filer is implemented by stores that keep each complete blob as one file: the loader opens that file itself.
type Filer interface {
	// BlobFile returns the path of a complete blob's file: read-only, readable by the store's group, never
	// rewritten while the blob is complete (a quarantined blob's file moves away first). It counts as an access.
	BlobFile(ctx context.Context, c cid.Cid) (string, error)
}

// Source says where a host got a blob it hands to a loader.
type Source string

// Sources of a blob.
const (
	SourceStore    Source = "store"    // already in the local store
	SourcePeer     Source = "peer"     // fetched from peers (or waited for a peer's compile, then fetched)
	SourceCompiled Source = "compiled" // compiled on this host
)

// Reader streams a blob. WriteTo lets io.Copy skip an intermediate buffer.
type Reader interface {
	io.ReadCloser
	io.WriterTo
	Size() uint64
}
