package badgerstore

import (
	"context"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

var _ blobstore.Checker = (*Store)(nil)

// quarantine handles chunk i of blob d found damaged or missing on a read (err says how): a complete blob goes
// back to partial, so nothing serves it or reports it complete, and the chunk is dropped so that HaveChunks asks
// for it again; the records stay, and a fetch or a put of the same bytes heals the blob. It returns err.
func (s *Store) quarantine(d [32]byte, m *blobstore.Manifest, i int, err error) error {
	if !errors.Is(err, blobstore.ErrInvalidData) && !errors.Is(err, errChunkMissing) {
		return err
	}
	s.mu.Lock()
	var was blobState
	qerr := s.update(func(txn *badger.Txn) error {
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
		return txn.Delete(key(prefixChunk, m.Chunks[i]))
	})
	s.mu.Unlock()
	s.dropPrefix(d)
	if qerr != nil {
		s.log.Error("blob store: cannot quarantine a damaged blob", "blob", blobstore.DigestCID(d), "chunk", i, "err", qerr)
		return errors.Join(err, qerr)
	}
	if was == stateComplete {
		s.log.Warn("blob store: damaged chunk; the blob is quarantined until a fetch or put heals it",
			"blob", blobstore.DigestCID(d), "chunk", i, "err", err)
	}
	if errors.Is(err, errChunkMissing) {
		return fmt.Errorf("%w: %w", blobstore.ErrInvalidData, err)
	}
	return err
}

// CheckBlob checks every chunk of a complete blob against the store's checksum (badger's CRC32C of the value-log
// entry; chunks kept in the LSM tree are re-hashed) and quarantines the blob at the first damaged chunk.
func (s *Store) CheckBlob(ctx context.Context, c cid.Cid) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return err
	}
	var m *blobstore.Manifest
	var st blobState
	err = s.db.View(func(txn *badger.Txn) error {
		m, st, err = s.manifest(txn, d)
		return err
	})
	if err != nil {
		return err
	}
	if st != stateComplete {
		return fmt.Errorf("check %s: %w", c, blobstore.ErrIncomplete)
	}
	buf := s.getBuf()
	defer s.putBuf(buf)
	for i := range m.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if m.ChunkLen(i) < valueThreshold {
			_, err = s.readChunk(d, m, i, (*buf)[:0])
		} else {
			err = s.chunkValue(d, m, i, func([]byte) {})
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", c, s.quarantine(d, m, i, err))
		}
	}
	return nil
}
