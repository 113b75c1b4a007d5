package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

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
	s.dropPrefix(d)
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
// re-hashing it) and quarantines the blob at the first damaged chunk.
func (s *Store) CheckBlob(ctx context.Context, c cid.Cid) error {
	r, err := s.Open(ctx, c)
	if err != nil {
		return err
	}
	defer r.Close()
	rr := r.(*reader)
	for rr.fill() {
		rr.off = len(rr.cur.data)
	}
	if errors.Is(rr.err, io.EOF) {
		return nil
	}
	return fmt.Errorf("check %s: %w", c, rr.err)
}
