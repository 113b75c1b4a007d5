// Package share shares applications' OpenVINO cache directories (CACHE_DIR) across the fleet: it watches each
// configured directory (fsnotify, with a periodic rescan as fallback), harvests every entry OpenVINO finished
// writing into the store through the agent (which checks it and announces the record), and populates the
// directory with the entries peers of the same key announced, atomically and never over an existing file. An
// entry the application removes after a populate is remembered as rejected and never written again. Every path
// is opened through an os.Root of the configured directory: nothing outside it is ever followed.
package share

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/ipfs/go-cid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
	"github.com/npu-agent/npu-agent/ovcache"
)

// Limits.
const (
	// DefaultMaxEntrySize bounds an entry harvested or populated unless configured otherwise.
	DefaultMaxEntrySize = 16 << 30
	// maxNames bounds the entry names looked at per directory and scan (and so the state kept per directory).
	maxNames = 10000
	// maxPopulatePerPass bounds the entries written per directory and pass.
	maxPopulatePerPass = 64
	// maxRemembered bounds the rejected and populated names remembered per directory.
	maxRemembered = 10000
	minBackoff    = 5 * time.Second
	// recordPace is the least time between two passes woken by peers' records.
	recordPace = 100 * time.Millisecond
	maxBackoff = time.Hour
)

// Dir is one application cache directory to share.
type Dir struct {
	Path string
	// With SetOwner, UID and GID own the entries written here (-1 leaves one of them the daemon's); Mode is their
	// mode (0: 0440, what OpenVINO writes).
	SetOwner bool
	UID, GID int
	Mode     fs.FileMode
	// Build is the OpenVINO build string of the application (openvino.get_version()), fixed by the config.
	// Empty: DefaultBuild until an entry the application writes here says otherwise (the newest one's build,
	// remembered across restarts); with neither the directory is harvested from but not populated.
	Build string
	// DefaultBuild is the build string of the agent's own OpenVINO (the helper's probe): the application's
	// until one of its entries says otherwise.
	DefaultBuild string
}

// Agent is what the sharer needs of the agent (*agent.Agent), which alone checks and records blobs.
type Agent interface {
	CacheKey(build string) (string, error)
	PutCacheEntry(ctx context.Context, name, build string, r io.Reader, size, maxSize int64) (blobstore.Record, error)
	CacheRecords(ctx context.Context, key string) ([]blobstore.Record, error)
	FetchCacheEntry(ctx context.Context, r blobstore.Record, build string, maxSize int64) error
	OpenCacheEntry(ctx context.Context, c cid.Cid) (blobstore.Reader, func(), error)
	CacheEntryRejected(ctx context.Context, r blobstore.Record)
	// CheckCacheUsable says whether an entry of this host's own directory can still load here (nil) or is
	// stale (ovcache.CheckUsable with this host's fingerprint).
	CheckCacheUsable(e *ovcache.Entry, build string) error
}

// Options configure a Sharer.
type Options struct {
	Dirs         []Dir
	Agent        Agent
	StateDir     string        // where what was populated and rejected is remembered across restarts
	MaxEntrySize int64         // 0: DefaultMaxEntrySize
	Interval     time.Duration // how often directories are looked at for peers' entries and unstable files; 0: 1s
	Rescan       time.Duration // full rescan without a watch event; 0: 30s
	Settle       time.Duration // an entry is stable once unchanged for this long across two looks; 0: 1s
	Logger       *slog.Logger
	Registerer   prometheus.Registerer // nil: no metrics
	// OnRecord, if set, subscribes fn (which must not block) to every new record from the fleet until cancel:
	// a peer's entry is then populated at once instead of at the next pass.
	OnRecord func(fn func()) (cancel func())
}

// Sharer is the component. Run it once.
type Sharer struct {
	opts Options
	log  *slog.Logger
	dirs []*dirState
	// mu guards what List and Prune (API goroutines) share with Run: each dirState's build, populated and
	// pruned. Run's goroutine reads them without it (it is their only other writer) and writes them with it.
	mu      sync.Mutex
	running atomic.Bool // Run has started: Prune leaves populated entries to Run's next pass
	events  *prometheus.CounterVec
	spread  prometheus.Histogram
}

// look is what one Lstat of an entry saw.
type look struct {
	size  int64
	mtime time.Time
	ino   uint64
	at    time.Time
}

func (l look) same(o look) bool { return l.size == o.size && l.mtime.Equal(o.mtime) && l.ino == o.ino }

type populated struct {
	Blob string `json:"blob"`
	Ino  uint64 `json:"ino"`
	rec  blobstore.Record
}

type dirState struct {
	Dir
	root      *os.Root
	build     string    // the application's build string in use: Dir.Build, else learned, else DefaultBuild
	learned   string    // the newest build string of an entry the application wrote here
	learnedAt time.Time // the mtime of the entry it was learned from, in this process
	key       string
	looks     map[string]look      // last look at each entry not yet settled
	done      map[string]look      // entries harvested or found bad, as they were then
	populated map[string]populated // entries this daemon wrote, by name
	rejected  map[string]string    // names whose populated entry the application removed → blob
	backoff   map[string]backoff   // names whose fetch or write failed
	pruned    map[string]bool      // populated names Prune removed: gone, but not rejected by the application
}

type backoff struct {
	until time.Time
	wait  time.Duration
}

// state is the persisted part of a dirState.
type state struct {
	Populated map[string]populated `json:"populated"`
	Rejected  map[string]string    `json:"rejected"`
	Learned   string               `json:"learned_build,omitempty"`
}

// New opens the configured directories (each must exist and be a directory) and the remembered state.
func New(opts Options) (*Sharer, error) {
	if opts.Agent == nil {
		return nil, errors.New("ovcache share: no agent")
	}
	if opts.MaxEntrySize <= 0 {
		opts.MaxEntrySize = DefaultMaxEntrySize
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Rescan <= 0 {
		opts.Rescan = 30 * time.Second
	}
	if opts.Settle <= 0 {
		opts.Settle = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Sharer{opts: opts, log: opts.Logger.With("component", "ovcache")}
	s.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "npu_agent", Name: "ovcache_entries_total",
		Help: "OpenVINO cache entries by event: harvested, populated, rejected (removed by the application after a populate), invalid.",
	}, []string{"event"})
	s.spread = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "npu_agent", Name: "ovcache_populate_delay_seconds",
		Help:    "Time from a peer's record of a cache entry (its creation) to the entry being written here.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
	})
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.events, s.spread} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	seen := map[string]bool{}
	for _, d := range opts.Dirs {
		if d.Path == "" || !filepath.IsAbs(d.Path) {
			return nil, fmt.Errorf("ovcache share: cache directory %q must be an absolute path", d.Path)
		}
		d.Path = filepath.Clean(d.Path)
		if seen[d.Path] {
			return nil, fmt.Errorf("ovcache share: cache directory %s listed twice", d.Path)
		}
		seen[d.Path] = true
		if d.Mode == 0 {
			d.Mode = 0o440
		}
		if d.Mode&^fs.ModePerm != 0 {
			return nil, fmt.Errorf("ovcache share: %s: mode %v has more than permission bits", d.Path, d.Mode)
		}
		st, err := os.Stat(d.Path)
		if err != nil {
			return nil, fmt.Errorf("ovcache share: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("ovcache share: %s is not a directory", d.Path)
		}
		root, err := os.OpenRoot(d.Path)
		if err != nil {
			return nil, fmt.Errorf("ovcache share: %w", err)
		}
		ds := &dirState{Dir: d, root: root, looks: map[string]look{}, done: map[string]look{},
			populated: map[string]populated{}, rejected: map[string]string{}, backoff: map[string]backoff{},
			pruned: map[string]bool{}}
		s.dirs = append(s.dirs, ds)
		if err := s.loadState(ds); err != nil {
			s.log.Warn("cannot read the remembered state; starting afresh", "dir", d.Path, "err", err)
		}
		ds.build = cmp.Or(d.Build, ds.learned, d.DefaultBuild)
	}
	return s, nil
}

func (s *Sharer) statePath(d *dirState) string {
	sum := hex.EncodeToString([]byte(d.Path))
	if len(sum) > 64 {
		sum = sum[:64]
	}
	return filepath.Join(s.opts.StateDir, "ovcache-"+sum+".json")
}

func (s *Sharer) loadState(d *dirState) error {
	if s.opts.StateDir == "" {
		return nil
	}
	f, err := os.Open(s.statePath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var st state
	if err := json.NewDecoder(io.LimitReader(f, 8<<20)).Decode(&st); err != nil {
		return err
	}
	for name, p := range st.Populated {
		if ovcache.ValidName(name) && len(d.populated) < maxRemembered {
			if c, err := cid.Decode(p.Blob); err == nil {
				p.rec = blobstore.Record{ModelID: name, Blob: c, Kind: ovcache.RecordKind}
				d.populated[name] = p
			}
		}
	}
	for name, b := range st.Rejected {
		if ovcache.ValidName(name) && len(d.rejected) < maxRemembered {
			d.rejected[name] = b
		}
	}
	if ovcache.ValidBuild(st.Learned) {
		d.learned = st.Learned
	}
	return nil
}

func (s *Sharer) saveState(d *dirState) {
	if s.opts.StateDir == "" {
		return
	}
	data, err := json.Marshal(state{Populated: d.populated, Rejected: d.rejected, Learned: d.learned})
	if err == nil {
		if err = os.MkdirAll(s.opts.StateDir, 0o750); err == nil {
			err = atomicfile.WriteFile(s.statePath(d), data, 0o640)
		}
	}
	if err != nil {
		s.log.Warn("cannot save the ovcache state", "dir", d.Path, "err", err)
	}
}

// Run watches, harvests and populates until ctx ends, then closes the directories.
func (s *Sharer) Run(ctx context.Context) error {
	s.running.Store(true)
	defer func() {
		for _, d := range s.dirs {
			d.root.Close()
		}
	}()
	dirty := make(chan struct{}, 1)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.log.Warn("no file watching; rescanning periodically only", "err", err)
	} else {
		defer w.Close()
		for _, d := range s.dirs {
			if err := w.Add(d.Path); err != nil {
				s.log.Warn("cannot watch a cache directory; rescanning it periodically", "dir", d.Path, "err", err)
			}
		}
		go func() {
			for {
				select {
				case _, ok := <-w.Events:
					if !ok {
						return
					}
					select {
					case dirty <- struct{}{}:
					default:
					}
				case err, ok := <-w.Errors:
					if !ok {
						return
					}
					s.log.Warn("file watch", "err", err)
				}
			}
		}()
	}
	records := make(chan struct{}, 1)
	if s.opts.OnRecord != nil {
		defer s.opts.OnRecord(func() {
			select {
			case records <- struct{}{}:
			default:
			}
		})()
	}
	tick := time.NewTicker(s.opts.Interval)
	defer tick.Stop()
	lastFull, event := time.Time{}, true
	for {
		full := event || time.Since(lastFull) >= s.opts.Rescan
		if full {
			lastFull = time.Now()
		}
		event = false
		for _, d := range s.dirs {
			if ctx.Err() != nil {
				return nil
			}
			s.pass(ctx, d, full)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-records:
			// A peer's record: populate now, at most every recordPace (a record flood costs no more than that).
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(recordPace):
			}
		case <-dirty:
			event = true
			// Let a burst of events settle a little before looking.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// pass looks at one directory once: notices removed populated entries, harvests stable new ones, and populates
// what peers announced. The directory is read when scan is set (a watch event, the periodic rescan) or while an
// entry waits to settle.
func (s *Sharer) pass(ctx context.Context, d *dirState, scan bool) {
	s.checkPopulated(ctx, d)
	if scan || len(d.looks) > 0 {
		s.scan(ctx, d)
	}
	s.populate(ctx, d)
}

// PassAll runs one pass over every directory (tests and the CLI).
func (s *Sharer) PassAll(ctx context.Context) {
	for _, d := range s.dirs {
		s.pass(ctx, d, true)
	}
}

func lookAt(fi fs.FileInfo) look {
	return look{size: fi.Size(), mtime: fi.ModTime(), at: time.Now(), ino: inode(fi)}
}

// checkPopulated remembers as rejected every populated entry that is gone or was replaced (OpenVINO removes what
// it cannot load and writes its own), tells the agent, and never writes that name again.
func (s *Sharer) checkPopulated(ctx context.Context, d *dirState) {
	changed := false
	for name, p := range d.populated {
		fi, err := d.root.Lstat(name)
		if err == nil && lookAt(fi).ino == p.Ino {
			continue
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		s.mu.Lock()
		pruned := d.pruned[name]
		delete(d.pruned, name)
		if pruned {
			delete(d.populated, name)
		}
		s.mu.Unlock()
		if pruned {
			changed = true
			continue // removed as stale by Prune, not by the application
		}
		s.log.Warn("the application removed an entry written here; not writing it again", "dir", d.Path, "entry", name, "blob", p.Blob)
		s.events.WithLabelValues("rejected").Inc()
		s.mu.Lock()
		delete(d.populated, name)
		s.mu.Unlock()
		if len(d.rejected) < maxRemembered {
			d.rejected[name] = p.Blob
		}
		if p.rec.Blob.Defined() {
			rec := p.rec
			if rec.ProfileID == "" {
				rec.ProfileID = d.key
			}
			s.opts.Agent.CacheEntryRejected(ctx, rec)
		}
		changed = true
	}
	if changed {
		s.saveState(d)
	}
}

// scan harvests every entry that is complete and stable: a valid name, a regular file (never a symlink, FIFO or
// device), unchanged (size, mtime, inode) across two looks at least Settle apart, and not one this daemon wrote.
func (s *Sharer) scan(ctx context.Context, d *dirState) {
	f, err := d.root.Open(".")
	if err != nil {
		s.log.Warn("cannot read a cache directory", "dir", d.Path, "err", err)
		return
	}
	names, err := f.Readdirnames(maxNames)
	f.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		s.log.Warn("cannot read a cache directory", "dir", d.Path, "err", err)
	}
	present := map[string]bool{}
	for _, name := range names {
		if ctx.Err() != nil {
			return
		}
		if !ovcache.ValidName(name) {
			continue
		}
		present[name] = true
		fi, err := d.root.Lstat(name)
		if err != nil {
			continue
		}
		if !fi.Mode().IsRegular() {
			if _, ok := d.done[name]; !ok {
				s.log.Warn("ignoring a cache entry that is not a regular file", "dir", d.Path, "entry", name, "mode", fi.Mode().String())
				d.done[name] = lookAt(fi)
			}
			continue
		}
		now := lookAt(fi)
		if p, ok := d.populated[name]; ok && p.Ino == now.ino {
			continue
		}
		if prev, ok := d.done[name]; ok && prev.same(now) {
			continue
		}
		prev, ok := d.looks[name]
		if !ok || !prev.same(now) {
			d.looks[name] = now
			continue
		}
		if time.Since(prev.at) < s.opts.Settle {
			continue
		}
		delete(d.looks, name)
		d.done[name] = now
		s.harvest(ctx, d, name, now)
	}
	for name := range d.looks {
		if !present[name] {
			delete(d.looks, name)
		}
	}
	for name := range d.done {
		if !present[name] {
			delete(d.done, name)
		}
	}
}

// harvest opens a stable entry without following links or blocking on a FIFO, checks it is still the file that
// was looked at, and hands it to the agent, which stores, re-checks and announces it.
func (s *Sharer) harvest(ctx context.Context, d *dirState, name string, l look) {
	if l.size > s.opts.MaxEntrySize {
		s.invalid(d, name, fmt.Errorf("%w: %d bytes, the limit is %d", ovcache.ErrTooLarge, l.size, s.opts.MaxEntrySize))
		return
	}
	f, err := d.root.OpenFile(name, os.O_RDONLY|oNoFollow|oNonBlock, 0)
	if err != nil {
		s.log.Debug("cannot open a cache entry", "dir", d.Path, "entry", name, "err", err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || !lookAt(fi).same(l) {
		return // replaced since the look; the next scan sees the new file
	}
	e, err := ovcache.Parse(f, l.size, s.opts.MaxEntrySize)
	if err != nil {
		s.invalid(d, name, err)
		return
	}
	s.learn(d, e.Build, l.mtime)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return
	}
	rec, err := s.opts.Agent.PutCacheEntry(ctx, name, d.build, f, l.size, s.opts.MaxEntrySize)
	if err != nil {
		if ctx.Err() == nil {
			s.invalid(d, name, err)
		}
		return
	}
	s.events.WithLabelValues("harvested").Inc()
	s.log.Info("harvested a cache entry", "dir", d.Path, "entry", name, "blob", rec.Blob, "key", rec.ProfileID, "bytes", rec.Size)
}

// learn takes the build string of an entry the application wrote here as the application's, unless the config
// fixes it: the newest entry's build wins, so an upgraded application is followed. A local user who can write the
// directory can mislead it only until the application writes its next entry, and only into populating nothing.
func (s *Sharer) learn(d *dirState, build string, mtime time.Time) {
	if d.Build != "" || mtime.Before(d.learnedAt) || !ovcache.ValidBuild(build) {
		return
	}
	d.learnedAt = mtime
	if build == d.build {
		return
	}
	s.log.Info("learnt the application's OpenVINO build from its cache", "dir", d.Path, "build", build, "was", d.build)
	s.mu.Lock()
	d.build, d.learned, d.key = build, build, ""
	s.mu.Unlock()
	s.saveState(d)
}

func (s *Sharer) invalid(d *dirState, name string, err error) {
	s.events.WithLabelValues("invalid").Inc()
	s.log.Warn("not sharing a cache entry", "dir", d.Path, "entry", name, "err", err)
}

// populate writes the entries peers announced for this directory's key that are not here, not rejected here and
// not backing off.
func (s *Sharer) populate(ctx context.Context, d *dirState) {
	if d.build == "" {
		return
	}
	if d.key == "" {
		k, err := s.opts.Agent.CacheKey(d.build)
		if err != nil {
			s.log.Warn("no cache key for this directory", "dir", d.Path, "err", err)
			return
		}
		d.key = k
	}
	recs, err := s.opts.Agent.CacheRecords(ctx, d.key)
	if err != nil {
		return
	}
	written := 0
	for _, r := range recs {
		if ctx.Err() != nil || written >= maxPopulatePerPass {
			return
		}
		name := r.ModelID
		if _, bad := d.rejected[name]; bad {
			continue
		}
		if _, ok := d.populated[name]; ok {
			continue
		}
		if b, ok := d.backoff[name]; ok && time.Now().Before(b.until) {
			continue
		}
		if _, err := d.root.Lstat(name); !errors.Is(err, fs.ErrNotExist) {
			continue // present (OpenVINO's, a hostile file, or ours): never overwritten
		}
		if err := s.write(ctx, d, r); err != nil {
			if ctx.Err() != nil {
				return
			}
			b := d.backoff[name]
			b.wait = min(max(2*b.wait, minBackoff), maxBackoff)
			b.until = time.Now().Add(b.wait)
			if len(d.backoff) < maxRemembered {
				d.backoff[name] = b
			}
			s.log.Warn("cannot populate a cache entry; backing off", "dir", d.Path, "entry", name, "blob", r.Blob, "retry_in", b.wait, "err", err)
			continue
		}
		delete(d.backoff, name)
		written++
	}
}

// write fetches and checks the entry's blob (the agent), then writes it under a hidden temporary name in the
// directory with the configured owner and mode, syncs it, and links it to its name, which fails if anything
// appeared there meanwhile: an existing entry is never replaced.
func (s *Sharer) write(ctx context.Context, d *dirState, r blobstore.Record) error {
	if err := s.opts.Agent.FetchCacheEntry(ctx, r, d.build, s.opts.MaxEntrySize); err != nil {
		return err
	}
	rd, release, err := s.opts.Agent.OpenCacheEntry(ctx, r.Blob)
	if err != nil {
		return err
	}
	defer release()
	defer rd.Close()
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := ".npu-agent-" + r.ModelID + ".tmp-" + hex.EncodeToString(rnd[:])
	f, err := d.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|oNoFollow, 0o200)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = d.root.Remove(tmp)
		}
	}()
	if _, err := io.Copy(f, rd); err != nil {
		return err
	}
	if d.SetOwner {
		if err := f.Chown(d.UID, d.GID); err != nil {
			return err
		}
	}
	if err := f.Chmod(d.Mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	ok = true
	defer func() { _ = d.root.Remove(tmp) }()
	if err := d.root.Link(tmp, r.ModelID); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // the application wrote it first: theirs stays
		}
		return err
	}
	if dir, err := d.root.Open("."); err == nil {
		_ = dir.Sync()
		dir.Close()
	}
	if len(d.populated) < maxRemembered {
		s.mu.Lock()
		d.populated[r.ModelID] = populated{Blob: r.Blob.String(), Ino: lookAt(fi).ino, rec: r}
		s.mu.Unlock()
		s.saveState(d)
	}
	s.events.WithLabelValues("populated").Inc()
	delay := time.Since(r.Created)
	s.spread.Observe(delay.Seconds())
	s.log.Info("populated a cache entry", "dir", d.Path, "entry", r.ModelID, "blob", r.Blob, "from", r.Producer, "since_record", delay)
	return nil
}
