package badgerstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// Durability after Commit (docs/design.md 3.5): Commit makes a fetched blob visible without waiting for the disk.
// Its transaction writes an unsynced marker (u + digest) beside the manifest key; a goroutine then fsyncs the
// file and both directories and deletes the marker. A blob whose marker survives a crash is not trusted: Open
// re-hashes every chunk of it against its manifest before it is served (recoverUnsynced).

// closeSyncWait bounds how long Close waits for the syncs of recent commits; a blob left unsynced keeps its
// marker and is re-checked at the next Open.
const closeSyncWait = 30 * time.Second

// syncLater syncs a committed blob's file f (opened before the rename, so it follows the file) and the two
// directories in the background, then deletes the blob's marker if it is still the one Commit wrote (seq).
func (s *Store) syncLater(d [32]byte, f *os.File, seq []byte) {
	s.syncs.Go(func() {
		defer f.Close()
		if s.opts.syncHook != nil {
			s.opts.syncHook(d)
		}
		err := errors.Join(f.Sync(), atomicfile.SyncDir(s.blobDir), atomicfile.SyncDir(s.partDir))
		if err != nil {
			s.log.Warn("blob store: sync of a committed blob failed; it is re-checked at the next open",
				"blob", blobstore.DigestCID(d), "err", err)
			return
		}
		s.syncMu.Lock()
		defer s.syncMu.Unlock()
		if s.dbClosed {
			return
		}
		err = s.update(func(txn *badger.Txn) error {
			item, err := txn.Get(key(prefixUnsynced, d))
			if errors.Is(err, badger.ErrKeyNotFound) {
				return nil // deleted or quarantined meanwhile
			}
			if err != nil {
				return err
			}
			v, err := item.ValueCopy(nil)
			if err != nil || string(v) != string(seq) {
				return err // committed again since: that commit's sync deletes it
			}
			return txn.Delete(key(prefixUnsynced, d))
		})
		if err != nil {
			s.log.Warn("blob store: cannot clear a synced blob's marker; it is re-checked at the next open",
				"blob", blobstore.DigestCID(d), "err", err)
		}
	})
}

// waitSyncs waits (at most closeSyncWait) for the background syncs, then stops them from touching badger.
func (s *Store) waitSyncs() {
	done := make(chan struct{})
	go func() {
		s.syncs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(closeSyncWait):
		s.log.Warn("blob store: closing before the sync of a committed blob finished; it is re-checked at the next open")
	}
	s.syncMu.Lock()
	s.dbClosed = true
	s.syncMu.Unlock()
}

// commitSeq is the value of a marker: when Commit wrote it (unix ns), so that a sync only deletes its own.
func commitSeq(t time.Time) []byte { return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano())) }

// recoverUnsynced runs at Open, before cleanup, for every blob whose marker survived (a crash or power loss
// between Commit and its sync): the file (put back in blobs/ if the rename was lost) is re-hashed chunk by chunk
// against the manifest, its check stamp ignored. A whole blob is synced, stamped and its marker dropped; one with
// damaged or missing chunks goes back to partial keeping the chunks that match (quarantine), so a fetch brings
// only those again. Markers of blobs that are not complete go; a missing file is left to cleanup (quarantined
// with no chunk).
func (s *Store) recoverUnsynced() error {
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	var ds [][32]byte
	err := s.db.View(func(txn *badger.Txn) error {
		ds = digestKeys(txn, prefixUnsynced)
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range ds {
		m, st, err := s.viewManifest(d)
		if err != nil && !errors.Is(err, blobstore.ErrNotFound) && !isCorrupt(err) {
			return err
		}
		if st == stateComplete && err == nil {
			err = s.recheck(d, m)
		} else {
			err = s.dropMarker(d)
		}
		if err != nil {
			return fmt.Errorf("re-check %s, committed but not synced: %w", blobstore.DigestCID(d), err)
		}
	}
	return nil
}

func (s *Store) dropMarker(d [32]byte) error {
	return s.update(func(txn *badger.Txn) error { return txn.Delete(key(prefixUnsynced, d)) })
}

// recheck is recoverUnsynced for one complete blob d.
func (s *Store) recheck(d [32]byte, m *blobstore.Manifest) error {
	path := s.blobPath(d)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		// The rename was lost: the file is still in partial/.
		if err := os.Rename(s.partialPath(d), path); errors.Is(err, os.ErrNotExist) {
			return s.dropMarker(d) // no file at all: cleanup quarantines the blob
		} else if err != nil {
			return err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	s.log.Warn("blob store: re-checking a blob committed just before a crash", "blob", blobstore.DigestCID(d))
	buf := s.getBuf()
	defer s.putBuf(buf)
	var bad []int
	for i := range m.Chunks {
		b, err := preadChunk(f, m, i, (*buf)[:0])
		if err != nil && !errors.Is(err, blobstore.ErrInvalidData) {
			return err
		}
		if err != nil || sha256.Sum256(b) != m.Chunks[i] {
			bad = append(bad, i)
		}
	}
	if len(bad) > 0 {
		s.log.Warn("blob store: a blob committed just before a crash lost chunks; back to partial",
			"blob", blobstore.DigestCID(d), "chunks", len(bad))
		if _, err := s.quarantineLocked(d, m, bad[0]); err != nil { // drops the marker too
			return err
		}
		keys := make([][]byte, 0, len(bad)-1)
		for _, i := range bad[1:] {
			keys = append(keys, haveKey(d, i))
		}
		if len(keys) == 0 {
			return nil
		}
		return s.deleteKeys(keys)
	}
	if err := errors.Join(os.Chmod(path, 0o444), f.Sync(), atomicfile.SyncDir(s.blobDir), atomicfile.SyncDir(s.partDir)); err != nil {
		return err
	}
	err = s.update(func(txn *badger.Txn) error {
		if err := setStamp(txn, d, path, s.opts.now()); err != nil {
			return err
		}
		return txn.Delete(key(prefixUnsynced, d))
	})
	if err == nil {
		err = s.db.Sync()
	}
	return err
}
