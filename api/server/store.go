package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/rollout"
)

// StoreAdmin is api.StoreAdmin over an *agent.Agent: the daemon serves it on /v1/store/*, and the CLI uses the
// same code in-process when no daemon runs, so `npu-agent gc` decides the same either way.
type StoreAdmin struct {
	Agent *agent.Agent
	// Quota is store.quota: the target of a gc request without one. 0 (no quota): such a gc removes nothing.
	Quota uint64
	// RolloutDir is the rollout engine's state directory (<data_dir>/rollouts); "" when there is none. Its
	// histories say which blobs the kept rollout versions need.
	RolloutDir string

	verifyMu sync.Mutex // one verify at a time: it reads the whole store
}

var _ api.StoreAdmin = (*StoreAdmin)(nil)

// rolloutHistoryDir is where rollout/engine keeps, per rollout name, the versions whose blobs stay pinned
// (its "resolved/<name>" KV keys).
const rolloutHistoryDir = "resolved"

// RolloutPins maps each blob the kept rollout versions need (source files, compiled blobs, cache entries) to
// "NAME version N" labels; `cache ls` names the rollout of an entry by it.
func (s *StoreAdmin) RolloutPins() (map[string][]string, error) { return s.rolloutPins() }

// rolloutPins maps each blob the kept rollout versions need to "NAME version N" labels.
func (s *StoreAdmin) rolloutPins() (map[string][]string, error) {
	out := map[string][]string{}
	if s.RolloutDir == "" {
		return out, nil
	}
	dir := filepath.Join(s.RolloutDir, rolloutHistoryDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rollout state: %w", err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("rollout state: %w", err)
		}
		var h struct {
			Versions []struct {
				Manifest *rollout.Manifest `json:"manifest"`
				Blobs    map[string]string `json:"blobs"`
			} `json:"versions"`
		}
		if err := json.Unmarshal(b, &h); err != nil {
			return nil, fmt.Errorf("%w: rollout history %s: %v", rollout.ErrCorruptState, e.Name(), err)
		}
		for _, v := range h.Versions {
			if v.Manifest == nil {
				continue
			}
			plan, err := rollout.PinSet([]rollout.Resolved{{Manifest: v.Manifest, Blobs: v.Blobs}})
			if err != nil {
				return nil, fmt.Errorf("rollout history %s: %w", e.Name(), err)
			}
			label := fmt.Sprintf("%s version %d", v.Manifest.Name, v.Manifest.Version)
			for _, p := range plan.Pin {
				if !slices.Contains(out[p.Blob], label) {
					out[p.Blob] = append(out[p.Blob], label)
				}
			}
		}
	}
	return out, nil
}

// ListBlobs describes every stored blob, its records and the rollouts that need it.
func (s *StoreAdmin) ListBlobs(ctx context.Context) ([]api.StoredBlob, error) {
	st := s.Agent.Store()
	infos, err := st.List(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := st.Records(ctx, "", "")
	if err != nil {
		return nil, err
	}
	pins, err := s.rolloutPins()
	if err != nil {
		return nil, err
	}
	byBlob := map[cid.Cid][]api.StoredRecord{}
	for _, r := range recs {
		byBlob[r.Blob] = append(byBlob[r.Blob], api.StoredRecord{
			ModelID: r.ModelID, ProfileID: r.ProfileID, Kind: r.Kind, Producer: r.Producer, Created: r.Created,
		})
	}
	out := make([]api.StoredBlob, 0, len(infos))
	for _, in := range infos {
		rs := byBlob[in.CID]
		if rs == nil {
			rs = []api.StoredRecord{}
		}
		by := pins[in.CID.String()]
		if by == nil {
			by = []string{}
		}
		out = append(out, api.StoredBlob{
			CID: in.CID.String(), Size: in.Size, SHA256: in.SHA256, Complete: in.Complete, HaveChunks: in.HaveChunks,
			Chunks: in.Chunks, Pinned: in.Pinned, PinnedBy: by, LastAccess: in.LastAccess, Records: rs,
		})
	}
	return out, nil
}

// GC shrinks the store to req.Target, or to Quota without one; with neither it removes nothing. Pinned blobs
// (the operator's and the rollouts') and blobs in use are never removed. DryRun lists, least recently used
// first, what a gc would remove now (blobs in use at that moment are not known to the plan).
func (s *StoreAdmin) GC(ctx context.Context, req api.GCRequest) (api.GCResponse, error) {
	res := api.GCResponse{DryRun: req.DryRun, Target: req.Target, Removed: []string{}}
	infos, err := s.Agent.Store().List(ctx)
	if err != nil {
		return res, err
	}
	for _, in := range infos {
		res.SizeBefore += in.Size
		if in.Pinned {
			res.Kept++
		}
	}
	res.SizeAfter = res.SizeBefore
	if res.Target == nil {
		if s.Quota == 0 {
			res.Note = "store.quota is 0 (no quota) and no target was given: nothing removed; give a target size " +
				"(npu-agent gc --target 20GiB) or set store.quota"
			return res, nil
		}
		q := s.Quota
		res.Target = &q
	}
	target := *res.Target
	if req.DryRun {
		slices.SortFunc(infos, func(a, b blobstore.Info) int {
			return cmp.Or(a.LastAccess.Compare(b.LastAccess), cmp.Compare(a.CID.KeyString(), b.CID.KeyString()))
		})
		for _, in := range infos {
			if res.SizeAfter <= target {
				break
			}
			if in.Pinned {
				continue
			}
			res.Removed = append(res.Removed, in.CID.String())
			res.SizeAfter -= in.Size
			res.FreedBytes += in.Size
		}
		return res, nil
	}
	gr, err := s.Agent.GC(ctx, target)
	for _, c := range gr.Removed {
		res.Removed = append(res.Removed, c.String())
	}
	res.FreedBytes, res.SizeAfter = gr.FreedBytes, gr.SizeAfter
	return res, err
}

// Verify re-hashes the store; a second verify waits for the first.
func (s *StoreAdmin) Verify(ctx context.Context) (api.VerifyResponse, error) {
	s.verifyMu.Lock()
	defer s.verifyMu.Unlock()
	rep, err := s.Agent.Store().Verify(ctx)
	out := api.VerifyResponse{Blobs: rep.Blobs, Chunks: rep.Chunks, Bytes: rep.Bytes, Corrupt: []api.CorruptChunk{}}
	for _, c := range rep.Corrupt {
		cc := api.CorruptChunk{Blob: c.Blob.String(), Index: c.Index}
		if c.Index >= 0 {
			cc.Chunk = c.Chunk.String()
		}
		out.Corrupt = append(out.Corrupt, cc)
	}
	for _, c := range rep.WrongSHA256 {
		out.WrongSHA256 = append(out.WrongSHA256, c.String())
	}
	return out, err
}

// Pin pins or unpins a blob. Unpinning a blob that a kept rollout version needs is refused without Force: gc
// could then delete the blob the fleet's current or previous version runs on (the rollout pins it again at its
// next update).
func (s *StoreAdmin) Pin(ctx context.Context, req api.PinRequest) (api.PinResponse, error) {
	c, err := blobstore.ParseCID(req.CID)
	if err != nil {
		return api.PinResponse{}, fmt.Errorf("%w: %w", api.ErrBadRequest, err)
	}
	pins, err := s.rolloutPins()
	if err != nil {
		return api.PinResponse{}, err
	}
	by := pins[c.String()]
	if by == nil {
		by = []string{}
	}
	resp := api.PinResponse{CID: c.String(), Pinned: req.Pinned, PinnedBy: by}
	if !req.Pinned && len(by) > 0 {
		undo := fmt.Sprintf("blob %s is pinned for rollout %s: unpinning it lets gc delete a blob that rollout runs on "+
			"(the rollout pins it again at its next update)", c, joinAnd(by))
		if !req.Force {
			return resp, fmt.Errorf("%w: %s; unpin --force to do it anyway", blobstore.ErrPinned, undo)
		}
		resp.Note = "unpinned although " + undo
	}
	if err := s.Agent.Store().Pin(ctx, c, req.Pinned); err != nil {
		return resp, err
	}
	return resp, nil
}

// RemoveBlob deletes a blob, its records and its materialised file (blobstore.ErrPinned while pinned).
func (s *StoreAdmin) RemoveBlob(ctx context.Context, c cid.Cid) error { return s.Agent.Remove(ctx, c) }

func joinAnd(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	out := s[0]
	for _, x := range s[1 : len(s)-1] {
		out += ", " + x
	}
	return out + " and " + s[len(s)-1]
}

// The store endpoints. Reading (GET /v1/store/blobs, a gc --dry-run) is open to every client of the socket;
// changing or re-reading the whole store (gc, verify, pin, unpin, rm) is for the daemon's own user and root only,
// told by the socket's peer credentials, and never over TCP (docs/design.md 9.1).

// storeAdmin returns what the server's agent offers for store maintenance, or answers 404.
func (s *Server) storeAdmin(w http.ResponseWriter, r *http.Request) (api.StoreAdmin, bool) {
	return agentAs[api.StoreAdmin](s, w, r)
}

// agentAs returns the server's agent as an A (what it offers for maintenance), or answers 404.
func agentAs[A any](s *Server, w http.ResponseWriter, r *http.Request) (A, bool) {
	a, ok := s.agent.(A)
	if !ok {
		s.writeError(w, http.StatusNotFound, api.CodeNoSuchEndpoint, fmt.Sprintf("%s %s: no such endpoint", r.Method, r.URL.Path))
	}
	return a, ok
}

// storeCall is every store endpoint: the agent's store admin, the JSON body decoded into Req (GET has none),
// the owner check when ownerOnly says the request changes or re-reads the store, then do's answer.
func storeCall[Req, Resp any](s *Server, w http.ResponseWriter, r *http.Request, ownerOnly func(Req) bool,
	do func(api.StoreAdmin, context.Context, Req) (Resp, error)) {
	adminCall(s, w, r, s.storeAdmin, ownerOnly, do)
}

// adminCall is every maintenance endpoint (store, cache): the admin the agent offers (admin answers 404
// otherwise), the JSON body decoded into Req (GET has none), the owner check when ownerOnly says the request
// changes something, then do's answer.
func adminCall[A, Req, Resp any](s *Server, w http.ResponseWriter, r *http.Request,
	admin func(http.ResponseWriter, *http.Request) (A, bool), ownerOnly func(Req) bool,
	do func(A, context.Context, Req) (Resp, error)) {
	sa, ok := admin(w, r)
	if !ok {
		return
	}
	var req Req
	if r.Method != http.MethodGet {
		if err := decodeJSON(w, r, &req); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if ownerOnly(req) {
		if err := checkStoreOwner(r); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	out, err := do(sa, r.Context(), req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, out)
}

func always[Req any](Req) bool { return true }

func (s *Server) handleStoreBlobs(w http.ResponseWriter, r *http.Request) {
	storeCall(s, w, r, func(struct{}) bool { return false },
		func(sa api.StoreAdmin, ctx context.Context, _ struct{}) ([]api.StoredBlob, error) {
			return sa.ListBlobs(ctx)
		})
}

func (s *Server) handleStoreGC(w http.ResponseWriter, r *http.Request) {
	storeCall(s, w, r, func(req api.GCRequest) bool { return !req.DryRun }, api.StoreAdmin.GC)
}

func (s *Server) handleStoreVerify(w http.ResponseWriter, r *http.Request) {
	storeCall(s, w, r, always[struct{}],
		func(sa api.StoreAdmin, ctx context.Context, _ struct{}) (api.VerifyResponse, error) {
			return sa.Verify(ctx)
		})
}

func (s *Server) handleStorePin(w http.ResponseWriter, r *http.Request) {
	storeCall(s, w, r, always[api.PinRequest], api.StoreAdmin.Pin)
}

func (s *Server) handleStoreRemove(w http.ResponseWriter, r *http.Request) {
	storeCall(s, w, r, always[api.RemoveRequest],
		func(sa api.StoreAdmin, ctx context.Context, req api.RemoveRequest) (api.RemoveResponse, error) {
			c, err := blobstore.ParseCID(req.CID)
			if err != nil {
				return api.RemoveResponse{}, fmt.Errorf("%w: %w", api.ErrBadRequest, err)
			}
			return api.RemoveResponse{Removed: c.String()}, sa.RemoveBlob(ctx, c)
		})
}

// storeOwnerUIDs are the users allowed to change the store through the API: root and the daemon's own user.
// Tests replace it.
var storeOwnerUIDs = func() []uint32 { return []uint32{0, uint32(os.Geteuid())} }

// checkStoreOwner admits a request only from a unix-socket client running as one of storeOwnerUIDs.
func checkStoreOwner(r *http.Request) error {
	const how = "run it as root or as the daemon's user (sudo npu-agent ...)"
	p, _ := r.Context().Value(peerKey{}).(peer)
	if !p.known {
		return fmt.Errorf("%w: store maintenance is only served on the unix socket, to a client whose user is known; %s", api.ErrForbidden, how)
	}
	uid := p.uid
	if !slices.Contains(storeOwnerUIDs(), uid) {
		return fmt.Errorf("%w: store maintenance is for root and the daemon's user, not uid %d; %s", api.ErrForbidden, uid, how)
	}
	return nil
}
