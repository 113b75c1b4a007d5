package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/rollout"
)

// ErrStale marks a status report this agent already holds, or an older one: not an attack, nothing to do.
var ErrStale = errors.New("rollout status is not newer than the one held")

// ErrNotMember marks a status report signed by a peer that is not a fleet member (Net.Member): ignored, so
// reports signed by throwaway keys (and relayed by a member) cannot fill the fleet view or fake progress.
var ErrNotMember = errors.New("rollout status of a peer that is not a fleet member")

// HandleManifest takes a signed manifest from a peer: it is accepted (and stored) or rejected with the
// acceptance error, which says whether it was stale (rollout.ErrDuplicate, ErrRollback, ErrExpired) or invalid.
func (r *Rollouts) HandleManifest(from string, signed []byte) error {
	m, err := r.acc.Accept(signed, r.opts.Now())
	if err != nil {
		return err
	}
	r.log.Info("rollout accepted", "rollout", m.Name, "version", m.Version, "model", m.Model.ID, "from", from)
	r.schedule(m.Name)
	return nil
}

// Publish accepts a signed manifest handed in by the operator and gossips the stored form. The same manifest
// again is gossiped again (the first gossip may have reached nobody).
func (r *Rollouts) Publish(ctx context.Context, signed []byte) (api.Rollout, error) {
	m, err := r.acc.Accept(signed, r.opts.Now())
	switch {
	case err == nil:
		r.log.Info("rollout accepted", "rollout", m.Name, "version", m.Version, "model", m.Model.ID, "from", "local")
		r.schedule(m.Name)
	case errors.Is(err, rollout.ErrDuplicate):
		// Verified by Accept already; only the name is needed.
		if m, err = rollout.Verify(signed, r.opts.Trust, r.opts.Now()); err != nil {
			return api.Rollout{}, err
		}
	default:
		return api.Rollout{}, err
	}
	name := m.Name
	st, err := r.acc.State(name)
	if err != nil {
		return api.Rollout{}, err
	}
	if r.opts.Net != nil {
		if err := r.opts.Net.PublishManifest(ctx, st.Current.Signed); err != nil {
			return api.Rollout{}, fmt.Errorf("rollout %s accepted here, but gossiping it failed: %w", name, err)
		}
	}
	return r.describe(st), nil
}

// HandleStatus takes a signed status report from a peer. Reports of rollouts this agent has not accepted, of
// itself, and not newer than the one held are ErrStale.
func (r *Rollouts) HandleStatus(signed []byte) error {
	if r.opts.Net == nil {
		return errors.New("rollouts: no fleet to verify status reports with")
	}
	peer, s, err := rollout.VerifyStatus(signed, r.opts.Net.VerifyPeer)
	if err != nil {
		return err
	}
	r.mu.Lock()
	known := r.names[s.Name]
	r.mu.Unlock()
	if !known || peer == r.self {
		return fmt.Errorf("%w: %s version %d of %s", ErrStale, s.Name, s.Version, peer)
	}
	if !r.opts.Net.Member(peer) {
		return fmt.Errorf("%w: %s", ErrNotMember, peer)
	}
	return r.keepStatus(peer, s, signed)
}

func (r *Rollouts) keepStatus(peer string, s *rollout.Status, signed []byte) error {
	replaced, err := r.view.Observe(peer, s)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStale, err)
	}
	if !replaced {
		return fmt.Errorf("%w: %s version %d of %s", ErrStale, s.Name, s.Version, peer)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.raw[s.Name] == nil {
		r.raw[s.Name] = map[string][]byte{}
	}
	r.raw[s.Name][peer] = signed
	return nil
}

// ManifestSnapshot is what a pulling peer gets: the current signed manifest of every rollout not expired.
func (r *Rollouts) ManifestSnapshot() [][]byte {
	names, err := r.stateNames()
	if err != nil {
		r.log.Warn("cannot list rollouts for a peer", "err", err)
		return nil
	}
	now := r.opts.Now()
	var out [][]byte
	for _, n := range names {
		st, err := r.acc.State(n)
		if err != nil || st.Current == nil || st.Expired(now) {
			continue
		}
		out = append(out, st.Current.Signed)
	}
	return out
}

// StatusSnapshot is every status report held (this agent's and its peers'), for pulling peers.
func (r *Rollouts) StatusSnapshot() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, peers := range r.raw {
		for _, b := range peers {
			out = append(out, b)
		}
	}
	return out
}
