package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/ipfs/go-cid"
)

// StoreAdmin is the maintenance side of the store: what `npu-agent ls | gc | verify | pin | unpin | rm` do. The
// daemon serves it on /v1/store/* (docs/operations.md section 5); *Client implements it by asking the daemon, and
// api/server.StoreAdmin implements it in-process, so a command behaves the same whether a daemon runs or not.
// Every CID in these types is a string (the CID's text form), as in every JSON npu-agent prints.
type StoreAdmin interface {
	// ListBlobs describes every stored blob with its records and the rollouts that pinned it.
	ListBlobs(ctx context.Context) ([]StoredBlob, error)
	// GC removes least recently used unpinned blobs down to req's target, or plans it (DryRun).
	GC(ctx context.Context, req GCRequest) (GCResponse, error)
	// Verify re-hashes every stored chunk.
	Verify(ctx context.Context) (VerifyResponse, error)
	// Pin pins or unpins a blob. Unpinning a blob a rollout pinned needs Force (else blobstore.ErrPinned).
	Pin(ctx context.Context, req PinRequest) (PinResponse, error)
	// RemoveBlob deletes a blob and its records (blobstore.ErrPinned while pinned).
	RemoveBlob(ctx context.Context, c cid.Cid) error
}

// StoredBlob is one row of `npu-agent ls` and GET /v1/store/blobs.
type StoredBlob struct {
	CID        string         `json:"cid"`
	Size       uint64         `json:"size"`
	SHA256     string         `json:"sha256"`
	Complete   bool           `json:"complete"`
	HaveChunks int            `json:"have_chunks"`
	Chunks     int            `json:"chunks"`
	Pinned     bool           `json:"pinned"`
	PinnedBy   []string       `json:"pinned_by"` // rollouts whose kept versions need it, "name version N"
	LastAccess time.Time      `json:"last_access"`
	Records    []StoredRecord `json:"records"`
}

// StoredRecord is a record indexing a stored blob: "model M with profile P on fingerprint F is this blob".
type StoredRecord struct {
	ModelID   string    `json:"model_id"`
	ProfileID string    `json:"profile_id"`
	Kind      string    `json:"kind,omitempty"`
	Producer  string    `json:"producer"`
	Created   time.Time `json:"created"`
}

// GCRequest is the body of POST /v1/store/gc. Without Target the daemon's store.quota is the target, and a
// quota of 0 (none) removes nothing.
type GCRequest struct {
	Target *uint64 `json:"target,omitempty"` // bytes to shrink the store to; 0 removes every unpinned blob
	DryRun bool    `json:"dry_run"`          // only say what would be removed
}

// GCResponse says what a gc removed or, with DryRun, would remove.
type GCResponse struct {
	DryRun     bool     `json:"dry_run"`
	Target     *uint64  `json:"target"` // null: no quota and no target, nothing was removed
	SizeBefore uint64   `json:"size_before"`
	SizeAfter  uint64   `json:"size_after"`
	FreedBytes uint64   `json:"freed_bytes"`
	Removed    []string `json:"removed"`
	Kept       int      `json:"kept_pinned"` // pinned blobs gc did not consider
	Note       string   `json:"note,omitempty"`
}

// VerifyResponse is what `npu-agent verify` found.
type VerifyResponse struct {
	Blobs   int            `json:"blobs"`
	Chunks  int            `json:"chunks"`
	Bytes   uint64         `json:"bytes"`
	Corrupt []CorruptChunk `json:"corrupt"`
	// WrongSHA256: blobs whose chunks are intact but whose manifest claims a whole-blob sha256 they do not have.
	WrongSHA256 []string `json:"wrong_sha256,omitempty"`
}

// CorruptChunk names a damaged chunk; Index -1 (and no Chunk) is the blob's manifest.
type CorruptChunk struct {
	Blob  string `json:"blob"`
	Index int    `json:"index"`
	Chunk string `json:"chunk,omitempty"`
}

// PinRequest is the body of POST /v1/store/pin.
type PinRequest struct {
	CID    string `json:"cid"`
	Pinned bool   `json:"pinned"`
	Force  bool   `json:"force"` // unpin even though a rollout pinned the blob
}

// PinResponse reports a pin change.
type PinResponse struct {
	CID      string   `json:"cid"`
	Pinned   bool     `json:"pinned"`
	PinnedBy []string `json:"pinned_by"` // rollouts that pinned it
	Note     string   `json:"note,omitempty"`
}

// RemoveRequest is the body of POST /v1/store/rm.
type RemoveRequest struct {
	CID string `json:"cid"`
}

// RemoveResponse reports a removed blob.
type RemoveResponse struct {
	Removed string `json:"removed"`
}

var _ StoreAdmin = (*Client)(nil)

// ListBlobs asks the daemon for its stored blobs.
func (c *Client) ListBlobs(ctx context.Context) ([]StoredBlob, error) {
	var out []StoredBlob
	err := c.doJSON(ctx, http.MethodGet, "/v1/store/blobs", "", nil, &out)
	return out, err
}

// GC asks the daemon to run (or plan) a gc.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var out GCResponse
	err := c.postJSON(ctx, "/v1/store/gc", req, &out)
	return out, err
}

// Verify asks the daemon to re-hash its store.
func (c *Client) Verify(ctx context.Context) (VerifyResponse, error) {
	var out VerifyResponse
	err := c.postJSON(ctx, "/v1/store/verify", struct{}{}, &out)
	return out, err
}

// Pin asks the daemon to pin or unpin a blob.
func (c *Client) Pin(ctx context.Context, req PinRequest) (PinResponse, error) {
	var out PinResponse
	err := c.postJSON(ctx, "/v1/store/pin", req, &out)
	return out, err
}

// RemoveBlob asks the daemon to delete a blob.
func (c *Client) RemoveBlob(ctx context.Context, id cid.Cid) error {
	var out RemoveResponse
	return c.postJSON(ctx, "/v1/store/rm", RemoveRequest{CID: id.String()}, &out)
}

func (c *Client) postJSON(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.doJSON(ctx, http.MethodPost, path, "application/json", bytes.NewReader(body), out)
}
