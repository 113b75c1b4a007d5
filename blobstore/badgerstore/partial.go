package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"maps"
	"os"
	"sync"
	"sync/atomic"

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
	if sha256.Sum256(data) != m.Chunks[i] {
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
	if st == statePartial {
		s.advancePrefix(ctx, d, m, i, data)
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
	f, err := os.OpenFile(s.partialPath(d), os.O_WRONLY, 0)
	if err != nil {
		return st, err
	}
	defer f.Close()
	p := s.prefixOf(d)
	off := int64(m.ChunkOffset(i))
	if r := int(off / allocRegion); p.allocate(r) {
		preallocate(f, int64(r)*allocRegion, min(allocRegion, int64(m.Size)-int64(r)*allocRegion))
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return st, err
	}
	if p.written.Add(int64(len(data))) >= writebackEvery {
		p.written.Store(0)
		throttleWriteback(f)
	}
	err = s.update(func(txn *badger.Txn) error {
		if st, err = s.state(txn, d); err != nil || st != statePartial {
			return err
		}
		return txn.Set(haveKey(d, i), encodeCRC(crc))
	})
	return st, err
}

// writebackEvery is how many bytes of a blob written in place go between two throttleWriteback calls: the final
// fsync of a commit waits for at most about twice this (64 MiB at 250 MB/s would be a quarter of a second).
const writebackEvery = 16 << 20

// prefixHash is the state kept in memory per partial blob being filled: the whole-blob sha256 of its leading
// chunks (so that Commit has only the tail left to hash; chunks go in as PutChunk verified them when they arrive
// in order, else read back from the file), the regions of its file already preallocated, and the bytes written
// since writeback last started.
type prefixHash struct {
	mu   sync.Mutex
	h    hash.Hash
	next int // chunks [0, next) are in h

	allocMu sync.Mutex
	alloc   map[int]bool
	written atomic.Int64
}

// allocate reports whether region r still needs preallocating, and marks it done.
func (p *prefixHash) allocate(r int) bool {
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

func (s *Store) prefixOf(d [32]byte) *prefixHash {
	s.prefixMu.Lock()
	defer s.prefixMu.Unlock()
	p := s.prefixes[d]
	if p == nil {
		p = &prefixHash{h: sha256.New()}
		s.prefixes[d] = p
	}
	return p
}

// dropPrefix forgets d's prefix hash: the blob was committed, put or deleted, or its hash did not match.
func (s *Store) dropPrefix(d [32]byte) {
	s.prefixMu.Lock()
	delete(s.prefixes, d)
	s.prefixMu.Unlock()
}

// resetPrefix starts d's whole-blob hash afresh (a chunk hashed into it may be bad), keeping the rest.
func (s *Store) resetPrefix(d [32]byte) {
	s.prefixMu.Lock()
	if p := s.prefixes[d]; p != nil {
		p.allocMu.Lock()
		np := &prefixHash{h: sha256.New(), alloc: maps.Clone(p.alloc)}
		p.allocMu.Unlock()
		s.prefixes[d] = np
	}
	s.prefixMu.Unlock()
}

// advancePrefix adds chunk i (data, just stored and verified) to d's prefix hash if it is next, then the stored
// chunks that follow. One caller works at a time; the others return at once, and what they stored is picked up
// by the next call or by Commit. Errors are left to Commit.
func (s *Store) advancePrefix(ctx context.Context, d [32]byte, m *blobstore.Manifest, i int, data []byte) {
	p := s.prefixOf(d)
	if !p.mu.TryLock() {
		return
	}
	defer p.mu.Unlock()
	if p.next == i {
		p.h.Write(data)
		p.next++
	}
	_ = p.advance(ctx, s, d, m)
}

// advance hashes stored chunks into p, read back from the file and checked against their CRC32C, until one is
// missing (errChunkMissing) or damaged (ErrInvalidData); p.mu must be held.
func (p *prefixHash) advance(ctx context.Context, s *Store, d [32]byte, m *blobstore.Manifest) error {
	if p.next >= len(m.Chunks) {
		return nil
	}
	f, _, st, err := s.openBlob(d)
	if err != nil {
		return err
	}
	defer f.Close()
	if st != statePartial {
		return fmt.Errorf("%w: %s is no longer partial", errChunkMissing, blobstore.DigestCID(d))
	}
	buf := s.getBuf()
	defer s.putBuf(buf)
	for ; p.next < len(m.Chunks); p.next++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := s.readChecked(f, d, m, p.next, (*buf)[:0])
		if err != nil {
			return err
		}
		p.h.Write(b)
	}
	return nil
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

// Commit makes a partial blob visible. It completes the whole-blob sha256 (the chunks PutChunk has not hashed in
// order are read back from the file, CRC-checked) and compares it with the manifest's; syncs the file; then,
// holding filesMu, sets it read-only, renames partial/<cid> to blobs/<cid>, syncs both directories, and swaps the
// partial key for the manifest key in one transaction, synced. A missing chunk gives ErrIncomplete; a corrupt one
// is dropped (so HaveChunks asks for it again) and gives ErrInvalidData. Committing a complete blob does nothing.
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
	if err := s.verifyWhole(ctx, d, m); err != nil {
		return fmt.Errorf("commit %s: %w", blob, err)
	}
	if err := syncFile(s.partialPath(d)); err != nil {
		return fmt.Errorf("commit %s: sync: %w", blob, err)
	}
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err = s.viewState(d)
	if err != nil || st == stateComplete {
		return err
	}
	if st == stateAbsent {
		return fmt.Errorf("commit %s: %w: deleted during commit", blob, blobstore.ErrNotFound)
	}
	if err := s.moveFile(s.partialPath(d), s.blobPath(d), 0o444); err != nil {
		return fmt.Errorf("commit %s: %w", blob, err)
	}
	err = s.update(func(txn *badger.Txn) error {
		if err := txn.Set(key(prefixManifest, d), m.Encode()); err != nil {
			return err
		}
		return txn.Delete(key(prefixPartial, d))
	})
	if err == nil {
		err = s.db.Sync()
	}
	if err != nil {
		return fmt.Errorf("commit %s: %w", blob, err)
	}
	s.dropPrefix(d)
	return nil
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

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}

// verifyWhole checks the whole-blob sha256 the manifest claims, hashing the chunks that PutChunk has not yet
// added to d's prefix hash from the file. PutChunk verified every chunk, so they are re-hashed one by one only
// when the whole does not match: to find a chunk damaged since and drop it, so that the fetch gets it again.
func (s *Store) verifyWhole(ctx context.Context, d [32]byte, m *blobstore.Manifest) error {
	p := s.prefixOf(d)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.advance(ctx, s, d, m); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return s.dropChunk(d, m, p.next, err)
	}
	var sum [32]byte
	if p.h.Sum(sum[:0]); sum == m.SHA256 {
		return nil
	}
	s.resetPrefix(d) // a chunk hashed into it may be the bad one: start afresh
	f, _, _, err := s.openBlob(d)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := s.getBuf()
	defer s.putBuf(buf)
	for i := range m.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := readHashed(f, d, m, i, (*buf)[:0]); err != nil {
			return s.dropChunk(d, m, i, err)
		}
	}
	return fmt.Errorf("%w: the chunks' sha256 is %x, the manifest claims %x", blobstore.ErrInvalidData, sum, m.SHA256)
}

// dropChunk forgets chunk i of blob d when err (from reading it) says it is corrupt or missing, and returns err:
// ErrInvalidData, or ErrIncomplete for a missing chunk.
func (s *Store) dropChunk(d [32]byte, m *blobstore.Manifest, i int, err error) error {
	if !errors.Is(err, blobstore.ErrInvalidData) && !errors.Is(err, errChunkMissing) {
		return err
	}
	if i >= len(m.Chunks) {
		return err
	}
	if derr := s.deleteKeys([][]byte{haveKey(d, i)}); derr != nil {
		return errors.Join(err, derr)
	}
	if errors.Is(err, errChunkMissing) {
		return fmt.Errorf("%w: %w", blobstore.ErrIncomplete, err)
	}
	return err
}
