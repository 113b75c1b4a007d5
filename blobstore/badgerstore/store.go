// Package badgerstore implements blobstore.Store: blob bytes live once, one file per blob (blobs/<cid>, or
// partial/<cid> while a fetch fills it), and an embedded badger v4 database keeps what a database is for —
// manifests, which chunks are stored (with a CRC32C each), records, pins and access times.
//
// The layout, visibility rule, partial state, pins, gc, verify and the migration from the layout that kept chunks
// in badger are normative in docs/design.md 3.3+.
package badgerstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// ErrClosed is returned by every method once Close has begun.
var ErrClosed = errors.New("blob store closed")

// ErrNoSpace is returned (wrapped) when a write would leave less free disk space than Options.MinFreeSpace.
// Nothing is written in that case, so the store stays consistent and opens and verifies afterwards.
var ErrNoSpace = errors.New("not enough free disk space")

// Key prefixes (docs/design.md 3.3). Every key but keyVersion and keyFlush is a prefix byte plus a 32-byte digest,
// except records, which are variable-length.
const (
	prefixChunkV1  = 'c' // layout 1 only: c + chunk digest → chunk bytes (migration reads them, cleanup drops them)
	prefixHave     = 'k' // k + blob digest + chunk index (uint32 big-endian) → CRC32C of the stored chunk
	prefixManifest = 'm' // m + blob digest → encoded manifest of a complete, visible blob
	prefixPartial  = 'p' // p + blob digest → encoded manifest of a partial blob (a fetch in progress)
	prefixAccess   = 'a' // a + blob digest → last access, unix nanoseconds, 8 bytes big-endian
	prefixPin      = 'n' // n + blob digest → empty: the blob is pinned
	prefixRecord   = 'r' // r + model + profile + blob digest + fingerprint digest → record JSON
	prefixChecked  = 's' // s + blob digest → check stamp of a complete blob: checked-at unix ns, fileID (checked.go)
	prefixUnsynced = 'u' // u + blob digest → commit time, unix ns: committed, file not yet synced (durable.go)
)

var (
	keyVersion = []byte("v")      // store layout version
	keyFlush   = []byte("zflush") // written and dropped to force badger to flush its memtable (reclaim)
)

const (
	layoutVersion   = "npu-agent blobstore 2"
	layoutVersionV1 = "npu-agent blobstore 1" // chunks in badger; Open migrates it
)

// Subdirectories of the store directory holding blob files.
const (
	dirBlobs   = "blobs"   // complete blobs, mode 0444: the file a loader opens
	dirPartial = "partial" // partial blobs, written in place as chunks arrive
	dirTmp     = "tmp"     // Puts in progress (unnamed where the filesystem allows)
)

// Tuning. Chunks are 1 MiB values: they go to the value log, and the LSM tree holds only keys and pointers, so
// memtables and caches can be small (this runs on edge machines).
const (
	valueThreshold   = 1 << 10   // values above 1 KiB (chunks, manifests) go to the value log
	memTableSize     = 16 << 20  // keys and value pointers only; 16 MiB holds ~200k entries
	numMemtables     = 2         // one active, one flushing
	blockCacheSize   = 16 << 20  // LSM blocks; values are read straight from the mmapped value log
	defaultVlogSize  = 128 << 20 // value-log GC rewrites whole files: smaller files reclaim sooner
	defaultMinFree   = 256 << 20 // headroom for badger's memtables and tables, and for reclaim
	reclaimReserve   = 32 << 20  // what reclaim leaves free: two memtables' worth of LSM tables
	putBuffers       = 16        // chunks in flight per Put (16 MiB)
	putBatch         = 8         // chunks per badger transaction in Put
	readWindow       = 4         // chunks read ahead and verified in parallel by a reader
	accessResolution = time.Minute
	maxRecordSize    = 64 << 10
	maxIDLen         = 1024
)

// Options tune a Store. The zero value is usable.
type Options struct {
	// Logger receives the store's and badger's logs; badger's info and debug messages are logged at debug level.
	// nil means slog.Default().
	Logger *slog.Logger
	// ValueLogFileSize is the size of one badger value-log file; 0 means 128 MiB.
	ValueLogFileSize int64
	// MinFreeSpace is the free disk space every write leaves; 0 means 256 MiB. Badger writes through mmap, where
	// a full disk is a crash (SIGBUS) rather than an error, so the store refuses writes before that point. It
	// must be at least half a value-log file plus 64 MiB: the room gc needs to give space back on a full disk.
	MinFreeSpace uint64
	// Quota is the store's size limit (config store.quota) if the store is to know it; 0 means none. A fetch
	// (BeginPartial) of a blob larger than the quota is refused before anything is written: gc could never keep
	// it, and a hostile record claiming a huge blob must not cost the blobs the store holds.
	Quota uint64

	now        func() time.Time                    // tests
	syncHook   func(d [32]byte)                    // tests: runs before a committed blob's background sync
	freeSpace  func(dir string) (uint64, error)    // tests
	openDirect func(path string) (*os.File, error) // tests: opens a partial file for direct writes
}

// Store is a blobstore.Store on badger. Create it with Open.
type Store struct {
	db   *badger.DB
	dir  string
	log  *slog.Logger
	opts Options

	blobDir, partDir, tmpDir string

	// mu serialises metadata changes (manifests, pins, records, deletes).
	mu sync.Mutex
	// filesMu is held exclusively while a blob file moves between partial/ and blobs/ together with its state
	// (Commit, quarantine, Put publishing), and shared while a file is opened by its state (reads, PutChunk), so
	// that nobody opens a file by a state that is changing. Taken before mu, never after.
	filesMu sync.RWMutex

	// gate is held shared by every write and exclusively while reclaim makes badger flush its memtable, during
	// which badger refuses writes.
	gate      sync.RWMutex
	reclaimMu sync.Mutex

	accMu  sync.Mutex
	access map[[32]byte]accessTimes

	manMu     sync.Mutex
	manifests map[[32]byte]*blobstore.Manifest
	manBytes  int

	fillsMu sync.Mutex
	fills   map[[32]byte]*fill // per partial blob being filled: preallocation, writeback
	// noDirect is set once the filesystem refused a direct write (writeAt): chunks then go through the page cache.
	noDirect atomic.Bool

	readersMu sync.Mutex
	readers   map[[32]byte]int // open Readers per blob; gc skips them

	bufs sync.Pool // *[]byte of ChunkSize

	syncs    sync.WaitGroup // background syncs of committed blobs (durable.go)
	syncMu   sync.Mutex     // guards dbClosed
	dbClosed bool           // Close stopped waiting for the syncs: they leave badger alone

	opMu    sync.Mutex
	opCond  *sync.Cond
	ops     int
	closed  bool
	bg      chan struct{} // wakes the background reclaimer
	bgDone  chan struct{}
	bgClose chan struct{}
}

type accessTimes struct{ last, persisted time.Time }

var _ blobstore.Store = (*Store)(nil)

// Open opens (creating if needed) the store in dir. It removes what interrupted puts and deletes left behind.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ValueLogFileSize == 0 {
		opts.ValueLogFileSize = defaultVlogSize
	}
	if opts.MinFreeSpace == 0 {
		opts.MinFreeSpace = defaultMinFree
	}
	// Deletes, the memtable and access times are written past the guard, so gc needs a reserve more than
	// reclaimRoom to start on a full disk.
	if need := reclaimRoom(opts.ValueLogFileSize) + reclaimReserve; opts.MinFreeSpace < need {
		return nil, fmt.Errorf("blob store: min free space of %d bytes is below the %d that gc needs to free a full disk (half a value-log file plus %d)",
			opts.MinFreeSpace, need, 2*reclaimReserve)
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	if opts.freeSpace == nil {
		opts.freeSpace = freeSpace
	}
	// The directory is group-readable, like the data directory: loaders (members of the API socket's group) open
	// blobs/<cid> themselves. Partial and temporary files stay private.
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	for _, sub := range []struct {
		name string
		mode os.FileMode
	}{{dirBlobs, 0o750}, {dirPartial, 0o700}, {dirTmp, 0o700}} {
		if err := os.MkdirAll(filepath.Join(dir, sub.name), sub.mode); err != nil {
			return nil, fmt.Errorf("blob store: %w", err)
		}
	}
	bopts := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{opts.Logger.With("component", "badger")}).
		WithValueThreshold(valueThreshold).
		WithVerifyValueChecksum(true). // ServeChunk relies on it; CRC32C costs ~0.06 ns/B against sha256's ~0.9
		WithMemTableSize(memTableSize).
		WithNumMemtables(numMemtables).
		WithBlockCacheSize(blockCacheSize).
		WithIndexCacheSize(0).
		WithValueLogFileSize(opts.ValueLogFileSize).
		WithNumVersionsToKeep(1).
		WithNumCompactors(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithCompression(options.None). // chunks are not in the LSM; compiled blobs compress poorly anyway
		WithMetricsEnabled(false)
	db, err := badger.Open(bopts)
	if err != nil {
		return nil, fmt.Errorf("blob store: open badger in %s: %w", dir, err)
	}
	s := &Store{
		db:        db,
		dir:       dir,
		blobDir:   filepath.Join(dir, dirBlobs),
		partDir:   filepath.Join(dir, dirPartial),
		tmpDir:    filepath.Join(dir, dirTmp),
		log:       opts.Logger,
		opts:      opts,
		access:    map[[32]byte]accessTimes{},
		manifests: map[[32]byte]*blobstore.Manifest{},
		fills:     map[[32]byte]*fill{},
		readers:   map[[32]byte]int{},
		bg:        make(chan struct{}, 1),
		bgDone:    make(chan struct{}),
		bgClose:   make(chan struct{}),
	}
	s.opCond = sync.NewCond(&s.opMu)
	s.bufs.New = func() any { b := make([]byte, blobstore.ChunkSize); return &b }
	v1, err := s.checkVersion()
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	if v1 {
		if err := s.migrate(); err != nil {
			return nil, errors.Join(fmt.Errorf("blob store: migrate %s to the file-per-blob layout: %w", dir, err), db.Close())
		}
	}
	if err := s.recoverUnsynced(); err != nil {
		return nil, errors.Join(fmt.Errorf("blob store: %w", err), db.Close())
	}
	removed, err := s.cleanup()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("blob store: clean up leftovers: %w", err), db.Close())
	}
	go s.background()
	if removed > 0 {
		s.log.Info("blob store: removed leftovers of interrupted writes", "keys_and_files", removed)
		s.kickReclaim()
	}
	return s, nil
}

// checkVersion writes the layout version into a new store and reports whether an existing one has the old
// layout (chunks in badger), which Open then migrates.
func (s *Store) checkVersion() (v1 bool, err error) {
	err = s.update(func(txn *badger.Txn) error {
		item, err := txn.Get(keyVersion)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return txn.Set(keyVersion, []byte(layoutVersion))
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			switch string(v) {
			case layoutVersion:
			case layoutVersionV1:
				v1 = true
			default:
				return fmt.Errorf("blob store: %s holds layout %q, this version reads %q", s.dir, v, layoutVersion)
			}
			return nil
		})
	})
	return v1, err
}

// Close flushes access times and closes badger. It waits for running calls; open Readers fail afterwards.
func (s *Store) Close() error {
	s.opMu.Lock()
	if s.closed {
		s.opMu.Unlock()
		return nil
	}
	s.closed = true
	for s.ops > 0 {
		s.opCond.Wait()
	}
	s.opMu.Unlock()
	s.waitSyncs()
	close(s.bgClose)
	<-s.bgDone
	err := s.flushAccess()
	return errors.Join(err, s.db.Close())
}

// enter registers a running call so Close waits for it; every enter is paired with leave.
func (s *Store) enter() error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.ops++
	return nil
}

func (s *Store) isClosed() bool {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	return s.closed
}

func (s *Store) leave() {
	s.opMu.Lock()
	s.ops--
	if s.ops == 0 {
		s.opCond.Broadcast()
	}
	s.opMu.Unlock()
}

// update runs a read-write transaction while holding the write gate.
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	s.gate.RLock()
	defer s.gate.RUnlock()
	return s.db.Update(fn)
}

func key(prefix byte, d [32]byte) []byte {
	k := make([]byte, 33)
	k[0] = prefix
	copy(k[1:], d[:])
	return k
}

func digestOf(c cid.Cid) ([32]byte, error) {
	d, err := blobstore.Digest(c)
	if err != nil {
		return d, fmt.Errorf("%w: %w", blobstore.ErrNotFound, err)
	}
	return d, nil
}

// checkSpace fails with ErrNoSpace unless n more bytes leave MinFreeSpace free.
func (s *Store) checkSpace(n uint64) error { return s.checkSpaceReserve(n, s.opts.MinFreeSpace) }

// checkSpaceReserve fails with ErrNoSpace unless n more bytes leave reserve bytes free.
func (s *Store) checkSpaceReserve(n, reserve uint64) error {
	free, err := s.opts.freeSpace(s.dir)
	if err != nil {
		return fmt.Errorf("blob store: free space of %s: %w", s.dir, err)
	}
	if free < n+reserve {
		return fmt.Errorf("%w in %s: writing %d bytes would leave %d of the %d bytes kept free",
			ErrNoSpace, s.dir, n, int64(free)-int64(n), reserve)
	}
	return nil
}

// blobState is what the keys say about a blob.
type blobState int

const (
	stateAbsent blobState = iota
	statePartial
	stateComplete
)

// viewState is state in a read transaction of its own.
func (s *Store) viewState(d [32]byte) (st blobState, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		st, err = s.state(txn, d)
		return err
	})
	return st, err
}

// viewManifest is manifest in a read transaction of its own.
func (s *Store) viewManifest(d [32]byte) (m *blobstore.Manifest, st blobState, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		m, st, err = s.manifest(txn, d)
		return err
	})
	return m, st, err
}

func (s *Store) state(txn *badger.Txn, d [32]byte) (blobState, error) {
	for _, st := range []struct {
		prefix byte
		state  blobState
	}{{prefixManifest, stateComplete}, {prefixPartial, statePartial}} {
		_, err := txn.Get(key(st.prefix, d))
		if err == nil {
			return st.state, nil
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return stateAbsent, err
		}
	}
	return stateAbsent, nil
}

// manifest loads a blob's manifest (complete or partial) and its state; the manifest is shared, do not modify it.
func (s *Store) manifest(txn *badger.Txn, d [32]byte) (*blobstore.Manifest, blobState, error) {
	st, err := s.state(txn, d)
	if err != nil {
		return nil, stateAbsent, err
	}
	if st == stateAbsent {
		return nil, stateAbsent, fmt.Errorf("%w: %s", blobstore.ErrNotFound, blobstore.DigestCID(d))
	}
	if m := s.cachedManifest(d); m != nil {
		return m, st, nil
	}
	prefix := byte(prefixManifest)
	if st == statePartial {
		prefix = prefixPartial
	}
	item, err := txn.Get(key(prefix, d))
	if err != nil {
		return nil, stateAbsent, fmt.Errorf("read manifest of %s: %w", blobstore.DigestCID(d), err)
	}
	if item.ValueSize() > blobstore.MaxManifestSize {
		return nil, stateAbsent, fmt.Errorf("%w: manifest of %s is %d bytes", blobstore.ErrInvalidData, blobstore.DigestCID(d), item.ValueSize())
	}
	var m *blobstore.Manifest
	err = item.Value(func(v []byte) error {
		if sha256.Sum256(v) != d {
			return fmt.Errorf("%w: stored manifest of %s", blobstore.ErrInvalidData, blobstore.DigestCID(d))
		}
		m, err = blobstore.DecodeManifest(v)
		return err
	})
	if err != nil {
		return nil, stateAbsent, err
	}
	s.cacheManifest(d, m)
	return m, st, nil
}

// cachedManifest returns d's manifest if it is cached, else nil. The blob may have been deleted since.
func (s *Store) cachedManifest(d [32]byte) *blobstore.Manifest {
	s.manMu.Lock()
	defer s.manMu.Unlock()
	return s.manifests[d]
}

// cacheManifest keeps decoded manifests (immutable: content-addressed) for the per-chunk calls of a fetch.
func (s *Store) cacheManifest(d [32]byte, m *blobstore.Manifest) {
	const maxBytes = 8 << 20
	s.manMu.Lock()
	defer s.manMu.Unlock()
	if s.manBytes+32*len(m.Chunks) > maxBytes {
		clear(s.manifests)
		s.manBytes = 0
	}
	s.manifests[d] = m
	s.manBytes += 32 * len(m.Chunks)
}

// isCorrupt reports an error that means stored bytes are damaged, as opposed to an I/O or badger failure.
func isCorrupt(err error) bool {
	return errors.Is(err, blobstore.ErrInvalidData) || errors.Is(err, blobstore.ErrInvalidManifest)
}

func cloneManifest(m *blobstore.Manifest) *blobstore.Manifest {
	c := *m
	c.Chunks = append([][32]byte(nil), m.Chunks...)
	return &c
}

// Has reports whether a complete blob is stored.
func (s *Store) Has(ctx context.Context, c cid.Cid) (bool, error) {
	if err := s.enter(); err != nil {
		return false, err
	}
	defer s.leave()
	d, err := blobstore.Digest(c)
	if err != nil {
		return false, nil
	}
	st, err := s.viewState(d)
	return st == stateComplete, err
}

// Manifest returns a copy of the manifest of a complete or partial blob.
func (s *Store) Manifest(ctx context.Context, c cid.Cid) (*blobstore.Manifest, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return nil, err
	}
	var m *blobstore.Manifest
	err = s.db.View(func(txn *badger.Txn) error {
		m, _, err = s.manifest(txn, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	return cloneManifest(m), nil
}

// Stat describes a complete or partial blob.
func (s *Store) Stat(ctx context.Context, c cid.Cid) (blobstore.Info, error) {
	if err := s.enter(); err != nil {
		return blobstore.Info{}, err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return blobstore.Info{}, err
	}
	var info blobstore.Info
	err = s.db.View(func(txn *badger.Txn) error {
		info, err = s.info(txn, d)
		return err
	})
	return info, err
}

func (s *Store) info(txn *badger.Txn, d [32]byte) (blobstore.Info, error) {
	m, st, err := s.manifest(txn, d)
	if err != nil {
		return blobstore.Info{}, err
	}
	info := blobstore.Info{
		CID:      blobstore.DigestCID(d),
		Size:     m.Size,
		SHA256:   fmt.Sprintf("%x", m.SHA256),
		Complete: st == stateComplete,
		Chunks:   len(m.Chunks),
	}
	if info.Complete {
		info.HaveChunks = len(m.Chunks)
	} else {
		have, err := haveChunks(txn, d, m)
		if err != nil {
			return blobstore.Info{}, err
		}
		for _, h := range have {
			if h {
				info.HaveChunks++
			}
		}
	}
	if _, err := txn.Get(key(prefixPin, d)); err == nil {
		info.Pinned = true
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return blobstore.Info{}, err
	}
	info.LastAccess, err = s.lastAccess(txn, d)
	return info, err
}

// List describes every blob, complete and partial, complete ones first, each group in key order.
func (s *Store) List(ctx context.Context) ([]blobstore.Info, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	var infos []blobstore.Info
	err := s.db.View(func(txn *badger.Txn) error {
		for _, prefix := range []byte{prefixManifest, prefixPartial} {
			for _, d := range digestKeys(txn, prefix) {
				if err := ctx.Err(); err != nil {
					return err
				}
				info, err := s.info(txn, d)
				if isCorrupt(err) {
					s.log.Warn("blob store: list: skipping a blob with a corrupt manifest (see verify)", "blob", blobstore.DigestCID(d), "err", err)
					continue
				}
				if err != nil {
					return err
				}
				infos = append(infos, info)
			}
		}
		return nil
	})
	return infos, err
}

// digestKeys lists the digests of the keys with this one-byte prefix.
func digestKeys(txn *badger.Txn, prefix byte) [][32]byte {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
	defer it.Close()
	var ds [][32]byte
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 33 {
			continue // not ours; never written by this version
		}
		ds = append(ds, [32]byte(k[1:]))
	}
	return ds
}

// Pin or unpin a complete or partial blob.
func (s *Store) Pin(ctx context.Context, c cid.Cid, pinned bool) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update(func(txn *badger.Txn) error {
		st, err := s.state(txn, d)
		if err != nil {
			return err
		}
		if st == stateAbsent {
			return fmt.Errorf("pin %s: %w", c, blobstore.ErrNotFound)
		}
		if pinned {
			return txn.Set(key(prefixPin, d), nil)
		}
		return txn.Delete(key(prefixPin, d))
	})
}

// Delete removes a blob, complete or partial, with its pin state, access time and records; ErrPinned if pinned.
func (s *Store) Delete(ctx context.Context, c cid.Cid) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.deleteLocked(d, true); err != nil {
		return err
	}
	s.kickReclaim()
	return nil
}

// deleteLocked removes a blob's keys and then its chunks no other blob uses; s.mu must be held. It returns the
// blob's size.
func (s *Store) deleteLocked(d [32]byte, checkPin bool) (uint64, error) {
	var m *blobstore.Manifest
	err := s.update(func(txn *badger.Txn) error {
		var err error
		m, _, err = s.manifest(txn, d)
		if isCorrupt(err) {
			// The blob's keys still go; its chunks are found by a full sweep below.
			s.log.Warn("blob store: deleting a blob with a corrupt manifest", "blob", blobstore.DigestCID(d), "err", err)
			m, err = nil, nil
		}
		if err != nil {
			return err
		}
		if checkPin {
			if _, err := txn.Get(key(prefixPin, d)); err == nil {
				return fmt.Errorf("delete %s: %w", blobstore.DigestCID(d), blobstore.ErrPinned)
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
		}
		for _, prefix := range []byte{prefixManifest, prefixPartial, prefixAccess, prefixPin, prefixChecked, prefixUnsynced} {
			if err := txn.Delete(key(prefix, d)); err != nil {
				return err
			}
		}
		for _, k := range recordKeysOf(txn, d) {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	s.accMu.Lock()
	delete(s.access, d)
	s.accMu.Unlock()
	s.dropFill(d)
	var size uint64
	if m != nil {
		size = m.Size
	}
	// The blob is gone once its keys are; its chunk keys and files go now, or at the next Open after a crash.
	err = s.deletePrefix(key(prefixHave, d))
	for _, p := range []string{s.blobPath(d), s.partialPath(d)} {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("delete %s: blob removed, its file or chunk keys not yet: %w", blobstore.DigestCID(d), err)
	}
	return size, nil
}

// Touch records an access to a blob for LRU gc. It is cheap: the time is kept in memory and written to disk at
// most once per minute per blob (and at Close).
func (s *Store) Touch(ctx context.Context, c cid.Cid) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return err
	}
	st, err := s.viewState(d)
	if err != nil {
		return err
	}
	if st == stateAbsent {
		return fmt.Errorf("touch %s: %w", c, blobstore.ErrNotFound)
	}
	return s.touch(d)
}

// touch updates the in-memory access time and persists it when the stored one is older than accessResolution.
func (s *Store) touch(d [32]byte) error {
	now := s.opts.now()
	s.accMu.Lock()
	a := s.access[d]
	a.last = now
	persist := now.Sub(a.persisted) >= accessResolution
	s.access[d] = a
	s.accMu.Unlock()
	if !persist {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.update(func(txn *badger.Txn) error {
		st, err := s.state(txn, d)
		if err != nil || st == stateAbsent {
			return err // deleted meanwhile: write nothing
		}
		return txn.Set(key(prefixAccess, d), encodeTime(now))
	})
	if err != nil {
		return fmt.Errorf("record access to %s: %w", blobstore.DigestCID(d), err)
	}
	s.accMu.Lock()
	if a, ok := s.access[d]; ok && a.persisted.Before(now) {
		a.persisted = now
		s.access[d] = a
	}
	s.accMu.Unlock()
	return nil
}

// setAccess records a fresh write (put, begin partial) as persisted at now; txn writes the key.
func (s *Store) setAccess(txn *badger.Txn, d [32]byte, now time.Time) error {
	if err := txn.Set(key(prefixAccess, d), encodeTime(now)); err != nil {
		return err
	}
	s.accMu.Lock()
	s.access[d] = accessTimes{last: now, persisted: now}
	s.accMu.Unlock()
	return nil
}

func (s *Store) lastAccess(txn *badger.Txn, d [32]byte) (time.Time, error) {
	s.accMu.Lock()
	a, ok := s.access[d]
	s.accMu.Unlock()
	if ok && !a.last.IsZero() {
		return a.last, nil
	}
	item, err := txn.Get(key(prefixAccess, d))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	var t time.Time
	err = item.Value(func(v []byte) error {
		t, err = decodeTime(v)
		return err
	})
	return t, err
}

// flushAccess writes the access times not yet on disk.
func (s *Store) flushAccess() error {
	s.accMu.Lock()
	pending := map[[32]byte]time.Time{}
	for d, a := range s.access {
		if a.last.After(a.persisted) {
			pending[d] = a.last
		}
	}
	s.accMu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update(func(txn *badger.Txn) error {
		for d, t := range pending {
			st, err := s.state(txn, d)
			if err != nil {
				return err
			}
			if st != stateAbsent {
				if err := txn.Set(key(prefixAccess, d), encodeTime(t)); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func encodeTime(t time.Time) []byte { return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano())) }

func decodeTime(b []byte) (time.Time, error) {
	if len(b) != 8 {
		return time.Time{}, fmt.Errorf("%w: access time of %d bytes", blobstore.ErrInvalidData, len(b))
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b))), nil
}

func (s *Store) getBuf() *[]byte { return s.bufs.Get().(*[]byte) }

func (s *Store) putBuf(b *[]byte) { s.bufs.Put(b) }
