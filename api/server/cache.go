package server

import (
	"context"
	"net/http"

	"github.com/npu-agent/npu-agent/api"
)

// The cache endpoints (`npu-agent cache ls | prune`). Listing and a prune dry run are open to every client of
// the socket, as the store's listing is; a prune removes files from applications' cache directories, so it is
// for the daemon's own user and root only, told by the socket's peer credentials, and never over TCP
// (docs/design.md 9.4).

func (s *Server) cacheAdmin(w http.ResponseWriter, r *http.Request) (api.CacheAdmin, bool) {
	return agentAs[api.CacheAdmin](s, w, r)
}

func (s *Server) handleCacheEntries(w http.ResponseWriter, r *http.Request) {
	adminCall(s, w, r, s.cacheAdmin, func(struct{}) bool { return false },
		func(ca api.CacheAdmin, ctx context.Context, _ struct{}) ([]api.CacheEntry, error) {
			return ca.CacheEntries(ctx)
		})
}

func (s *Server) handleCachePrune(w http.ResponseWriter, r *http.Request) {
	adminCall(s, w, r, s.cacheAdmin, func(req api.CachePruneRequest) bool { return !req.DryRun }, api.CacheAdmin.PruneCache)
}
