// Package api is the daemon's local HTTP API as its clients see it: the wire types, the Go client the CLI uses to
// talk to a running daemon, and the one error table (error, wire code, HTTP status, CLI exit code). The server,
// served on a unix socket and optionally a loopback TCP address, is package api/server; the Agent and Rollouts
// interfaces are what it serves. Endpoints and wire formats are described in docs/operations.md.
package api

import (
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

// Agent is what the API serves. All methods are safe for concurrent use and honour ctx: the server passes the
// request's context, which is cancelled when the client disconnects or the daemon shuts down.
type Agent interface {
	// Ensure makes a blob of req.Model compiled with req.Profile available on this host, from the store, a peer
	// or a local compile, and names a stable read-only file of it. It may take minutes (fetch or compile).
	Ensure(ctx context.Context, req EnsureRequest) (EnsureResponse, error)
	// OpenBlob opens a complete stored blob for streaming (blobstore.ErrNotFound if absent).
	OpenBlob(ctx context.Context, c cid.Cid) (blobstore.Reader, error)
	// PutBlob stores blob, compiled elsewhere for req.Model and req.Profile, and records it for this host.
	PutBlob(ctx context.Context, req PutRequest, blob io.Reader) (EnsureResponse, error)
	// Status describes what the agent holds, what it is doing and which peers it sees.
	Status(ctx context.Context) (Status, error)
	// Jobs lists what the agent is doing: Status's jobs alone, without listing the store or the peers (a waiting
	// command polls it for its progress line).
	Jobs(ctx context.Context) ([]Job, error)
}

// JobsResponse is GET /v1/jobs's answer.
type JobsResponse struct {
	Jobs []Job `json:"jobs"`
}

// EnsureRequest asks for a compiled blob of a model.
type EnsureRequest struct {
	// Model is the absolute path on this host of the model's .xml (with its .bin beside it) or .onnx file. The
	// daemon reads it, so it must be readable by the daemon's user.
	Model   string          `json:"model"`
	Profile compile.Profile `json:"profile"`
}

// PutRequest names what a blob uploaded with PutBlob was compiled from.
type PutRequest struct {
	Model   string          `json:"model"` // absolute path on this host, as in EnsureRequest
	Profile compile.Profile `json:"profile"`
}

// EnsureResponse describes a blob ready for the loader.
type EnsureResponse struct {
	CID cid.Cid `json:"cid"`
	// Path is a stable read-only file with the blob's bytes, for core.import_model or an mmap. It stays valid
	// while the blob is stored; GET /v1/blobs/{cid} streams the same bytes to clients that cannot read it.
	Path        string           `json:"path"`
	Source      blobstore.Source `json:"source"`
	Size        uint64           `json:"size"`
	SHA256      string           `json:"sha256"` // hex, as sha256sum prints it
	ModelID     string           `json:"model_id"`
	ProfileID   string           `json:"profile_id"`
	From        string           `json:"from,omitempty"` // peer ID the blob came from (Source peer)
	CompileTime time.Duration    `json:"compile_time_ns"`
}

// Status is a snapshot of the agent.
type Status struct {
	Version     string          `json:"version"`
	PeerID      string          `json:"peer_id,omitempty"`
	Hostname    string          `json:"hostname,omitempty"`    // this host's name, as its member record announces it
	Tags        []string        `json:"tags,omitempty"`        // rollout.tags`
	Fingerprint json.RawMessage `json:"fingerprint,omitempty"` // canonical JSON; compat owns its meaning
	Class       string          `json:"class,omitempty"`       // this host's compatibility class
	Compiler    string          `json:"compiler,omitempty"`    // backend name; empty when none is available
	Store       StoreStatus     `json:"store"`
	Jobs        []Job           `json:"jobs"`  // fetches and compiles in progress
	Peers       []Peer          `json:"peers"` // connected fleet members
	// PeerServing says whether blobs are served to peers: "fleet" (a fleet key is set), or "off: no fleet key"
	// (nothing is served, docs/design.md 6.2); empty without p2p.
	PeerServing string `json:"peer_serving,omitempty"`
}

// StoreStatus summarises the blob store.
type StoreStatus struct {
	Blobs   int              `json:"blobs"`   // complete blobs
	Partial int              `json:"partial"` // blobs being fetched
	Bytes   uint64           `json:"bytes"`   // stored size
	Quota   uint64           `json:"quota"`   // 0: no quota
	Records int              `json:"records"` // (model, profile) -> blob records
	List    []blobstore.Info `json:"list,omitempty"`
}

// Job is one fetch, compile or wait in progress.
type Job struct {
	Kind      agent.Phase `json:"kind"` // fetch, compile, or wait (for the fleet's single flight: a peer compiles)
	ModelID   string      `json:"model_id"`
	ProfileID string      `json:"profile_id"`
	CID       cid.Cid     `json:"cid,omitzero"` // the blob being fetched; absent for compiles
	Started   time.Time   `json:"started"`
	Done      uint64      `json:"done,omitempty"`  // bytes so far, for fetches
	Total     uint64      `json:"total,omitempty"` // bytes expected, for fetches
	// Chunks and ChunksDone count the fetch's chunks (blobstore.ChunkSize each, the last one shorter).
	Chunks     uint64 `json:"chunks,omitempty"`
	ChunksDone uint64 `json:"chunks_done,omitempty"`
	// Rate is the fetch's mean rate since it started, bytes per second.
	Rate uint64 `json:"rate,omitempty"`
	// From names the peer a fetch comes from (the record's producer; others help when they hold chunks), or the
	// member whose compile a wait waits for (once its claim or lease is heard); FromHostname is its hostname when
	// its member record says so.
	From         string `json:"from,omitempty"`
	FromHostname string `json:"from_hostname,omitempty"`
	// Peers is how many peers a fetch receives chunks from now.
	Peers int `json:"peers,omitempty"`
}

// Peer is a connected fleet member.
type Peer struct {
	ID    string   `json:"id"`
	Addrs []string `json:"addrs"`
	// Hostname, Class, Tags and Version (its npu-agent version) are what its signed member record says
	// (docs/design.md 6.2); empty until one came (Version also from members older than the field).
	Hostname string   `json:"hostname,omitempty"`
	Class    string   `json:"class,omitempty"`
	Tags     []string `json:"tags,omitempty"`
	Version  string   `json:"version,omitempty"`
	// Connected: this agent has a connection to it now (members are known without one).
	Connected bool `json:"connected"`
	// Seen is when it signed its latest member record.
	Seen time.Time `json:"seen,omitzero"`
	// Records is how many of its records this agent has seen.
	Records int `json:"records"`
}

// Health is the body of GET /v1/healthz.
type Health struct {
	Status string `json:"status"` // "ok"
}
