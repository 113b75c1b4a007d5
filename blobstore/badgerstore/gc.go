package badgerstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// cleanup runs at Open and puts files and keys back in line after a crash: temporary files of Puts go; a partial
// blob whose file was moved to blobs/ by a Commit or quarantine that did not finish gets it back (a missing one is
// recreated empty, its chunks forgotten); a complete blob without its file is quarantined with no chunk; files
// without a blob, chunk keys of blobs that no longer exist, layout-1 chunk keys, and access, pin and record keys
// of blobs that no longer exist are removed. It returns how many keys and files it removed.
func (s *Store) cleanup() (int, error) {
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	removed := 0
	if tmp, err := os.ReadDir(s.tmpDir); err == nil {
		for _, e := range tmp {
			if os.RemoveAll(filepath.Join(s.tmpDir, e.Name())) == nil {
				removed++
			}
		}
	}
	complete := map[[32]byte]bool{}
	partial := map[[32]byte]bool{}
	var manifests = map[[32]byte]*blobstore.Manifest{}
	err := s.db.View(func(txn *badger.Txn) error {
		for _, d := range digestKeys(txn, prefixManifest) {
			complete[d] = true
		}
		for _, d := range digestKeys(txn, prefixPartial) {
			partial[d] = true
		}
		for d := range complete {
			if _, err := os.Stat(s.blobPath(d)); errors.Is(err, os.ErrNotExist) {
				m, _, err := s.manifest(txn, d)
				if err != nil {
					return err
				}
				manifests[d] = m
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for d, m := range manifests {
		s.log.Error("blob store: a complete blob's file is missing; quarantined", "blob", blobstore.DigestCID(d))
		if _, err := s.quarantineLocked(d, m, -1); err != nil {
			return removed, err
		}
		delete(complete, d)
		partial[d] = true
	}
	for d := range partial {
		pp := s.partialPath(d)
		if _, err := os.Stat(pp); err == nil {
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			return removed, err
		}
		if err := s.moveFile(s.blobPath(d), pp, 0o600); err == nil {
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			return removed, err
		}
		var m *blobstore.Manifest
		if err := s.db.View(func(txn *badger.Txn) error {
			var err error
			m, _, err = s.manifest(txn, d)
			return err
		}); err != nil {
			if isCorrupt(err) {
				continue
			}
			return removed, err
		}
		s.log.Warn("blob store: a partial blob's file is missing; its fetch starts afresh", "blob", blobstore.DigestCID(d))
		if err := s.deletePrefix(key(prefixHave, d)); err != nil {
			return removed, err
		}
		if err := createSparse(pp, int64(m.Size)); err != nil {
			return removed, err
		}
	}
	for _, dir := range []struct {
		path string
		keep map[[32]byte]bool
	}{{s.blobDir, complete}, {s.partDir, partial}} {
		entries, err := os.ReadDir(dir.path)
		if err != nil {
			return removed, err
		}
		for _, e := range entries {
			if c, err := blobstore.ParseCID(e.Name()); err == nil {
				if d, _ := blobstore.Digest(c); dir.keep[d] {
					continue
				}
			}
			if err := os.RemoveAll(filepath.Join(dir.path, e.Name())); err != nil {
				return removed, err
			}
			removed++
		}
	}

	var doomed [][]byte
	err = s.db.View(func(txn *badger.Txn) error {
		exists := func(d [32]byte) bool { return complete[d] || partial[d] }
		for _, prefix := range []byte{prefixAccess, prefixPin, prefixChecked, prefixUnsynced} {
			for _, d := range digestKeys(txn, prefix) {
				if !exists(d) {
					doomed = append(doomed, key(prefix, d))
				}
			}
		}
		for _, prefix := range []byte{prefixHave, prefixChunkV1, prefixRecord} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
			for it.Rewind(); it.Valid(); it.Next() {
				k := it.Item().KeyCopy(nil)
				var ok bool
				switch prefix {
				case prefixHave:
					ok = len(k) == 37 && exists([32]byte(k[1:33]))
				case prefixRecord:
					var d [32]byte
					if d, ok = recordKeyBlob(k); ok {
						ok = exists(d)
					}
				}
				if !ok {
					doomed = append(doomed, k)
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil || len(doomed) == 0 {
		return removed, err
	}
	return removed + len(doomed), s.deleteKeys(doomed)
}

// GC removes least-recently-used blobs, complete or partial, until their total size is at most quota. It never
// removes a pinned blob, one keep protects or one with an open Reader. Then it reclaims value-log space. A partial blob counts the bytes it holds, not the size its manifest claims (a claim is
// a peer's word, and a fetch that failed may never fill it), and partial blobs go first: a complete blob is removed
// only while the complete blobs alone exceed quota, never to make room for a partial one.
func (s *Store) GC(ctx context.Context, quota uint64, keep func(cid.Cid) bool) (blobstore.GCResult, error) {
	if err := s.enter(); err != nil {
		return blobstore.GCResult{}, err
	}
	defer s.leave()
	type cand struct {
		d        [32]byte
		size     uint64 // bytes held: the blob's size, or a partial blob's stored chunks
		access   int64
		pinned   bool
		complete bool
	}
	var cands []cand
	var total, completeTotal uint64
	err := s.db.View(func(txn *badger.Txn) error {
		for _, prefix := range []byte{prefixManifest, prefixPartial} {
			for _, d := range digestKeys(txn, prefix) {
				m, st, err := s.manifest(txn, d)
				if isCorrupt(err) {
					s.log.Warn("blob store: gc: skipping a blob with a corrupt manifest (see verify)", "blob", blobstore.DigestCID(d), "err", err)
					continue
				}
				if err != nil {
					return err
				}
				size, err := s.heldBytes(txn, d, m, st)
				if err != nil {
					return err
				}
				at, err := s.lastAccess(txn, d)
				if err != nil {
					return err
				}
				_, perr := txn.Get(key(prefixPin, d))
				if perr != nil && !errors.Is(perr, badger.ErrKeyNotFound) {
					return perr
				}
				complete := st == stateComplete
				cands = append(cands, cand{d: d, size: size, access: at.UnixNano(), pinned: perr == nil, complete: complete})
				total += size
				if complete {
					completeTotal += size
				}
			}
		}
		return nil
	})
	if err != nil {
		return blobstore.GCResult{}, fmt.Errorf("gc: %w", err)
	}
	// Partial blobs first, then complete ones; each group oldest access first.
	slices.SortFunc(cands, func(a, b cand) int {
		if a.complete != b.complete {
			if a.complete {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(a.access, b.access), bytes.Compare(a.d[:], b.d[:]))
	})
	protected := make([]bool, len(cands)) // keep is asked before taking the lock: it may call the store
	for i, c := range cands {
		protected[i] = c.pinned || (keep != nil && keep(blobstore.DigestCID(c.d)))
	}

	res := blobstore.GCResult{Removed: []cid.Cid{}}
	s.mu.Lock()
	for i, c := range cands {
		if total <= quota {
			break
		}
		if c.complete && completeTotal <= quota {
			break // what is over quota is partial blobs gc may not remove: no complete blob goes for them
		}
		if err := ctx.Err(); err != nil {
			s.mu.Unlock()
			return res, err
		}
		id := blobstore.DigestCID(c.d)
		if protected[i] || s.hasReaders(c.d) {
			continue
		}
		_, err := s.deleteLocked(c.d, true)
		if errors.Is(err, blobstore.ErrPinned) || errors.Is(err, blobstore.ErrNotFound) {
			continue // pinned or deleted since the listing
		}
		if err != nil {
			s.mu.Unlock()
			return res, fmt.Errorf("gc: remove %s: %w", id, err)
		}
		res.Removed = append(res.Removed, id)
		res.FreedBytes += c.size
		total -= c.size
		if c.complete {
			completeTotal -= c.size
		}
	}
	s.mu.Unlock()
	res.SizeAfter = total
	if err := s.reclaim(); err != nil {
		return res, fmt.Errorf("gc: reclaim value log: %w", err)
	}
	return res, nil
}

// heldBytes is what a blob holds on disk: its size when complete, the length of its stored chunks when partial.
func (s *Store) heldBytes(txn *badger.Txn, d [32]byte, m *blobstore.Manifest, st blobState) (uint64, error) {
	if st == stateComplete {
		return m.Size, nil
	}
	have, err := haveChunks(txn, d, m)
	if err != nil {
		return 0, err
	}
	var n uint64
	for i, h := range have {
		if h {
			n += uint64(m.ChunkLen(i))
		}
	}
	return n, nil
}

func (s *Store) hasReaders(d [32]byte) bool {
	s.readersMu.Lock()
	defer s.readersMu.Unlock()
	return s.readers[d] > 0
}

// reclaim gives deleted chunks' space back to the filesystem. Badger counts reclaimable value-log bytes only when
// compaction drops deleted keys, so reclaim flushes the memtable (by dropping a marker key, during which badger
// refuses writes: the gate holds them back), compacts the LSM tree into one level, then rewrites value-log files
// that are at least half garbage.
func (s *Store) reclaim() error {
	s.reclaimMu.Lock()
	defer s.reclaimMu.Unlock()
	// Reclaim is what frees a full disk, so it dips into MinFreeSpace, down to a smaller reserve; Open makes sure
	// MinFreeSpace covers it.
	if err := s.checkSpaceReserve(reclaimRoom(s.opts.ValueLogFileSize)-reclaimReserve, reclaimReserve); err != nil {
		return err
	}
	s.gate.Lock()
	err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(keyFlush, nil) })
	if err == nil {
		err = s.db.DropPrefix(keyFlush)
	}
	s.gate.Unlock()
	if err != nil {
		return fmt.Errorf("flush memtable: %w", err)
	}
	if err := s.db.Flatten(2); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	for range 1000 { // each pass rewrites one file; bounded all the same
		// The store's writes wait while a value-log file is rewritten: badger's rewrite reads the maximum version
		// without a lock while a concurrent write sets it (a data race the race detector reports). With blob
		// bytes in files the value log holds only manifests, so a rewrite is short.
		s.gate.Lock()
		err := s.db.RunValueLogGC(0.5)
		s.gate.Unlock()
		if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// reclaimRoom is the free space reclaim needs: a value-log rewrite copies at most half a file (RunValueLogGC at
// 0.5), and without room for it mmap writes would crash the process; plus the reserve for LSM tables.
func reclaimRoom(vlogFileSize int64) uint64 { return uint64(vlogFileSize)/2 + reclaimReserve }

// kickReclaim asks the background goroutine to reclaim space soon (after a delete); calls coalesce.
func (s *Store) kickReclaim() {
	select {
	case s.bg <- struct{}{}:
	default:
	}
}

func (s *Store) background() {
	defer close(s.bgDone)
	for {
		select {
		case <-s.bgClose:
			return
		case <-s.bg:
			if err := s.reclaim(); err != nil {
				s.log.Warn("blob store: reclaim value-log space", "err", err)
			}
		}
	}
}
