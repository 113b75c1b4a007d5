package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/rollout"
)

func (s *Server) handleAddSource(w http.ResponseWriter, r *http.Request) {
	if s.opts.Rollouts == nil {
		s.fail(w, r, api.ErrRolloutsDisabled)
		return
	}
	var req api.SourceRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := api.CheckModelPath(req.Model); err != nil {
		s.fail(w, r, err)
		return
	}
	resp, err := s.opts.Rollouts.AddSource(r.Context(), req.Model)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handlePublishRollout(w http.ResponseWriter, r *http.Request) {
	if s.opts.Rollouts == nil {
		s.fail(w, r, api.ErrRolloutsDisabled)
		return
	}
	if err := checkContentType(r, "application/json"); err != nil {
		s.fail(w, r, err)
		return
	}
	// The manifest is passed on byte for byte: its signatures cover these bytes, and rollout decodes strictly.
	signed, err := rollout.ReadSigned(http.MaxBytesReader(w, r.Body, rollout.MaxSignedSize+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = fmt.Errorf("%w: %w", rollout.ErrTooLarge, err)
		}
		s.fail(w, r, err)
		return
	}
	resp, err := s.opts.Rollouts.Publish(r.Context(), signed)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleListRollouts(w http.ResponseWriter, r *http.Request) {
	if s.opts.Rollouts == nil {
		s.fail(w, r, api.ErrRolloutsDisabled)
		return
	}
	resp, err := s.opts.Rollouts.List(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if resp == nil {
		resp = []api.Rollout{}
	}
	s.writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleGetRollout(w http.ResponseWriter, r *http.Request) {
	if s.opts.Rollouts == nil {
		s.fail(w, r, api.ErrRolloutsDisabled)
		return
	}
	resp, err := s.opts.Rollouts.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.addMembers(r.Context(), resp.Peers)
	s.writeJSON(w, http.StatusOK, resp)
}

// addMembers fills in each row's hostname, class, tags and npu-agent version from the member table status shows, so that rollout
// status names hosts, not only peer IDs. Without a status (it failed) the rows stay as they are.
func (s *Server) addMembers(ctx context.Context, rows []api.RolloutPeer) {
	st, err := s.agent.Status(ctx)
	if err != nil {
		s.log.Debug("rollout status without member details", "err", err)
		return
	}
	byID := make(map[string]api.Peer, len(st.Peers))
	for _, p := range st.Peers {
		byID[p.ID] = p
	}
	for i := range rows {
		row := &rows[i]
		if row.Self {
			row.Hostname, row.Class, row.Tags, row.AgentVersion = st.Hostname, st.Class, st.Tags, st.Version
			continue
		}
		if p, ok := byID[row.Peer]; ok {
			row.Hostname, row.Class, row.Tags, row.AgentVersion = p.Hostname, p.Class, p.Tags, p.Version
		}
	}
}
