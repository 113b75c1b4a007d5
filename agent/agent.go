// Package agent ties the blob store, the compatibility rules, the compilers and (optionally) the fleet together:
// Ensure(model, profile) answers from the local store, else fetches a compatible blob a peer holds, else
// compiles once (once per process and, with a fleet, once per compatibility class) and shares the result.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/internal/tick"
	"github.com/npu-agent/npu-agent/metrics"
)

// ErrIncompatible reports a blob the host's NPU stack cannot load, by the rules.
var ErrIncompatible = compat.ErrIncompatible

// ErrRecordMismatch reports a peer's record whose blob is not what the record says.
var ErrRecordMismatch = errors.New("blob does not match its record")

// maxRejected bounds the blobs remembered as not serving this host; past it the memory starts afresh (a rejected
// blob is then fetched and rejected once more).
const maxRejected = 4096

// Source says where Ensure found a blob.
type Source = blobstore.Source

// Sources of a blob.
const (
	SourceStore    = blobstore.SourceStore
	SourcePeer     = blobstore.SourcePeer
	SourceCompiled = blobstore.SourceCompiled
)

// Phase says what a job under way does.
type Phase string

// Phases of a job.
const (
	PhaseFetch   Phase = "fetch"   // chunks coming from peers
	PhaseCompile Phase = "compile" // compiling on this host
	PhaseWait    Phase = "wait"    // waiting for a peer of the same class to compile
)

// Result is the outcome of Ensure.
type Result struct {
	CID       cid.Cid          `json:"cid"`
	Source    Source           `json:"source"`
	Record    blobstore.Record `json:"record"`
	SHA256    string           `json:"sha256"`
	Path      string           `json:"path,omitempty"` // set by Materialize
	WaitedFor string           `json:"waited_for,omitempty"`
}

// Progress reports long work; total is 0 when unknown (for a compile, done is the time spent so far in ns).
type Progress func(phase Phase, done, total int64)

// Fleet is what the agent needs of its peers. The p2p layer implements it; nil means this agent runs alone.
type Fleet interface {
	// Records returns verified, trusted peer records for (model, profile).
	Records(modelID, profileID string) []blobstore.Record
	// Fetch brings blob c from peers into the store, verified, and makes it visible.
	Fetch(ctx context.Context, c cid.Cid, progress func(done, total int64)) error
	// Publish signs and announces a record of a blob this agent holds.
	Publish(ctx context.Context, r blobstore.Record) error
	// Coordinate runs the fleet-wide single flight for key: it calls compile when this agent is chosen (or
	// takes over), or returns once another member's compile is done or ready reports a usable blob, naming the
	// peer waited for ("" if this agent compiled).
	Coordinate(ctx context.Context, key compile.FlightKey, compile func(context.Context) (cid.Cid, error), ready func() (cid.Cid, bool)) (waitedFor string, err error)
}

// FleetProgress is optionally implemented by a Fleet: what a wait or a fetch under way is doing, for status.
type FleetProgress interface {
	// Holder names the member whose compile the fleet single flight for key waits for; "" when none is known.
	Holder(key compile.FlightKey) string
	// FetchPeers is how many peers the fetch of c under way receives chunks from now.
	FetchPeers(c cid.Cid) int
}

// Options configure an Agent.
type Options struct {
	Store    blobstore.Store
	Backend  compile.Backend // nil: a needed compile fails with compile.ErrNoCompiler
	Rules    *compat.Rules   // nil: compat.DefaultRules()
	Host     compat.Fingerprint
	Producer string // written into records: the libp2p peer ID, or the host name when alone
	WorkDir  string // compiler outputs and materialised blobs live under it
	Timeout  time.Duration
	Fleet    Fleet
	Logger   *slog.Logger
	Metrics  *metrics.Metrics // nil: no metrics
}

// Agent resolves blobs. Safe for concurrent use.
type Agent struct {
	opts       Options
	hostJSON   json.RawMessage
	hostHash   string
	flight     compile.Flight
	mu         sync.Mutex
	inflight   map[string]*Activity // what is being fetched or compiled, for status
	inUse      map[cid.Cid]int      // blobs being fetched, exported or streamed: gc keeps them
	rejected   map[string]bool      // peers' records (or their blobs) that failed the checks here
	checked    map[cid.Cid]bool     // stored blobs whose bytes were checked since this process started
	blobsDir   string
	scratchDir string
	retries    []time.Duration // fleetFetchRetries; tests shorten them
}

// Activity is one fetch or compile under way.
type Activity struct {
	Phase   Phase     `json:"phase"`
	Model   string    `json:"model_id"`
	Profile string    `json:"profile_id"`
	CID     cid.Cid   `json:"cid,omitzero"` // the blob being fetched; undefined for compiles
	Started time.Time `json:"started"`
	Done    int64     `json:"done"`
	Total   int64     `json:"total"`
	From    string    `json:"from,omitempty"`  // the producer a fetch comes from; the member a wait waits for
	Peers   int       `json:"peers,omitempty"` // peers a fetch receives chunks from now
}

// New validates the host fingerprint and prepares the work directories.
func New(opts Options) (*Agent, error) {
	if opts.Store == nil {
		return nil, errors.New("agent: no store")
	}
	if opts.Rules == nil {
		opts.Rules = compat.DefaultRules()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	canon, err := opts.Host.Canonical()
	if err != nil {
		return nil, fmt.Errorf("host fingerprint: %w", err)
	}
	hash, err := opts.Host.Hash()
	if err != nil {
		return nil, fmt.Errorf("host fingerprint: %w", err)
	}
	a := &Agent{
		opts:       opts,
		hostJSON:   canon,
		hostHash:   hash,
		inflight:   map[string]*Activity{},
		inUse:      map[cid.Cid]int{},
		rejected:   map[string]bool{},
		checked:    map[cid.Cid]bool{},
		blobsDir:   filepath.Join(opts.WorkDir, "blobs"),
		scratchDir: filepath.Join(opts.WorkDir, "scratch"),
		retries:    fleetFetchRetries,
	}
	for _, d := range []string{a.blobsDir, a.scratchDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	// Files materialised by versions that copied blobs out of the store duplicate what the store now keeps as
	// files; a loader that still has one open keeps its bytes (unlinked, not overwritten).
	if _, ok := opts.Store.(blobstore.Filer); ok {
		if old, err := filepath.Glob(filepath.Join(a.blobsDir, "*.blob")); err == nil {
			for _, f := range old {
				_ = os.Remove(f)
			}
		}
	}
	// Compiler outputs of a killed process are garbage. Only the store's owner gets here (badger locks its directory),
	// so no other live process is using them.
	if old, err := os.ReadDir(a.scratchDir); err == nil {
		for _, e := range old {
			_ = os.RemoveAll(filepath.Join(a.scratchDir, e.Name()))
		}
	}
	return a, nil
}

// Host is the fingerprint the agent resolves for.
func (a *Agent) Host() compat.Fingerprint { return a.opts.Host }

// Store is the agent's blob store.
func (a *Agent) Store() blobstore.Store { return a.opts.Store }

// Ensure returns a blob for (model, profile) that this host can load: from the store, else from peers, else
// compiled. progress may be nil.
func (a *Agent) Ensure(ctx context.Context, model compile.Model, profile compile.Profile, progress Progress) (Result, error) {
	r, err := a.ensure(ctx, model, profile, progress)
	if err == nil {
		a.opts.Metrics.Lookup(r.Source == SourceStore)
		a.opts.Metrics.Fetched(r.Source, r.Record.Size)
		if r.WaitedFor != "" {
			a.opts.Metrics.Waited(metrics.ScopeFleet)
		}
	}
	return r, err
}

func (a *Agent) ensure(ctx context.Context, model compile.Model, profile compile.Profile, progress Progress) (Result, error) {
	pid, err := profile.ID()
	if err != nil {
		return Result{}, err
	}
	kind := profile.Kind
	if r, ok, err := a.findLocal(ctx, model.ID, pid, kind); err != nil || ok {
		if ok {
			_ = a.opts.Store.Touch(ctx, r.CID)
		}
		return r, err
	}
	if a.opts.Fleet != nil {
		if r, ok, err := a.fromPeers(ctx, model.ID, pid, kind, progress); err != nil || ok {
			return r, err
		}
	}
	class, err := compat.Class(a.opts.Rules, a.opts.Host, kind)
	if err != nil {
		return Result{}, err
	}
	key := compile.FlightKey{ModelID: model.ID, ProfileID: pid, Class: class}
	compileHere := func(ctx context.Context) (cid.Cid, error) {
		return a.compileAndStore(ctx, model, profile, pid, progress)
	}
	var waitedFor string
	_, shared, err := a.flight.Do(ctx, key, func(ctx context.Context) (*compile.Result, error) {
		// A flight that finished just before ours may have stored it.
		if _, ok, err := a.findLocal(ctx, model.ID, pid, kind); err != nil || ok {
			return nil, err
		}
		if a.opts.Fleet == nil {
			_, err := compileHere(ctx)
			return nil, err
		}
		w, err := a.coordinate(ctx, key, compileHere, kind)
		waitedFor = w
		return nil, err
	})
	if shared {
		a.opts.Metrics.Waited(metrics.ScopeLocal)
	}
	if err != nil {
		return Result{}, err
	}
	if r, ok, err := a.findLocal(ctx, model.ID, pid, kind); err != nil || ok {
		if ok && r.Record.Producer == a.opts.Producer && waitedFor == "" {
			r.Source = SourceCompiled
		}
		r.WaitedFor = waitedFor
		return r, err
	}
	// Another member compiled: fetch its blob.
	r, ok, err := a.fetchCompiled(ctx, model.ID, pid, kind, progress, waitedFor != "")
	if err != nil || ok {
		r.WaitedFor = waitedFor
		return r, err
	}
	// What the fleet compiled does not serve this host (range rules), or no peer could deliver it: compile here.
	a.opts.Logger.Warn("the fleet's blob is not usable here; compiling locally", "model", model.ID, "profile", pid, "waited_for", waitedFor)
	if _, _, err := a.flight.Do(ctx, key, func(ctx context.Context) (*compile.Result, error) {
		_, err := compileHere(ctx)
		return nil, err
	}); err != nil {
		return Result{}, err
	}
	r, ok, err = a.findLocal(ctx, model.ID, pid, kind)
	if err == nil && !ok {
		err = fmt.Errorf("blob for model %s profile %s is missing from the store right after it was compiled", model.ID, pid)
	}
	r.Source = SourceCompiled
	return r, err
}

// coordinate runs the fleet single flight for key and logs its decisions: while the fleet elects a compiler and a
// peer compiles, status shows a wait job; compiling here ends it. It returns the peer waited for ("" if this
// agent compiled or a usable record came).
func (a *Agent) coordinate(ctx context.Context, key compile.FlightKey, compileHere func(context.Context) (cid.Cid, error), kind string) (string, error) {
	log := a.opts.Logger.With("model", key.ModelID, "profile", key.ProfileID)
	log.Info("single flight: no blob here or at peers; asking the fleet who compiles", "class", key.Class)
	wait := a.begin(PhaseWait, key.ModelID, key.ProfileID, cid.Undef)
	defer a.end(wait)
	stopWatch := a.watchHolder(wait, key, log)
	defer stopWatch()
	start := time.Now()
	ready := func() (cid.Cid, bool) {
		if recs := a.compatible(a.opts.Fleet.Records(key.ModelID, key.ProfileID), kind); len(recs) > 0 {
			return recs[0].Blob, true
		}
		return cid.Undef, false
	}
	_, knownBefore := ready()
	compiled := false
	w, err := a.opts.Fleet.Coordinate(ctx, key, func(ctx context.Context) (cid.Cid, error) {
		stopWatch()
		a.end(wait)
		compiled = true
		log.Info("single flight: compiling here", "after", time.Since(start).Round(time.Millisecond))
		return compileHere(ctx)
	}, ready)
	if err == nil && w == "" && !compiled && !knownBefore {
		// The compiler's record came during the flight, before its DONE (they travel separately): this request
		// waited for that member all the same. A record known before the flight began is no wait.
		if recs := a.compatible(a.opts.Fleet.Records(key.ModelID, key.ProfileID), kind); len(recs) > 0 {
			w = recs[0].Producer
		}
	}
	switch {
	case err != nil:
		log.Warn("single flight failed", "err", err)
	case w != "":
		log.Info("single flight: waited for a peer's compile", "peer", w, "waited", time.Since(start).Round(time.Millisecond))
	}
	return w, err
}

// findLocal returns the best compatible blob in the store.
func (a *Agent) findLocal(ctx context.Context, modelID, profileID, kind string) (Result, bool, error) {
	recs, err := a.opts.Store.Records(ctx, modelID, profileID)
	if err != nil {
		return Result{}, false, err
	}
	for _, r := range a.compatible(recs, kind) {
		info, err := a.opts.Store.Stat(ctx, r.Blob)
		if errors.Is(err, blobstore.ErrNotFound) || (err == nil && !info.Complete) {
			continue
		}
		if err != nil {
			return Result{}, false, err
		}
		if err := a.checkOnce(ctx, r.Blob); errors.Is(err, blobstore.ErrInvalidData) || errors.Is(err, blobstore.ErrIncomplete) {
			// Quarantined by the store: the request falls back to peers or compiling, which heal the store.
			a.opts.Logger.Warn("stored blob is damaged; fetching or compiling it again", "blob", r.Blob, "err", err)
			continue
		} else if err != nil {
			return Result{}, false, err
		}
		return Result{CID: r.Blob, Source: SourceStore, Record: r, SHA256: info.SHA256}, true, nil
	}
	return Result{}, false, nil
}

// checkOnce checks a stored blob the first time this process hands it out (the store quarantines a damaged
// blob): a blob verified on arrival is not re-hashed, and the store reads it against its checksums only when its
// check stamp does not vouch for it (docs/design.md 3.14), so a file changed behind the store's back is found
// before a loader gets it.
func (a *Agent) checkOnce(ctx context.Context, c cid.Cid) error {
	ck, ok := a.opts.Store.(blobstore.Checker)
	if !ok {
		return nil
	}
	a.mu.Lock()
	done := a.checked[c]
	a.mu.Unlock()
	if done {
		return nil
	}
	if err := ck.CheckBlob(ctx, c); err != nil {
		return err
	}
	a.markChecked(c)
	return nil
}

// markChecked records c as checked: it was verified on arrival in this process (fetched or put).
func (a *Agent) markChecked(c cid.Cid) {
	a.mu.Lock()
	if len(a.checked) >= maxRejected {
		clear(a.checked)
	}
	a.checked[c] = true
	a.mu.Unlock()
}

// forgetChecked drops c from the blobs checked in this process (removed, or quarantined since).
func (a *Agent) forgetChecked(c cid.Cid) {
	a.mu.Lock()
	delete(a.checked, c)
	a.mu.Unlock()
}

// compatible filters records to those this host can load, best first: compiled on this very fingerprint, then
// the newest.
func (a *Agent) compatible(recs []blobstore.Record, kind string) []blobstore.Record {
	type candidate struct {
		r        blobstore.Record
		sameHost bool
	}
	var cands []candidate
	for _, r := range recs {
		if normKind(r.Kind) != normKind(kind) || a.isRejected(r, kind) {
			continue
		}
		var fp compat.Fingerprint
		if err := json.Unmarshal(r.Fingerprint, &fp); err != nil {
			continue
		}
		if d := compat.Check(a.opts.Rules, fp, a.opts.Host, kind); !d.Compatible {
			continue
		}
		h, err := fp.Hash()
		cands = append(cands, candidate{r: r, sameHost: err == nil && h == a.hostHash})
	}
	slices.SortStableFunc(cands, func(x, y candidate) int {
		if x.sameHost != y.sameHost {
			if x.sameHost {
				return -1
			}
			return 1
		}
		return y.r.Created.Compare(x.r.Created)
	})
	out := make([]blobstore.Record, len(cands))
	for i, c := range cands {
		out[i] = c.r
	}
	return out
}

// normKind treats "" as the default kind.
func normKind(k string) string {
	if k == "" {
		return compat.KindModel
	}
	return k
}

// fleetFetchRetries are the pauses before fetching again a blob the fleet compiled while this agent waited, when
// every holder failed: a compile costs minutes and gigabytes, a retry seconds, and a holder that just compiled is
// often busy serving the rest of its class. A record that failed the checks is rejected and not retried.
var fleetFetchRetries = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}

// fetchCompiled is fromPeers after a flight; when this agent waited for a peer's compile (waited), a fetch that
// failed is tried again after each of fleetFetchRetries while a compatible record remains.
func (a *Agent) fetchCompiled(ctx context.Context, modelID, profileID, kind string, progress Progress, waited bool) (Result, bool, error) {
	for attempt := 0; ; attempt++ {
		r, ok, err := a.fromPeers(ctx, modelID, profileID, kind, progress)
		if err != nil || ok || !waited || attempt == len(a.retries) {
			return r, ok, err
		}
		if len(a.compatible(a.opts.Fleet.Records(modelID, profileID), kind)) == 0 {
			return r, ok, err
		}
		pause := a.retries[attempt]
		a.opts.Logger.Info("fetch of the fleet's blob failed; trying again before compiling", "model", modelID, "profile", profileID, "in", pause)
		select {
		case <-ctx.Done():
			return Result{}, false, ctx.Err()
		case <-time.After(pause):
		}
	}
}

// fromPeers fetches the best compatible blob peers advertise, trying the next on failure.
func (a *Agent) fromPeers(ctx context.Context, modelID, profileID, kind string, progress Progress) (Result, bool, error) {
	var errs []error
	for _, r := range a.compatible(a.opts.Fleet.Records(modelID, profileID), kind) {
		err := a.fetchChecked(ctx, r, kind, progress)
		if err != nil {
			if ctx.Err() != nil {
				return Result{}, false, ctx.Err()
			}
			a.opts.Logger.Warn("fetch failed, trying the next record", "blob", r.Blob, "producer", r.Producer, "err", err)
			errs = append(errs, err)
			continue
		}
		info, err := a.opts.Store.Stat(ctx, r.Blob)
		if err != nil {
			return Result{}, false, err
		}
		return Result{CID: r.Blob, Source: SourcePeer, Record: r, SHA256: info.SHA256}, true, nil
	}
	if len(errs) > 0 {
		a.opts.Logger.Info("no peer could serve a compatible blob; compiling", "model", modelID, "err", errors.Join(errs...))
	}
	return Result{}, false, nil
}

// fetchChecked brings the blob of a peer's record into the store and indexes the record only once the blob itself
// passed the checks: a record's claim is never enough. A blob that fails them is remembered as rejected and, if
// the fetch brought it, removed again, so that no path (ensure, the blob endpoints, peers) serves it.
func (a *Agent) fetchChecked(ctx context.Context, r blobstore.Record, kind string, progress Progress) error {
	release := a.use(r.Blob)
	defer release()
	held, err := a.opts.Store.Has(ctx, r.Blob)
	if err != nil {
		return err
	}
	before, _ := a.opts.Store.Stat(ctx, r.Blob) // zero when absent: no chunk held
	act := a.begin(PhaseFetch, r.ModelID, r.ProfileID, r.Blob)
	a.mu.Lock()
	act.From = r.Producer
	a.mu.Unlock()
	err = a.opts.Fleet.Fetch(ctx, r.Blob, func(done, total int64) {
		act.update(a, done, total)
		if progress != nil {
			progress(PhaseFetch, done, total)
		}
	})
	a.end(act)
	if err != nil {
		return err
	}
	if after, err := a.opts.Store.Stat(ctx, r.Blob); err == nil && after.HaveChunks > before.HaveChunks {
		a.opts.Metrics.ChunksFetched(after.HaveChunks - before.HaveChunks)
		d := time.Since(act.Started)
		a.opts.Logger.Info("fetched from peers", "blob", r.Blob, "producer", r.Producer, "bytes", after.Size,
			"chunks", after.HaveChunks-before.HaveChunks, "duration", d.Round(time.Millisecond),
			"rate_bytes_per_second", int64(float64(after.Size)/max(d.Seconds(), 1e-3)))
	}
	if err := a.checkStored(ctx, r, kind); err != nil {
		a.reject(ctx, r, kind, err, held)
		return err
	}
	a.markChecked(r.Blob)
	return a.opts.Store.AddRecord(ctx, r)
}

// reject remembers a record that failed the checks here, and deletes its blob unless it was held before the fetch
// or a stored record names it. An incompatible blob is remembered by its bytes (no record can make it load here);
// a record whose blob differs from what it says, by the record, so that a forged record cannot bar a good blob.
func (a *Agent) reject(ctx context.Context, r blobstore.Record, kind string, why error, held bool) {
	a.mu.Lock()
	if len(a.rejected) >= maxRejected {
		clear(a.rejected)
	}
	a.rejected[rejectKey(r, kind, errors.Is(why, ErrIncompatible))] = true
	a.mu.Unlock()
	if held {
		return
	}
	if recs, err := a.opts.Store.Records(ctx, "", ""); err != nil ||
		slices.ContainsFunc(recs, func(x blobstore.Record) bool { return x.Blob.Equals(r.Blob) }) {
		return
	}
	if err := a.opts.Store.Delete(ctx, r.Blob); err != nil && !errors.Is(err, blobstore.ErrNotFound) {
		a.opts.Logger.Warn("cannot remove a rejected blob", "blob", r.Blob, "err", err)
	}
	_ = os.Remove(a.BlobPath(r.Blob))
}

func rejectKey(r blobstore.Record, kind string, byBlob bool) string {
	if byBlob {
		return "blob/" + normKind(kind) + "/" + r.Blob.String()
	}
	return fmt.Sprintf("record/%s/%s/%s/%s/%d", r.Producer, r.ModelID, r.ProfileID, r.Blob, r.Size)
}

func (a *Agent) isRejected(r blobstore.Record, kind string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rejected[rejectKey(r, kind, true)] || a.rejected[rejectKey(r, kind, false)]
}

// checkStored checks a stored blob against a record that names it: the blob's own trailer must pass the rules for
// this host, and its size must be the record's.
func (a *Agent) checkStored(ctx context.Context, r blobstore.Record, kind string) error {
	ra, err := newStoreReaderAt(ctx, a.opts.Store, r.Blob)
	if err != nil {
		return err
	}
	if r.Size != 0 && uint64(ra.Size()) != r.Size {
		return fmt.Errorf("blob %s: %w: %d bytes, its record says %d", r.Blob, ErrRecordMismatch, ra.Size(), r.Size)
	}
	t, err := compat.ParseTrailer(ra, ra.Size())
	if err != nil {
		return fmt.Errorf("blob %s: %w", r.Blob, err)
	}
	if d := compat.CheckBlob(a.opts.Rules, t, a.opts.Host, kind); !d.Compatible {
		return fmt.Errorf("blob %s: %w: %v", r.Blob, ErrIncompatible, d.Reasons)
	}
	return nil
}

func (a *Agent) compileAndStore(ctx context.Context, model compile.Model, profile compile.Profile, pid string, progress Progress) (cid.Cid, error) {
	if a.opts.Backend == nil {
		return cid.Undef, compile.ErrNoCompiler
	}
	act := a.begin(PhaseCompile, model.ID, pid, cid.Undef)
	defer a.end(act)
	if progress != nil {
		stop := tick.Every(200*time.Millisecond, func() { progress(PhaseCompile, int64(time.Since(act.Started)), 0) })
		defer stop()
	}
	dir, err := os.MkdirTemp(a.scratchDir, "compile-")
	if err != nil {
		return cid.Undef, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "out.blob")
	a.opts.Logger.Info("compiling", "backend", a.opts.Backend.Name(), "model", model.ID, "profile", pid)
	res, err := a.opts.Backend.Compile(ctx, compile.Request{Model: model, Profile: profile, OutPath: out, Timeout: a.opts.Timeout})
	if err != nil {
		a.opts.Metrics.Compiled(time.Since(act.Started), err)
		return cid.Undef, err
	}
	a.opts.Metrics.Compiled(res.Duration, nil)
	c, sha, err := a.putChecked(ctx, res.Path, profile.Kind)
	if err != nil {
		return cid.Undef, fmt.Errorf("compiler output: %w", err)
	}
	rec := blobstore.Record{
		ModelID: model.ID, ProfileID: pid, Blob: c, Fingerprint: a.hostJSON, CompileTime: res.Duration,
		Created: time.Now().UTC(), Producer: a.opts.Producer, Kind: profile.Kind,
	}
	if rec.Size, err = a.size(ctx, c); err != nil {
		return cid.Undef, err
	}
	if err := a.opts.Store.AddRecord(ctx, rec); err != nil {
		return cid.Undef, err
	}
	a.opts.Logger.Info("compiled", "blob", c, "sha256", sha, "duration", res.Duration)
	a.publish(ctx, rec)
	return c, nil
}

func (a *Agent) publish(ctx context.Context, rec blobstore.Record) {
	if a.opts.Fleet == nil {
		return
	}
	if err := a.opts.Fleet.Publish(ctx, rec); err != nil {
		a.opts.Logger.Warn("could not announce record to peers", "blob", rec.Blob, "err", err)
	}
}

func (a *Agent) size(ctx context.Context, c cid.Cid) (uint64, error) {
	info, err := a.opts.Store.Stat(ctx, c)
	return info.Size, err
}

// putChecked checks a blob file's trailer against the rules for this host, then streams it into the store.
func (a *Agent) putChecked(ctx context.Context, path, kind string) (cid.Cid, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return cid.Undef, "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return cid.Undef, "", err
	}
	if !st.Mode().IsRegular() {
		return cid.Undef, "", fmt.Errorf("%s is not a regular file", path)
	}
	t, err := compat.ParseTrailer(f, st.Size())
	if err != nil {
		return cid.Undef, "", fmt.Errorf("%s: %w", path, err)
	}
	if d := compat.CheckBlob(a.opts.Rules, t, a.opts.Host, kind); !d.Compatible {
		return cid.Undef, "", fmt.Errorf("%s: %w: %v", path, ErrIncompatible, d.Reasons)
	}
	m, err := a.opts.Store.Put(ctx, f)
	if err != nil {
		return cid.Undef, "", err
	}
	a.markChecked(m.CID())
	return m.CID(), fmt.Sprintf("%x", m.SHA256), nil
}

// Put registers a blob compiled elsewhere for (model, profile), as compiled on fp (nil: this host's stack).
func (a *Agent) Put(ctx context.Context, path string, model compile.Model, profile compile.Profile, fp *compat.Fingerprint) (Result, error) {
	pid, err := profile.ID()
	if err != nil {
		return Result{}, err
	}
	fpJSON := a.hostJSON
	if fp != nil {
		if d := compat.Check(a.opts.Rules, *fp, a.opts.Host, profile.Kind); !d.Compatible {
			return Result{}, fmt.Errorf("%w: %v", ErrIncompatible, d.Reasons)
		}
		if fpJSON, err = fp.Canonical(); err != nil {
			return Result{}, err
		}
	}
	c, sha, err := a.putChecked(ctx, path, profile.Kind)
	if err != nil {
		return Result{}, err
	}
	rec := blobstore.Record{
		ModelID: model.ID, ProfileID: pid, Blob: c, Fingerprint: fpJSON,
		Created: time.Now().UTC(), Producer: a.opts.Producer, Kind: profile.Kind,
	}
	if rec.Size, err = a.size(ctx, c); err != nil {
		return Result{}, err
	}
	if err := a.opts.Store.AddRecord(ctx, rec); err != nil {
		return Result{}, err
	}
	a.publish(ctx, rec)
	return Result{CID: c, Source: SourceStore, Record: rec, SHA256: sha}, nil
}

// Materialize gives the loader a stable read-only file for a stored blob. With a store that keeps one file per
// blob (blobstore.Filer) that is the stored file itself: nothing is copied or re-hashed (it was verified on
// arrival, and Ensure checked its checksums once in this process). Otherwise the blob is exported atomically to
// <work>/blobs/<cid>.blob on first use and reused while it is there.
func (a *Agent) Materialize(ctx context.Context, c cid.Cid) (string, error) {
	defer a.use(c)()
	if f, ok := a.opts.Store.(blobstore.Filer); ok {
		return f.BlobFile(ctx, c)
	}
	path := a.BlobPath(c)
	info, err := a.opts.Store.Stat(ctx, c)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(path); err == nil && uint64(st.Size()) == info.Size {
		return path, nil
	}
	if err := a.opts.Store.Export(ctx, c, path); err != nil {
		return "", err
	}
	if err := os.Chmod(path, 0o444); err != nil {
		return "", err
	}
	return path, nil
}

// BlobPath is where Materialize puts a blob.
func (a *Agent) BlobPath(c cid.Cid) string { return filepath.Join(a.blobsDir, c.String()+".blob") }

// GC trims the store to quota, least recently used first, never a pinned blob or one in use (being fetched,
// exported or streamed), and removes the materialised files of what it removed.
func (a *Agent) GC(ctx context.Context, quota uint64) (blobstore.GCResult, error) {
	res, err := a.opts.Store.GC(ctx, quota, a.inUseNow)
	for _, c := range res.Removed {
		a.forgetChecked(c)
		_ = os.Remove(a.BlobPath(c))
	}
	return res, err
}

// Remove deletes a blob and its materialised file.
func (a *Agent) Remove(ctx context.Context, c cid.Cid) error {
	if err := a.opts.Store.Delete(ctx, c); err != nil {
		return err
	}
	a.forgetChecked(c)
	_ = os.Remove(a.BlobPath(c))
	return nil
}

// use marks c in use until the returned release is called.
func (a *Agent) use(c cid.Cid) (release func()) {
	a.mu.Lock()
	a.inUse[c]++
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			if a.inUse[c]--; a.inUse[c] <= 0 {
				delete(a.inUse, c)
			}
			a.mu.Unlock()
		})
	}
}

func (a *Agent) inUseNow(c cid.Cid) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse[c] > 0
}

// Activities lists fetches, compiles and waits under way; with a Fleet that says so (FleetProgress), the peers
// each fetch receives from.
func (a *Agent) Activities() []Activity {
	a.mu.Lock()
	out := make([]Activity, 0, len(a.inflight))
	for _, act := range a.inflight {
		out = append(out, *act)
	}
	a.mu.Unlock()
	slices.SortFunc(out, func(x, y Activity) int { return x.Started.Compare(y.Started) })
	if fp, ok := a.opts.Fleet.(FleetProgress); ok {
		for i := range out {
			if out[i].Phase == PhaseFetch {
				out[i].Peers = fp.FetchPeers(out[i].CID)
			}
		}
	}
	return out
}

// id is an activity's key in Agent.inflight.
func (act *Activity) id() string { return string(act.Phase) + "/" + act.Model + "/" + act.Profile }

// holderPoll is how often a fleet wait asks whom it waits for (FleetProgress.Holder).
const holderPoll = 200 * time.Millisecond

// watchHolder follows whom the fleet wait for key waits for until stop is called: the wait job names that member
// (kept once known: the flight ends before the wait does, which then awaits the member's record), and each new
// one is logged.
func (a *Agent) watchHolder(wait *Activity, key compile.FlightKey, log *slog.Logger) (stop func()) {
	fp, ok := a.opts.Fleet.(FleetProgress)
	if !ok {
		return func() {}
	}
	return tick.Every(holderPoll, func() {
		h := fp.Holder(key)
		a.mu.Lock()
		changed := h != "" && h != wait.From
		if changed {
			wait.From = h
		}
		a.mu.Unlock()
		if changed {
			log.Info("single flight: waiting for a peer's compile", "peer", h)
		}
	})
}

func (a *Agent) begin(phase Phase, model, profile string, blob cid.Cid) *Activity {
	act := &Activity{Phase: phase, Model: model, Profile: profile, CID: blob, Started: time.Now()}
	a.mu.Lock()
	a.inflight[act.id()] = act
	a.mu.Unlock()
	return act
}

func (a *Agent) end(act *Activity) {
	a.mu.Lock()
	delete(a.inflight, act.id())
	a.mu.Unlock()
}

func (act *Activity) update(a *Agent, done, total int64) {
	a.mu.Lock()
	act.Done, act.Total = done, total
	a.mu.Unlock()
}
