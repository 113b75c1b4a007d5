// Package engine is the rollout engine: it follows operator-signed rollouts on this host (acceptance, preparation
// of the source model and a blob per profile, pins of the current and previous version) and exchanges signed
// manifests and status reports with the fleet. The pure rules are in package rollout; the blobs come from the
// agent and the fleet transport from package fleet, both through the narrow interfaces declared here.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

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
	// IndexCacheEntry checks stored blob c as OpenVINO cache entry name of build for this host and indexes it
	// for the cache directories' sharer; false (no error) when it cannot serve this host.
	IndexCacheEntry(ctx context.Context, name, build string, c cid.Cid) (bool, error)
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
	// Member reports whether peer is a fleet member: only members' status reports are kept.
	Member(peer string) bool
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
