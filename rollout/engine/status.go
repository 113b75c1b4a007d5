package engine

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/rollout"
)

// List describes every accepted rollout.
func (r *Rollouts) List(context.Context) ([]api.Rollout, error) {
	names, err := r.stateNames()
	if err != nil {
		return nil, err
	}
	out := make([]api.Rollout, 0, len(names))
	for _, n := range names {
		st, err := r.acc.State(n)
		if err != nil {
			return nil, err
		}
		if st.Current != nil {
			out = append(out, r.describe(st))
		}
	}
	return out, nil
}

// Get describes one rollout with a row per known peer: every peer that reported, and every connected one.
func (r *Rollouts) Get(_ context.Context, name string) (api.RolloutStatus, error) {
	st, err := r.acc.State(name)
	if err != nil {
		return api.RolloutStatus{}, err
	}
	if st.Current == nil {
		return api.RolloutStatus{}, fmt.Errorf("rollout %s: %w", name, rollout.ErrNotFound)
	}
	out := api.RolloutStatus{Rollout: r.describe(st), Peers: []api.RolloutPeer{}}
	connected := map[string]bool{}
	if r.opts.Net != nil {
		for _, p := range r.opts.Net.Peers() {
			connected[p] = true
		}
	}
	rows := r.view.Rows(name)
	seen := map[string]bool{}
	for _, row := range rows {
		seen[row.Peer] = true
		out.Peers = append(out.Peers, api.RolloutPeer{Row: row, Self: row.Peer == r.self, Connected: connected[row.Peer]})
	}
	for p := range connected {
		if !seen[p] {
			out.Peers = append(out.Peers, api.RolloutPeer{Row: rollout.Row{Peer: p}, Connected: true})
		}
	}
	slices.SortFunc(out.Peers, func(a, b api.RolloutPeer) int { return strings.Compare(a.Peer, b.Peer) })
	out.Summary = rollout.Summarize(rows, st.Version())
	return out, nil
}

func (r *Rollouts) describe(st rollout.State) api.Rollout {
	m := st.Current.Manifest
	ids, _ := m.ProfileIDs() // valid: it was accepted
	out := api.Rollout{
		Name: m.Name, Version: m.Version, ModelID: m.Model.ID, Profiles: ids, Selector: m.Selector,
		Created: m.Created, Expires: m.Expires, Expired: st.Expired(r.opts.Now()),
		Selected: m.Selects(r.opts.Agent.Host(), r.opts.Tags),
	}
	for _, f := range m.Model.Files {
		out.Files = append(out.Files, f.Name)
	}
	if st.Previous != nil {
		out.Previous = st.Previous.Manifest.Version
	}
	r.mu.Lock()
	if s, ok := r.local[m.Name]; ok && s.Version == m.Version {
		out.State, out.Reason = s.State, s.Reason
	}
	r.mu.Unlock()
	return out
}

func (r *Rollouts) currentStatus(name string) (rollout.Status, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.local[name]
	return s, ok
}

// progress publishes this agent's status for one version as preparation moves on. Ensure's progress callbacks
// come from other goroutines, hence the lock.
type progress struct {
	r        *Rollouts
	m        *rollout.Manifest
	mu       sync.Mutex
	state    rollout.Phase
	reason   string
	profiles map[string]string
}

func (p *progress) set(state rollout.Phase, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if state == p.state && reason == p.reason {
		return
	}
	p.state, p.reason = state, reason
	p.r.report(p.m, state, reason, p.profiles)
}

// profile moves one profile to a phase; the rollout's state follows the profile being worked on.
func (p *progress) profile(id string, phase rollout.Phase) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.profiles[id] == string(phase) && p.state == phase {
		return
	}
	p.profiles[id] = string(phase)
	p.state = phase
	p.r.report(p.m, phase, "", p.profiles)
}

func (p *progress) resolved(id, blob string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.profiles[id] = blob
	p.r.report(p.m, p.state, "", p.profiles)
}

// fail reports the failure unless the preparation was cancelled (a newer version, or shutdown).
// failedProfile is set on the profile that failed.
func (p *progress) fail(ctx context.Context, err error, failedProfile ...string) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	p.r.log.Warn("rollout failed on this host", "rollout", p.m.Name, "version", p.m.Version, "err", err)
	p.mu.Lock()
	for _, id := range failedProfile {
		p.profiles[id] = string(rollout.PhaseFailed)
	}
	p.mu.Unlock()
	p.set(rollout.PhaseFailed, oneLine(err.Error(), rollout.MaxReasonLen))
	return err
}

// oneLine makes s a status reason: control characters become spaces, cut to max bytes at a rune boundary.
func oneLine(s string, max int) string {
	s = strings.Map(func(c rune) rune {
		if unicode.IsControl(c) {
			return ' '
		}
		return c
	}, strings.ToValidUTF8(s, "?"))
	for len(s) > max {
		s = s[:max]
		s = strings.ToValidUTF8(s, "")
	}
	return s
}

// report signs and publishes this agent's status and keeps it for its own status rows and pulling peers.
func (r *Rollouts) report(m *rollout.Manifest, state rollout.Phase, reason string, profiles map[string]string) {
	r.mu.Lock()
	stamp := r.opts.Now().UTC()
	if !stamp.After(r.lastStmp) {
		stamp = r.lastStmp.Add(time.Microsecond) // reports of one agent must be strictly ordered
	}
	r.lastStmp = stamp
	s := rollout.Status{Name: m.Name, Version: m.Version, State: state, Reason: reason, Profiles: maps.Clone(profiles), Updated: stamp}
	r.local[m.Name] = s
	r.mu.Unlock()
	r.log.Info("rollout status", "rollout", m.Name, "version", m.Version, "state", state, "reason", reason)
	if r.opts.Net == nil {
		if _, err := r.view.Observe(r.self, &s); err != nil {
			r.log.Warn("rollout status not kept", "err", err)
		}
		return
	}
	signed, err := rollout.SignStatus(&s, r.self, r.opts.Net.Sign)
	if err != nil {
		r.log.Warn("cannot sign rollout status", "err", err)
		return
	}
	if err := r.keepStatus(r.self, &s, signed); err != nil {
		r.log.Debug("own rollout status not kept", "err", err)
	}
	// Gossip from Run's publisher: report runs inside fetch progress callbacks, which must not wait on the network.
	select {
	case r.outbox <- signed:
	default:
		r.log.Debug("rollout status outbox full; peers pull the report")
	}
}

// publishStatuses gossips this agent's reports in order until ctx ends.
func (r *Rollouts) publishStatuses(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case signed := <-r.outbox:
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := r.opts.Net.PublishStatus(pctx, signed); err != nil {
				r.log.Debug("rollout status not gossiped; peers pull it", "err", err)
			}
			cancel()
		}
	}
}
