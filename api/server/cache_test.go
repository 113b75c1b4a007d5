package server

import (
	"context"
	"strings"
	"testing"

	"github.com/npu-agent/npu-agent/api"
)

// The fake store also offers cache maintenance: TestStoreEndpointsOwnerOnly covers /v1/cache/* (listing and a
// dry run open to the socket's clients, a prune only for the daemon's user and root, never over TCP).

func (f *fakeStore) CacheEntries(context.Context) ([]api.CacheEntry, error) {
	f.record("cache-ls")
	return []api.CacheEntry{}, nil
}

func (f *fakeStore) PruneCache(_ context.Context, req api.CachePruneRequest) (api.CachePruneResponse, error) {
	if req.DryRun {
		f.record("cache-prune-dry-run")
	} else {
		f.record("cache-prune")
	}
	return api.CachePruneResponse{DryRun: req.DryRun, Removed: []api.CacheEntry{}}, nil
}

// TestCachePruneHostileBodies: a prune asked by a web page (text/plain), with unknown fields or a huge body runs
// nothing; an agent without cache maintenance answers 404.
func TestCachePruneHostileBodies(t *testing.T) {
	t.Parallel()
	fs := &fakeStore{fakeAgent: newFakeAgent()}
	ts := startServer(t, fs, Options{})
	for _, tc := range []struct {
		name, ct, body, code string
	}{
		{"text/plain", "text/plain", `{"dry_run":false}`, "bad_request"},
		{"unknown field", "application/json", `{"dry_run":false,"all":true}`, "bad_request"},
		{"two values", "application/json", `{}{}`, "bad_request"},
		{"huge", "application/json", `{"dry_run":false,"x":"` + strings.Repeat("a", MaxJSONBody) + `"}`, "too_large"},
	} {
		status, eb, _ := rawRequest(t, ts.socket, "POST", "/v1/cache/prune", tc.ct, strings.NewReader(tc.body))
		if status < 400 || eb.Code != tc.code || len(fs.called()) != 0 {
			t.Errorf("%s: %d %s, calls %v", tc.name, status, eb.Code, fs.called())
		}
	}
	plain := startServer(t, newFakeAgent(), Options{})
	if status, eb, _ := rawRequest(t, plain.socket, "GET", "/v1/cache/entries", "", nil); status != 404 || eb.Code != api.CodeNoSuchEndpoint {
		t.Errorf("no cache admin: %d %s", status, eb.Code)
	}
}
