package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// allocRegion is the unit a partial file is preallocated in as chunks arrive: the file takes disk space for what
// a fetch brings (give or take one region), not for what its manifest claims.
const allocRegion = 64 << 20

// BeginPartial records the manifest of a blob being fetched and creates its file, partial/<cid>, sparse at the
// blob's size. Calling it again (a resumed fetch, after a restart too) keeps the chunks already stored; for a
// complete blob it does nothing. It fails with ErrNoSpace if the whole blob would not fit on disk or is larger
// than Options.Quota.
func (s *Store) BeginPartial(ctx context.Context, m *blobstore.Manifest) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := m.Validate(); err != nil {
		return fmt.Errorf("begin partial: %w", err)
	}
	enc := m.Encode()
	d := sha256.Sum256(enc)
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.viewState(d)
	if err != nil || st != stateAbsent {
		return err
	}
	if q := s.opts.Quota; q > 0 && m.Size > q {
		return fmt.Errorf("begin partial %s: %w: the blob claims %d bytes, the store's quota is %d",
			blobstore.DigestCID(d), ErrNoSpace, m.Size, q)
	}
	if err := s.checkSpace(m.Size + uint64(len(enc))); err != nil {
		return fmt.Errorf("begin partial %s: %w", blobstore.DigestCID(d), err)
	}
	if err := createSparse(s.partialPath(d), int64(m.Size)); err != nil {
		return fmt.Errorf("begin partial %s: %w", blobstore.DigestCID(d), err)
	}
	return s.update(func(txn *badger.Txn) error {
		if err := txn.Set(key(prefixPartial, d), enc); err != nil {
			return err
		}
		return s.setAccess(txn, d, s.opts.now())
	})
}

// createSparse creates (or truncates) path as a sparse file of size bytes, mode 0600.
func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// PutChunk checks chunk i of a partial blob (length and sha2-256 against the manifest), writes it in place into
// the blob's file (pwrite at its offset, the file's region preallocated on first use) and records it with its
// CRC32C in one badger transaction. For a complete blob it only checks. Chunks are not synced one by one:
// every writebackEvery bytes the writer waits for the writeback started last time and starts the next (so the
// disk writes during the transfer and the writer slows to the disk's pace), and Commit syncs before the blob
// becomes visible.
func (s *Store) PutChunk(ctx context.Context, blob cid.Cid, i int, data []byte) error {
	return s.PutChunkSum(ctx, blob, i, data, sha256.Sum256(data))
}

var _ blobstore.ChunkSumPutter = (*Store)(nil)

// PutChunkSum is PutChunk for a caller that hashed data as it arrived: sum is sha2-256(data).
func (s *Store) PutChunkSum(ctx context.Context, blob cid.Cid, i int, data []byte, sum [32]byte) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	d, err := digestOf(blob)
	if err != nil {
		return err
	}
	m := s.cachedManifest(d)
	if m == nil {
		err = s.db.View(func(txn *badger.Txn) error {
			m, _, err = s.manifest(txn, d)
			return err
		})
		if err != nil {
			return fmt.Errorf("put chunk %d: %w", i, err)
		}
	}
	if i < 0 || i >= len(m.Chunks) {
		return fmt.Errorf("put chunk %d of %s: %w: it has %d chunks", i, blob, blobstore.ErrInvalidData, len(m.Chunks))
	}
	if len(data) != m.ChunkLen(i) {
		return fmt.Errorf("put chunk %d of %s: %w: %d bytes, want %d", i, blob, blobstore.ErrInvalidData, len(data), m.ChunkLen(i))
	}
	if sum != m.Chunks[i] {
		return fmt.Errorf("put chunk %d of %s: %w: want %s", i, blob, blobstore.ErrInvalidData, blobstore.ChunkCID(m.Chunks[i]))
	}
	crc := chunkCRC(data)
	st, err := s.writeChunk(d, m, i, data, crc)
	if err == nil && st == stateAbsent {
		err = fmt.Errorf("%w: deleted", blobstore.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("put chunk %d of %s: %w", i, blob, err)
	}
	return nil
}

// writeChunk writes a verified chunk into a partial blob's file and records it; it returns the blob's state (for
// a complete or absent blob it writes nothing).
func (s *Store) writeChunk(d [32]byte, m *blobstore.Manifest, i int, data []byte, crc uint32) (blobState, error) {
	s.filesMu.RLock()
	defer s.filesMu.RUnlock()
	st, err := s.viewState(d)
	if err != nil || st != statePartial {
		return st, err
	}
	if err := s.checkSpace(uint64(len(data))); err != nil {
		return st, err
	}
	p := s.fillOf(d)
	off := int64(m.ChunkOffset(i))
	var region func(*os.File)
	if r := int(off / allocRegion); p.allocate(r) {
		region = func(f *os.File) {
			preallocate(f, int64(r)*allocRegion, min(allocRegion, int64(m.Size)-int64(r)*allocRegion))
		}
	}
	if err := s.writeAt(s.partialPath(d), data, off, region, p); err != nil {
		return st, err
	}
	err = s.update(func(txn *badger.Txn) error {
		if st, err = s.state(txn, d); err != nil || st != statePartial {
			return err
		}
		return txn.Set(haveKey(d, i), encodeCRC(crc))
	})
	if err == nil && st == statePartial {
		p.stored(i, len(m.Chunks))
	}
	return st, err
}

// writebackEvery is how many bytes of a blob written in place through the page cache go between two
// throttleWriteback calls: the final fsync of a commit waits for at most about twice this (64 MiB at 250 MB/s would
// be a quarter of a second).
const writebackEvery = 16 << 20

// directAlign is the alignment direct I/O needs of a write's memory, offset and length (the device's logical block
// size: 512 or 4096 bytes here; 4096 serves both).
const directAlign = 4096

// writeAt writes a chunk's data at off of the partial file at path, running region (the preallocation) on the file
// first when it is not nil. The part of data that is aligned goes to the disk directly (O_DIRECT), the rest (an
// unaligned buffer, the last chunk's tail, a filesystem without direct I/O) through the page cache. Direct because
// a fetched blob is written once and not read back during the fetch (peers get a chunk still arriving from the
// receiver's memory, 6.7): through the page cache every byte is copied once more into pages allocated for it,
// which a small box's other files then lose, and on a VM whose host takes back free memory each such page costs
// a fault on the host (5-8 CPU-ns/B on the benchmark's VM, docs/benchmarks.md).
func (s *Store) writeAt(path string, data []byte, off int64, region func(*os.File), p *fill) error {
	n := 0
	if !s.noDirect.Load() && uintptr(unsafe.Pointer(unsafe.SliceData(data)))%directAlign == 0 && off%directAlign == 0 {
		n = len(data) &^ (directAlign - 1)
	}
	if n > 0 {
		err := s.writeDirect(path, data[:n], off, region)
		switch {
		case err == nil:
			region = nil
		case errors.Is(err, syscall.EINVAL) || errors.Is(err, errors.ErrUnsupported):
			// The filesystem refuses direct I/O (or this alignment): the page cache from now on.
			if !s.noDirect.Swap(true) {
				s.log.Info("blob store: the filesystem refuses direct writes; chunks go through the page cache",
					"dir", s.partDir, "err", err)
			}
			n = 0
		default:
			return err
		}
	}
	if n == len(data) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if region != nil {
		region(f)
	}
	if _, err := f.WriteAt(data[n:], off+int64(n)); err != nil {
		return err
	}
	if p.written.Add(int64(len(data)-n)) >= writebackEvery {
		p.written.Store(0)
		throttleWriteback(f)
	}
	return nil
}

// writeDirect writes aligned data at off of the file at path with direct I/O.
func (s *Store) writeDirect(path string, data []byte, off int64, region func(*os.File)) error {
	open := openDirect
	if s.opts.openDirect != nil {
		open = s.opts.openDirect
	}
	f, err := open(path)
	if err != nil {
		return err
	}
	if region != nil {
		region(f)
	}
	_, err = f.WriteAt(data, off)
	return errors.Join(err, f.Close())
}

// fill is the state kept in memory per partial blob being filled: the regions of its file already preallocated,
// the bytes written through the page cache since writeback last started, and which chunks this process stored
// (their bytes are on the disk or in the page cache since a pwrite that succeeded; Commit checks the others).
type fill struct {
	allocMu sync.Mutex
	alloc   map[int]bool
	mine    []bool
	written atomic.Int64
}

// stored records that this process stored chunk i of a blob of n chunks.
func (p *fill) stored(i, n int) {
	p.allocMu.Lock()
	defer p.allocMu.Unlock()
	if p.mine == nil {
		p.mine = make([]bool, n)
	}
	p.mine[i] = true
}

// earlier lists the chunks of a blob of n chunks that this process did not store.
func (p *fill) earlier(n int) []int {
	p.allocMu.Lock()
	defer p.allocMu.Unlock()
	var out []int
	for i := range n {
		if i >= len(p.mine) || !p.mine[i] {
			out = append(out, i)
		}
	}
	return out
}

// allocate reports whether region r still needs preallocating, and marks it done.
func (p *fill) allocate(r int) bool {
	p.allocMu.Lock()
	defer p.allocMu.Unlock()
	if p.alloc[r] {
		return false
	}
	if p.alloc == nil {
		p.alloc = map[int]bool{}
	}
	p.alloc[r] = true
	return true
}

func (s *Store) fillOf(d [32]byte) *fill {
	s.fillsMu.Lock()
	defer s.fillsMu.Unlock()
	p := s.fills[d]
	if p == nil {
		p = &fill{}
		s.fills[d] = p
	}
	return p
}

// dropFill forgets d's fill state: the blob was committed, put, deleted or quarantined.
func (s *Store) dropFill(d [32]byte) {
	s.fillsMu.Lock()
	delete(s.fills, d)
	s.fillsMu.Unlock()
}

// readChecked reads chunk i of m from f and checks it against its stored CRC32C: errChunkMissing if it is not
// stored, ErrInvalidData if the bytes do not match.
func (s *Store) readChecked(f *os.File, d [32]byte, m *blobstore.Manifest, i int, dst []byte) ([]byte, error) {
	var crc uint32
	var ok bool
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		crc, ok, err = storedCRC(txn, d, i)
		return err
	})
	if err != nil {
		return dst, err
	}
	if !ok {
		return dst, fmt.Errorf("%s: %w", chunkID(d, m, i), errChunkMissing)
	}
	return checkCRC(f, d, m, i, dst, crc)
}

func checkCRC(f *os.File, d [32]byte, m *blobstore.Manifest, i int, dst []byte, crc uint32) ([]byte, error) {
	start := len(dst)
	out, err := preadChunk(f, m, i, dst)
	if err != nil {
		return dst[:start], err
	}
	if chunkCRC(out[start:]) != crc {
		return dst[:start], fmt.Errorf("%w: %s does not match its checksum", blobstore.ErrInvalidData, chunkID(d, m, i))
	}
	return out, nil
}

func chunkID(d [32]byte, m *blobstore.Manifest, i int) string {
	return fmt.Sprintf("chunk %d (%s) of %s", i, blobstore.ChunkCID(m.Chunks[i]), blobstore.DigestCID(d))
}

// HaveChunks reports which chunks are stored, for a complete or partial blob.
func (s *Store) HaveChunks(ctx context.Context, blob cid.Cid) ([]bool, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	d, err := digestOf(blob)
	if err != nil {
		return nil, err
	}
	var have []bool
	err = s.db.View(func(txn *badger.Txn) error {
		m, st, err := s.manifest(txn, d)
		if err != nil {
			return err
		}
		if st == stateComplete {
			have = make([]bool, len(m.Chunks))
			for i := range have {
				have[i] = true
			}
			return nil
		}
		have, err = haveChunks(txn, d, m)
		return err
	})
	return have, err
}

// Commit makes a partial blob visible once every chunk is stored: PutChunk checked each against its digest in the
// manifest, and the manifest hashes to the CID, so every byte is fixed and nothing is hashed again (the manifest's
// whole-blob sha256 is its producer's claim, which Verify checks: docs/design.md 3.2). Chunks stored before this
// process started (a resumed fetch, a quarantined blob) are read back against their CRC32C, since a power loss
// may have kept a chunk's key and lost its bytes; a damaged one is dropped. Then, holding filesMu, it sets the
// file read-only, renames partial/<cid> to blobs/<cid> and swaps the partial key for the manifest key in one
// transaction that also marks the blob unsynced; the file and directories are synced in the background, and a
// blob still marked at the next Open is re-checked before it is served (durable.go, docs/design.md 3.5). A
// missing chunk gives ErrIncomplete, a damaged one ErrInvalidData (HaveChunks then asks for it again). Committing
// a complete blob does nothing.
func (s *Store) Commit(ctx context.Context, blob cid.Cid) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	d, err := digestOf(blob)
	if err != nil {
		return err
	}
	var m *blobstore.Manifest
	var st blobState
	var have []bool
	err = s.db.View(func(txn *badger.Txn) error {
		m, st, err = s.manifest(txn, d)
		if err == nil && st == statePartial {
			have, err = haveChunks(txn, d, m)
		}
		return err
	})
	if err != nil || st == stateComplete {
		return err
	}
	missing := 0
	for _, h := range have {
		if !h {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("commit %s: %w: %d of %d chunks missing", blob, blobstore.ErrIncomplete, missing, len(have))
	}
	if err := s.checkEarlier(ctx, d, m); err != nil {
		return fmt.Errorf("commit %s: %w", blob, err)
	}
	// Opened before the rename, so the background sync follows the file wherever it goes.
	f, err := os.Open(s.partialPath(d))
	if err != nil {
		return fmt.Errorf("commit %s: %w", blob, err)
	}
	seq, err := s.publishPartial(d, m)
	if err != nil || seq == nil {
		f.Close()
		if err != nil {
			return fmt.Errorf("commit %s: %w", blob, err)
		}
		return nil
	}
	s.dropFill(d)
	s.syncLater(d, f, seq)
	return nil
}

// publishPartial is Commit's visible step, holding filesMu: it sets the file read-only, renames it to blobs/<cid>
// and swaps the partial key for the manifest key, with the blob's check stamp and its unsynced marker, in one
// transaction. Nothing here waits for the disk (syncLater does): a crash before the sync leaves the marker, and
// Open re-checks the blob (durable.go). It returns the marker's value, or nil if the blob was complete already.
func (s *Store) publishPartial(d [32]byte, m *blobstore.Manifest) ([]byte, error) {
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.viewState(d)
	if err != nil || st == stateComplete {
		return nil, err
	}
	if st == stateAbsent {
		return nil, fmt.Errorf("%w: deleted during commit", blobstore.ErrNotFound)
	}
	if err := os.Chmod(s.partialPath(d), 0o444); err != nil {
		return nil, err
	}
	if err := os.Rename(s.partialPath(d), s.blobPath(d)); err != nil {
		return nil, errors.Join(err, os.Chmod(s.partialPath(d), 0o600)) // PutChunk may write it again
	}
	now := s.opts.now()
	seq := commitSeq(now)
	err = s.update(func(txn *badger.Txn) error {
		if err := txn.Set(key(prefixManifest, d), m.Encode()); err != nil {
			return err
		}
		if err := setStamp(txn, d, s.blobPath(d), now); err != nil { // every chunk was checked on arrival
			return err
		}
		if err := txn.Set(key(prefixUnsynced, d), seq); err != nil {
			return err
		}
		return txn.Delete(key(prefixPartial, d))
	})
	if err != nil {
		// Keys unchanged: put the file back where they say it is (Open does it too after a crash).
		return nil, errors.Join(err, os.Rename(s.blobPath(d), s.partialPath(d)), os.Chmod(s.partialPath(d), 0o600))
	}
	return seq, nil
}

// moveFile sets from's mode and renames it to to, then syncs both directories.
func (s *Store) moveFile(from, to string, mode os.FileMode) error {
	if err := os.Chmod(from, mode); err != nil {
		return err
	}
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return errors.Join(atomicfile.SyncDir(s.blobDir), atomicfile.SyncDir(s.partDir))
}

// checkEarlier reads back the chunks of partial blob d that this process did not store and checks them against
// their CRC32C (no re-hash: each matched its digest when it was stored); a damaged one loses its key.
func (s *Store) checkEarlier(ctx context.Context, d [32]byte, m *blobstore.Manifest) error {
	idx := s.fillOf(d).earlier(len(m.Chunks))
	if len(idx) == 0 {
		return ctx.Err()
	}
	f, _, st, err := s.openBlob(d)
	if err != nil {
		return err
	}
	defer f.Close()
	if st != statePartial {
		return nil // committed or put meanwhile
	}
	buf := s.getBuf()
	defer s.putBuf(buf)
	for _, i := range idx {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := s.readChecked(f, d, m, i, (*buf)[:0]); err != nil {
			return s.quarantine(d, m, i, err) // for a partial blob: drops the chunk's key
		}
	}
	return nil
}
