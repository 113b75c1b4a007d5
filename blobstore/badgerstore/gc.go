package badgerstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// marks returns every chunk digest that a complete or partial manifest references or a Put in flight has
// registered. s.mu must be held, so no manifest or registration changes meanwhile.
func (s *Store) marksLocked() (map[[32]byte]struct{}, error) {
	marks := make(map[[32]byte]struct{}, len(s.inflight))
	for d := range s.inflight {
		marks[d] = struct{}{}
	}
	err := s.db.View(func(txn *badger.Txn) error {
		for _, prefix := range []byte{prefixManifest, prefixPartial} {
			for _, d := range digestKeys(txn, prefix) {
				m, _, err := s.manifest(txn, d)
				if err != nil {
					// An unreadable manifest must not cost the chunks of every other blob: stop the sweep.
					return fmt.Errorf("read manifest %s: %w", blobstore.DigestCID(d), err)
				}
				for _, c := range m.Chunks {
					marks[c] = struct{}{}
				}
			}
		}
		return nil
	})
	return marks, err
}

// sweepLocked deletes the chunks among candidates (all stored chunks if candidates is nil) that no manifest and
// no Put in flight references. s.mu must be held. It returns how many chunks it deleted.
func (s *Store) sweepLocked(candidates [][32]byte) (int, error) {
	marks, err := s.marksLocked()
	if err != nil {
		return 0, err
	}
	var doomed [][]byte
	err = s.db.View(func(txn *badger.Txn) error {
		if candidates == nil {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixChunk}})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				k := it.Item().KeyCopy(nil)
				if len(k) != 33 {
					doomed = append(doomed, k) // not a key this version writes under the chunk prefix
					continue
				}
				if _, ok := marks[[32]byte(k[1:])]; !ok {
					doomed = append(doomed, k)
				}
			}
			return nil
		}
		seen := map[[32]byte]bool{}
		for _, d := range candidates {
			if _, ok := marks[d]; ok || seen[d] {
				continue
			}
			seen[d] = true
			if _, err := txn.Get(key(prefixChunk, d)); err == nil {
				doomed = append(doomed, key(prefixChunk, d))
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
		}
		return nil
	})
	if err != nil || len(doomed) == 0 {
		return 0, err
	}
	return len(doomed), s.deleteKeys(doomed)
}

func (s *Store) deleteKeys(keys [][]byte) error {
	s.gate.RLock()
	defer s.gate.RUnlock()
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// cleanup runs at Open: it removes chunks no manifest references (interrupted puts, a crash in a delete) and
// access, pin and record keys of blobs that no longer exist.
func (s *Store) cleanup() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	removed, err := s.sweepLocked(nil)
	if isCorrupt(err) {
		// Open anyway, so that verify can report the damage and delete can remove the blob.
		s.log.Warn("blob store: not sweeping chunks at open: a manifest is corrupt (see verify)", "err", err)
	} else if err != nil {
		return 0, err
	}
	var doomed [][]byte
	err = s.db.View(func(txn *badger.Txn) error {
		exists := func(d [32]byte) (bool, error) {
			st, err := s.state(txn, d)
			return st != stateAbsent, err
		}
		for _, prefix := range []byte{prefixAccess, prefixPin} {
			for _, d := range digestKeys(txn, prefix) {
				ok, err := exists(d)
				if err != nil {
					return err
				}
				if !ok {
					doomed = append(doomed, key(prefix, d))
				}
			}
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixRecord}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			d, ok := recordKeyBlob(k)
			if ok {
				if ok, err = exists(d); err != nil {
					return err
				}
			}
			if !ok {
				doomed = append(doomed, k)
			}
		}
		return nil
	})
	if err != nil || len(doomed) == 0 {
		return removed, err
	}
	return removed + len(doomed), s.deleteKeys(doomed)
}

// GC removes least-recently-used blobs, complete or partial, until their total size is at most quota. It never
// removes a pinned blob, one keep protects or one with an open Reader. Then it sweeps unreferenced chunks and
// reclaims value-log space. A partial blob counts the bytes it holds, not the size its manifest claims (a claim is
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
	_, err = s.sweepLocked(nil)
	s.mu.Unlock()
	res.SizeAfter = total
	if err != nil {
		return res, fmt.Errorf("gc: sweep chunks: %w", err)
	}
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
	have, err := haveChunks(txn, m)
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
		err := s.db.RunValueLogGC(0.5)
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
