// Package engine is the rollout engine: it follows operator-signed rollouts on this host (acceptance, preparation
// of the source model and a blob per profile, pins of the current and previous version) and exchanges signed
// manifests and status reports with the fleet. The pure rules are in package rollout; the blobs come from the
// agent and the fleet transport from package fleet, both through the narrow interfaces declared here.
package engine

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

// ErrStale marks a status report this agent already holds, or an older one: not an attack, nothing to do.
var ErrStale = errors.New("rollout status is not newer than the one held")

// Ensurer makes the blobs a rollout needs; *agent.Agent implements it.
type Ensurer interface {
	// Host is this host's fingerprint, which manifest selectors match.
	Host() compat.Fingerprint
	// EnsureBlob returns a blob for (model, profile) this host can load, from the store, peers or a compile.
	// fetching, which may be nil, hears true while chunks come from peers and false while it is compiled.
	EnsureBlob(ctx context.Context, model compile.Model, profile compile.Profile, fetching func(bool)) (cid.Cid, blobstore.Source, error)
	// FetchBlob brings blob c (a source model file) from the fleet into the store, kept from gc meanwhile; it
	// fails at once when there is no fleet.
	FetchBlob(ctx context.Context, c cid.Cid) error
}

// Store is what the engine does with the agent's blob store: source model files in and out, and the pins of
// the blobs rollouts keep. blobstore.Store implements it.
type Store interface {
	Put(ctx context.Context, r io.Reader) (*blobstore.Manifest, error)
	Has(ctx context.Context, c cid.Cid) (bool, error)
	Stat(ctx context.Context, c cid.Cid) (blobstore.Info, error)
	Export(ctx context.Context, c cid.Cid, path string) error
	Pin(ctx context.Context, c cid.Cid, pinned bool) error
}

// Handlers take the documents peers send; *Rollouts implements them for the Net.
type Handlers interface {
	// HandleManifest takes a signed manifest gossiped or pulled from peer from.
	HandleManifest(from string, signed []byte) error
	// HandleStatus takes a signed status report.
	HandleStatus(signed []byte) error
	// ManifestSnapshot is what a pulling peer gets on the manifest channel.
	ManifestSnapshot() [][]byte
	// StatusSnapshot is what a pulling peer gets on the status channel.
	StatusSnapshot() [][]byte
}

// Net is the fleet side of rollouts; package fleet implements it on the daemon's p2p node.
type Net interface {
	// Open starts the rollout channels with h's handlers. New calls it once, last.
	Open(h Handlers) error
	// Self is this agent's peer ID, the peer of its status reports.
	Self() string
	// Sign signs a status report message with the key Self names.
	Sign(msg []byte) ([]byte, error)
	// VerifyPeer checks sig over msg with the key the peer ID peer names.
	VerifyPeer(peer string, msg, sig []byte) error
	// PublishManifest gossips an accepted signed manifest to the fleet.
	PublishManifest(ctx context.Context, signed []byte) error
	// PublishStatus gossips a signed status report of this agent.
	PublishStatus(ctx context.Context, signed []byte) error
	// Peers lists the peer IDs of the connected fleet members.
	Peers() []string
}

// Options configure Rollouts.
type Options struct {
	Agent Ensurer
	Store Store      // the agent's blob store
	KV    rollout.KV // acceptance state, resolved blobs and the pins rollouts own
	Trust rollout.TrustConfig
	Tags  map[string]string // this agent's tags, matched by "tag:<name>" selectors
	// ModelsDir receives the source models: <ModelsDir>/<model id>/<file name as the manifest says>.
	ModelsDir string
	Net       Net // nil: no fleet; rollouts published here apply to this agent only
	Logger    *slog.Logger
	// Now is the engine's clock: manifest acceptance and expiry, retry times and status stamps. Run waits on
	// real timers for durations computed on it. nil: time.Now.
	Now func() time.Time
	// RetryMin and RetryMax bound the back-off after a preparation failed for a reason that may pass (no peer
	// had the source, no compiler yet); 0: 5 s and 5 min.
	RetryMin, RetryMax time.Duration
	// Parallel is how many rollouts are prepared at once; 0: 2.
	Parallel int
}

// Rollouts follows operator-signed rollouts: it accepts manifests (rollout.Acceptor on KV), prepares the ones
// that select this host (source model from the swarm, then a blob per profile through the Agent), keeps the
// blobs of the current and previous version pinned, and publishes and collects signed status reports.
type Rollouts struct {
	opts Options
	acc  *rollout.Acceptor
	view *rollout.FleetView
	log  *slog.Logger
	self string // peer of this agent's status rows

	wake   chan struct{}
	outbox chan []byte // signed reports of this agent waiting to be gossiped

	mu       sync.Mutex
	names    map[string]bool              // rollouts accepted, so statuses of unknown ones can be ignored
	dirty    map[string]bool              // need a (re)preparation
	jobs     map[string]*prepJob          // preparations running
	retries  map[string]retry             // failed preparations to try again
	local    map[string]rollout.Status    // this agent's latest status per rollout
	raw      map[string]map[string][]byte // rollout → peer → signed status report, re-served to pulling peers
	lastStmp time.Time

	pinMu sync.Mutex // serialises pin plans
}

var (
	_ api.Rollouts = (*Rollouts)(nil)
	_ Handlers     = (*Rollouts)(nil)
)

type prepJob struct {
	version uint64
	cancel  context.CancelFunc
}

type retry struct {
	version uint64
	at      time.Time
	delay   time.Duration
}

// KV keys of Rollouts besides the Acceptor's "state/<name>".
const (
	historyKeyPrefix = "resolved/" // resolved/<name>: versions whose blobs may still be pinned
	pinsKey          = "pins"      // blobs Rollouts pinned (and so may unpin)
	localPeer        = "local"     // the status row of an agent without a fleet
)

// New checks the options, loads the accepted rollouts' names and opens the rollout channels of opts.Net.
func New(opts Options) (*Rollouts, error) {
	if opts.Agent == nil || opts.Store == nil || opts.KV == nil || opts.ModelsDir == "" {
		return nil, errors.New("rollouts: need an agent, a store, a KV and a models directory")
	}
	if len(opts.Trust.KeyIDs()) == 0 {
		return nil, rollout.ErrNoTrustedKeys
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = 5 * time.Second
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(opts.RetryMin, 5*time.Minute)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 2
	}
	if err := os.MkdirAll(opts.ModelsDir, 0o755); err != nil {
		return nil, fmt.Errorf("rollouts: %w", err)
	}
	r := &Rollouts{
		opts: opts, acc: rollout.NewAcceptor(opts.KV, opts.Trust), view: rollout.NewFleetView(),
		log: opts.Logger.With("component", "rollout"), self: localPeer, wake: make(chan struct{}, 1),
		outbox: make(chan []byte, 64),
		names:  map[string]bool{}, dirty: map[string]bool{}, jobs: map[string]*prepJob{}, retries: map[string]retry{},
		local: map[string]rollout.Status{}, raw: map[string]map[string][]byte{},
	}
	if opts.Net != nil {
		r.self = opts.Net.Self()
	}
	names, err := r.stateNames()
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		r.names[n] = true
	}
	if opts.Net != nil {
		// Open last: the handlers may run from now on. Before Run, a manifest accepted only schedules its
		// preparation, and Publish can gossip at once.
		if err := opts.Net.Open(r); err != nil {
			return nil, fmt.Errorf("rollouts: %w", err)
		}
	}
	return r, nil
}

func (r *Rollouts) stateNames() ([]string, error) {
	keys, err := r.opts.KV.Keys("state/")
	if err != nil {
		return nil, fmt.Errorf("rollouts: %w", err)
	}
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		names = append(names, strings.TrimPrefix(k, "state/"))
	}
	sort.Strings(names)
	return names, nil
}

// Run prepares rollouts until ctx ends: every accepted rollout once at start (finished ones are found in the
// store at once), then each new version as it is accepted, and failed ones again after a back-off.
func (r *Rollouts) Run(ctx context.Context) error {
	names, err := r.stateNames()
	if err != nil {
		return err
	}
	r.mu.Lock()
	for _, n := range names {
		r.dirty[n] = true
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	if r.opts.Net != nil {
		wg.Go(func() { r.publishStatuses(ctx) })
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := r.startJobs(ctx, &wg)
		timer.Reset(next)
		select {
		case <-ctx.Done():
			r.mu.Lock()
			for _, j := range r.jobs {
				j.cancel()
			}
			r.mu.Unlock()
			return nil
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// schedule marks a rollout for preparation and wakes Run.
func (r *Rollouts) schedule(name string) {
	r.mu.Lock()
	r.dirty[name] = true
	r.names[name] = true
	delete(r.retries, name)
	r.mu.Unlock()
	r.kick()
}

func (r *Rollouts) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// startJobs starts the preparations that are due and returns how long until the next retry is.
func (r *Rollouts) startJobs(ctx context.Context, wg *sync.WaitGroup) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.opts.Now()
	next := time.Hour
	for name, rt := range r.retries {
		if d := rt.at.Sub(now); d > 0 {
			next = min(next, d)
			continue
		}
		delete(r.retries, name)
		r.dirty[name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(r.dirty)) {
		if j, ok := r.jobs[name]; ok {
			j.cancel() // a newer version arrived; the job's end wakes us to start again
			continue
		}
		if len(r.jobs) >= r.opts.Parallel {
			break
		}
		delete(r.dirty, name)
		jctx, cancel := context.WithCancel(ctx)
		j := &prepJob{cancel: cancel}
		r.jobs[name] = j
		wg.Go(func() {
			defer cancel()
			version, err := r.prepare(jctx, name)
			r.mu.Lock()
			delete(r.jobs, name)
			if err != nil && jctx.Err() == nil && !permanent(err) {
				rt := r.retries[name]
				delay := r.opts.RetryMin
				if rt.version == version && rt.delay > 0 {
					delay = min(2*rt.delay, r.opts.RetryMax)
				}
				r.retries[name] = retry{version: version, at: r.opts.Now().Add(delay), delay: delay}
				r.log.Info("rollout will be retried", "rollout", name, "version", version, "in", delay)
			}
			r.mu.Unlock()
			r.kick()
		})
	}
	return next
}

// permanent errors do not pass by trying again: the manifest names bytes that are not the model, or the model
// cannot be compiled with its profiles.
func permanent(err error) bool {
	return errors.Is(err, rollout.ErrSourceMismatch) || errors.Is(err, compile.ErrInvalidModel) ||
		errors.Is(err, compile.ErrInvalidProfile) || errors.Is(err, rollout.ErrCorruptState)
}

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

// AddSource stores a source model's files as blobs (so peers can fetch them) and describes it for a manifest.
func (r *Rollouts) AddSource(ctx context.Context, path string) (rollout.SourceModel, error) {
	m, err := compile.LoadModel(path)
	if err != nil {
		return rollout.SourceModel{}, err
	}
	blobs := map[string]string{}
	for _, f := range m.Files {
		c, err := r.putFile(ctx, f)
		if err != nil {
			return rollout.SourceModel{}, err
		}
		blobs[f.Role] = c.String()
	}
	return rollout.SourceFromModel(m, blobs)
}

func (r *Rollouts) putFile(ctx context.Context, f compile.ModelFile) (cid.Cid, error) {
	fh, err := os.Open(f.Path)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: %w", compile.ErrInvalidModel, err)
	}
	defer fh.Close()
	bm, err := r.opts.Store.Put(ctx, fh)
	if err != nil {
		return cid.Undef, fmt.Errorf("storing %s: %w", f.Path, err)
	}
	// The file may have changed since it was hashed: the stored bytes are what the manifest will name.
	if got := hex.EncodeToString(bm.SHA256[:]); got != f.SHA256 || int64(bm.Size) != f.Size {
		return cid.Undef, fmt.Errorf("%w: %s changed while it was being stored", compile.ErrInvalidModel, f.Path)
	}
	return bm.CID(), nil
}

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

// prepare brings the current version of a rollout to ready on this host, if it selects this host, and updates
// the pins. It returns the version it worked on.
func (r *Rollouts) prepare(ctx context.Context, name string) (uint64, error) {
	st, err := r.acc.State(name)
	if err != nil {
		r.log.Error("rollout state unreadable; it stays as it is", "rollout", name, "err", err)
		return 0, err
	}
	if st.Current == nil {
		return 0, nil
	}
	m := st.Current.Manifest
	log := r.log.With("rollout", name, "version", m.Version)
	if !m.Selects(r.opts.Agent.Host(), r.opts.Tags) {
		log.Info("rollout does not select this host")
		return m.Version, r.updatePins(ctx, m, nil)
	}
	if s, ok := r.currentStatus(name); ok && s.Version == m.Version && s.State == rollout.PhaseReady {
		return m.Version, nil
	}
	ids, err := m.ProfileIDs()
	if err != nil {
		return m.Version, err // unreachable: the manifest was accepted
	}
	p := &progress{r: r, m: m, profiles: map[string]string{}}
	for _, id := range ids {
		p.profiles[id] = string(rollout.PhasePending)
	}
	p.set(rollout.PhasePending, "")
	model, err := r.fetchSource(ctx, m, p)
	if err != nil {
		return m.Version, p.fail(ctx, err)
	}
	blobs := map[string]string{}
	for i, prof := range m.Profiles {
		id := ids[i]
		p.profile(id, rollout.PhaseCompiling)
		c, source, err := r.opts.Agent.EnsureBlob(ctx, model, prof, func(fetching bool) {
			if fetching {
				p.profile(id, rollout.PhaseFetching)
			} else {
				p.profile(id, rollout.PhaseCompiling)
			}
		})
		if err != nil {
			return m.Version, p.fail(ctx, fmt.Errorf("profile %s: %w", id, err), id)
		}
		blobs[id] = c.String()
		p.resolved(id, c.String())
		log.Info("rollout profile ready", "profile", id, "blob", c, "source", source)
	}
	if err := r.updatePins(ctx, m, blobs); err != nil {
		return m.Version, p.fail(ctx, err)
	}
	p.set(rollout.PhaseReady, "")
	return m.Version, nil
}

func (r *Rollouts) currentStatus(name string) (rollout.Status, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.local[name]
	return s, ok
}

// fetchSource brings the source model's blobs into the store (from peers when missing), checks them against the
// manifest and writes the model files under ModelsDir, re-hashed as OpenVINO will read them.
func (r *Rollouts) fetchSource(ctx context.Context, m *rollout.Manifest, p *progress) (compile.Model, error) {
	store := r.opts.Store
	files := make([]compile.ModelFile, 0, len(m.Model.Files))
	for _, f := range m.Model.Files {
		c, err := blobstore.ParseCID(f.Blob)
		if err != nil {
			return compile.Model{}, fmt.Errorf("%w: %w", rollout.ErrInvalidManifest, err)
		}
		has, err := store.Has(ctx, c)
		if err != nil {
			return compile.Model{}, err
		}
		if !has {
			p.set(rollout.PhaseFetching, "")
			if err := r.opts.Agent.FetchBlob(ctx, c); err != nil {
				return compile.Model{}, fmt.Errorf("fetching source %s file %s (blob %s): %w", f.Role, f.Name, c, err)
			}
		}
		info, err := store.Stat(ctx, c)
		if err != nil {
			return compile.Model{}, err
		}
		files = append(files, compile.ModelFile{Role: f.Role, Name: f.Name, Size: int64(info.Size), SHA256: info.SHA256})
	}
	if err := rollout.VerifySource(m, files); err != nil {
		return compile.Model{}, err
	}
	return r.writeSource(ctx, m)
}

// writeSource exports the source files to <ModelsDir>/<model id>/ (kept if already there with the right size)
// and loads the model from there; a file damaged on disk is exported again once.
func (r *Rollouts) writeSource(ctx context.Context, m *rollout.Manifest) (compile.Model, error) {
	dir := filepath.Join(r.opts.ModelsDir, m.Model.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return compile.Model{}, err
	}
	var main string
	for attempt := 0; ; attempt++ {
		for _, f := range m.Model.Files {
			path := filepath.Join(dir, f.Name) // a base name: the manifest rules allow no separators
			if f.Role != compile.RoleBin {
				main = path
			}
			if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && st.Size() == f.Size && attempt == 0 {
				continue
			}
			c, _ := blobstore.ParseCID(f.Blob) // parsed before
			if err := r.opts.Store.Export(ctx, c, path); err != nil {
				return compile.Model{}, fmt.Errorf("writing source %s: %w", path, err)
			}
		}
		model, err := compile.LoadModel(main)
		if err == nil && model.ID == m.Model.ID {
			return model, nil
		}
		if attempt > 0 {
			if err == nil {
				err = fmt.Errorf("%w: %s hashes to model %s, the manifest says %s", rollout.ErrSourceMismatch, main, model.ID, m.Model.ID)
			}
			return compile.Model{}, err
		}
		r.log.Warn("source model on disk does not match; writing it again", "dir", dir, "err", err)
	}
}

// history is the stored list of a rollout's versions whose blobs may still be pinned.
type history struct {
	Versions []historyEntry `json:"versions"`
}

type historyEntry struct {
	Manifest *rollout.Manifest `json:"manifest"`
	Blobs    map[string]string `json:"blobs,omitempty"` // profile ID → compiled blob CID resolved here
}

// updatePins records m (with the blobs resolved for it, nil if not selected) in its rollout's history and applies
// rollout.PinSet over every rollout: blobs of kept versions that are in the store are pinned, blobs Rollouts
// pinned that no kept version needs are unpinned, versions dropped are forgotten. A blob pinned by someone else
// (`npu-agent pin`) is left alone.
func (r *Rollouts) updatePins(ctx context.Context, m *rollout.Manifest, blobs map[string]string) error {
	r.pinMu.Lock()
	defer r.pinMu.Unlock()
	hist, err := r.loadHistory(m.Name)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(hist.Versions, func(e historyEntry) bool { return e.Manifest.Version == m.Version })
	switch {
	case i < 0:
		hist.Versions = append(hist.Versions, historyEntry{Manifest: m, Blobs: blobs})
	case blobs != nil:
		hist.Versions[i].Blobs = blobs
	}
	if err := r.saveJSON(historyKeyPrefix+m.Name, hist); err != nil {
		return err
	}

	keys, err := r.opts.KV.Keys(historyKeyPrefix)
	if err != nil {
		return err
	}
	all := map[string]*history{}
	var resolved []rollout.Resolved
	for _, k := range keys {
		name := strings.TrimPrefix(k, historyKeyPrefix)
		h, err := r.loadHistory(name)
		if err != nil {
			return err
		}
		all[name] = h
		for _, e := range h.Versions {
			resolved = append(resolved, rollout.Resolved{Manifest: e.Manifest, Blobs: e.Blobs})
		}
	}
	plan, err := rollout.PinSet(resolved)
	if err != nil {
		return err
	}
	owned := map[string]bool{}
	if err := r.loadJSON(pinsKey, &owned); err != nil && !errors.Is(err, rollout.ErrNotFound) {
		return err
	}
	store := r.opts.Store
	need := map[string]bool{}
	for _, pb := range plan.Pin {
		need[pb.Blob] = true
		c, err := blobstore.ParseCID(pb.Blob)
		if err != nil {
			return err
		}
		info, err := store.Stat(ctx, c)
		if errors.Is(err, blobstore.ErrNotFound) || err == nil && !info.Complete {
			continue // a source this host never fetched (not selected), or a blob gc took
		}
		if err != nil {
			return err
		}
		if info.Pinned {
			continue // ours already, or the operator's: never ours to unpin
		}
		if err := store.Pin(ctx, c, true); err != nil {
			return err
		}
		owned[pb.Blob] = true
	}
	for b := range owned {
		if need[b] {
			continue
		}
		c, err := blobstore.ParseCID(b)
		if err == nil {
			err = store.Pin(ctx, c, false)
		}
		if err != nil && !errors.Is(err, blobstore.ErrNotFound) {
			return err
		}
		delete(owned, b)
		r.log.Info("rollout blob unpinned", "blob", b)
	}
	if err := r.saveJSON(pinsKey, owned); err != nil {
		return err
	}
	kept := map[rollout.Ref]bool{}
	for _, k := range plan.Keep {
		kept[k] = true
	}
	for name, h := range all {
		n := len(h.Versions)
		h.Versions = slices.DeleteFunc(h.Versions, func(e historyEntry) bool {
			return !kept[rollout.Ref{Name: name, Version: e.Manifest.Version}]
		})
		if len(h.Versions) != n {
			if err := r.saveJSON(historyKeyPrefix+name, h); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *Rollouts) loadHistory(name string) (*history, error) {
	h := &history{}
	err := r.loadJSON(historyKeyPrefix+name, h)
	if errors.Is(err, rollout.ErrNotFound) {
		return h, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range h.Versions {
		if e.Manifest == nil || e.Manifest.Name != name {
			return nil, fmt.Errorf("%w: history of %s holds another rollout", rollout.ErrCorruptState, name)
		}
		if err := e.Manifest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: history of %s: %w", rollout.ErrCorruptState, name, err)
		}
	}
	return h, nil
}

func (r *Rollouts) loadJSON(key string, v any) error {
	b, err := r.opts.KV.Get(key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %v", rollout.ErrCorruptState, key, err)
	}
	return nil
}

func (r *Rollouts) saveJSON(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.opts.KV.Put(key, b)
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
