package api

import (
	"context"
	"net/http"
	"time"
)

// CacheAdmin is `npu-agent cache ls | prune`: the entries of the application cache directories the daemon shares
// (ovcache.dirs; docs/design.md section 10). The daemon serves it on /v1/cache/*; the CLI runs the same code
// in-process when no daemon runs.
type CacheAdmin interface {
	// CacheEntries describes every entry of every shared cache directory.
	CacheEntries(ctx context.Context) ([]CacheEntry, error)
	// PruneCache removes the stale entries, or lists them (DryRun).
	PruneCache(ctx context.Context, req CachePruneRequest) (CachePruneResponse, error)
}

// CacheEntry is one row of `npu-agent cache ls`.
type CacheEntry struct {
	Dir   string `json:"dir"`
	Name  string `json:"name"`
	Model string `json:"model,omitempty"` // the model, when the agent knows it (a rollout named the entry)
	Build string `json:"build"`           // the entry's OpenVINO build string; "" when it does not parse
	Size  uint64 `json:"size"`
	// LastUse is the file's access time or, if later, its modification time.
	LastUse    time.Time `json:"last_use"`
	Blob       string    `json:"blob,omitempty"` // the blob this agent populated it from; "" for the application's own
	Weightless bool      `json:"weightless"`     // usable here, never shared
	Stale      bool      `json:"stale"`          // cannot load on this host any more
	Reason     string    `json:"reason,omitempty"`
}

// CachePruneRequest is the body of POST /v1/cache/prune.
type CachePruneRequest struct {
	DryRun bool `json:"dry_run"`
}

// CachePruneResponse lists the stale entries removed (or, with DryRun, that would be).
type CachePruneResponse struct {
	DryRun     bool         `json:"dry_run"`
	Removed    []CacheEntry `json:"removed"`
	FreedBytes uint64       `json:"freed_bytes"`
}

var _ CacheAdmin = (*Client)(nil)

// CacheEntries asks the daemon for its shared cache directories' entries.
func (c *Client) CacheEntries(ctx context.Context) ([]CacheEntry, error) {
	var out []CacheEntry
	err := c.doJSON(ctx, http.MethodGet, "/v1/cache/entries", "", nil, &out)
	return out, err
}

// PruneCache asks the daemon to remove (or list) stale cache entries.
func (c *Client) PruneCache(ctx context.Context, req CachePruneRequest) (CachePruneResponse, error) {
	var out CachePruneResponse
	err := c.postJSON(ctx, "/v1/cache/prune", req, &out)
	return out, err
}
