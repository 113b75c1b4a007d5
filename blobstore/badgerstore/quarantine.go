package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

var _ blobstore.Checker = (*Store)(nil)

// quarantine handles chunk i of blob d found damaged or missing on a read (err says how; i = -1: the whole file
// is missing): a complete blob goes back to partial — its file moves from blobs/ to partial/, so nothing serves
// it or reports it complete — and the chunk is dropped so that HaveChunks asks for it again; the records stay,
// and a fetch or a put of the same bytes heals the blob. It returns err (ErrInvalidData).
func (s *Store) quarantine(d [32]byte, m *blobstore.Manifest, i int, err error) error {
	if !errors.Is(err, blobstore.ErrInvalidData) && !errors.Is(err, errChunkMissing) {
		return err
	}
	if errors.Is(err, errChunkMissing) {
		err = fmt.Errorf("%w: %w", blobstore.ErrInvalidData, err)
	}
	s.filesMu.Lock()
	was, qerr := s.quarantineLocked(d, m, i)
	s.filesMu.Unlock()
	s.dropFill(d)
	if qerr != nil {
		s.log.Error("blob store: cannot quarantine a damaged blob", "blob", blobstore.DigestCID(d), "chunk", i, "err", qerr)
		return errors.Join(err, qerr)
	}
	if was == stateComplete {
		s.log.Warn("blob store: damaged blob quarantined until a fetch or put heals it",
			"blob", blobstore.DigestCID(d), "chunk", i, "err", err)
	}
	return err
}

// quarantineLocked does the work of quarantine; s.filesMu must be held.
func (s *Store) quarantineLocked(d [32]byte, m *blobstore.Manifest, i int) (blobState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var was blobState
	err := s.update(func(txn *badger.Txn) error {
		st, err := s.state(txn, d)
		if err != nil || st == stateAbsent {
			return err
		}
		was = st
		if st == stateComplete {
			if err := txn.Set(key(prefixPartial, d), m.Encode()); err != nil {
				return err
			}
			if err := txn.Delete(key(prefixManifest, d)); err != nil {
				return err
			}
			if err := txn.Delete(key(prefixChecked, d)); err != nil {
				return err
			}
			if err := txn.Delete(key(prefixUnsynced, d)); err != nil { // a partial blob's chunks are re-checked at Commit
				return err
			}
		}
		if i >= 0 {
			return txn.Delete(haveKey(d, i))
		}
		return nil
	})
	if err != nil || was == stateAbsent {
		return was, err
	}
	if i < 0 { // the file is gone: every chunk with it
		if err := s.deletePrefix(key(prefixHave, d)); err != nil {
			return was, err
		}
	}
	if was == stateComplete {
		err := s.moveFile(s.blobPath(d), s.partialPath(d), 0o600)
		if errors.Is(err, os.ErrNotExist) {
			err = createSparse(s.partialPath(d), int64(m.Size))
		}
		if err != nil {
			return was, err
		}
	}
	return was, s.db.Sync()
}

// CheckBlob checks every chunk of a complete blob against its stored CRC32C (reading the file once, not
// re-hashing it) and quarantines the blob at the first damaged chunk; a blob whose file is unchanged since its
// check stamp (checked.go: written when it was fetched, put or checked, less than checkValidFor ago) is not read.
// Chunks are checked by up to checkWorkers goroutines, each reading its chunk in checkPiece pieces into one small
// buffer that stays in the CPU's cache (the checksum then reads what the copy just wrote, not main memory):
// about the cost of `cat` of the file.
func (s *Store) CheckBlob(ctx context.Context, c cid.Cid) error {
	d, err := digestOf(c)
	if err != nil {
		return err
	}
	if err := s.enter(); err != nil {
		return err
	}
	fresh := s.stillChecked(d)
	s.leave()
	if fresh {
		return nil
	}
	began := s.opts.now()
	before, idErr := statID(s.blobPath(d))
	r, err := s.Open(ctx, c)
	if err != nil {
		return err
	}
	defer r.Close()
	rr := r.(*reader)
	bad := make([]error, len(rr.m.Chunks))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), checkWorkers, len(rr.m.Chunks)) {
		wg.Go(func() {
			buf := make([]byte, checkPiece)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(rr.m.Chunks) {
					return
				}
				if err := ctx.Err(); err != nil {
					bad[i] = err
					return
				}
				bad[i] = checkChunkPieces(rr, i, buf)
				if bad[i] != nil {
					return // the lowest bad chunk is quarantined; the others need not finish
				}
			}
		})
	}
	wg.Wait()
	for i, err := range bad {
		if err == nil {
			continue
		}
		return fmt.Errorf("check %s: %w", c, s.quarantine(rr.d, rr.m, i, err)) // damage only; other errors pass
	}
	if idErr == nil {
		s.stampChecked(d, before, began)
	}
	return nil
}

// stampChecked writes complete blob d's check stamp after a check that began at began with the file's identity
// id, if the file still has it (a change during the check gets no stamp). A failure only costs the next check.
func (s *Store) stampChecked(d [32]byte, id fileID, began time.Time) {
	err := s.update(func(txn *badger.Txn) error {
		st, err := s.state(txn, d)
		if err != nil || st != stateComplete {
			return err
		}
		if now, err := statID(s.blobPath(d)); err != nil || now != id {
			return err
		}
		return txn.Set(key(prefixChecked, d), encodeStamp(began, id))
	})
	if err != nil {
		s.log.Warn("blob store: cannot record a check", "blob", blobstore.DigestCID(d), "err", err)
	}
}

const (
	checkWorkers = 4
	checkPiece   = 128 << 10
)

// checkChunkPieces checks chunk i of r's blob against its stored CRC32C, reading it into buf piece by piece.
func checkChunkPieces(r *reader, i int, buf []byte) error {
	if !r.have[i] {
		return fmt.Errorf("%s: %w", chunkID(r.d, r.m, i), errChunkMissing)
	}
	off, n := int64(r.m.ChunkOffset(i)), int64(r.m.ChunkLen(i))
	var crc uint32
	for done := int64(0); done < n; {
		k, err := r.f.ReadAt(buf[:min(int64(len(buf)), n-done)], off+done)
		crc = crc32.Update(crc, castagnoli, buf[:k])
		done += int64(k)
		if done < n && err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: chunk %d of %s: file ends after %d of its %d bytes", blobstore.ErrInvalidData, i, r.f.Name(), done, n)
			}
			return err
		}
	}
	if crc != r.crcs[i] {
		return fmt.Errorf("%w: %s does not match its checksum", blobstore.ErrInvalidData, chunkID(r.d, r.m, i))
	}
	return nil
}
