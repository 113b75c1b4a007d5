package badgerstore

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// migrate converts a store of layout 1 (chunk bytes in badger under c + chunk digest) to layout 2 (one file per
// blob) in place, at Open, before anything else reads it. Every complete blob's chunks are read from badger,
// re-hashed and written into its file (synced, read-only, named blobs/<cid>) with their chunk keys; a partial
// blob gets its file with the chunks it holds. Only then is the layout version written (synced); the cleanup
// that follows drops the layout-1 chunk keys and the background reclaim gives their value-log space back. A crash
// or error before the version is written leaves a layout-1 store that the next Open migrates again from the
// start. It needs free space for every blob's bytes once more (the value log is reclaimed afterwards); without
// it Open fails with ErrNoSpace and changes nothing.
func (s *Store) migrate() error {
	type blob struct {
		d        [32]byte
		m        *blobstore.Manifest
		complete bool
	}
	var blobs []blob
	var total uint64
	err := s.db.View(func(txn *badger.Txn) error {
		for _, prefix := range []byte{prefixManifest, prefixPartial} {
			for _, d := range digestKeys(txn, prefix) {
				m, st, err := s.manifest(txn, d)
				if isCorrupt(err) {
					s.log.Warn("blob store: migrate: skipping a blob with a corrupt manifest (see verify)", "blob", blobstore.DigestCID(d), "err", err)
					continue
				}
				if err != nil {
					return err
				}
				blobs = append(blobs, blob{d: d, m: m, complete: st == stateComplete})
				total += m.Size
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.checkSpace(total); err != nil {
		return err
	}
	s.log.Info("blob store: migrating to one file per blob", "blobs", len(blobs), "bytes", total)
	buf := s.getBuf()
	defer s.putBuf(buf)
	for _, b := range blobs {
		if err := s.migrateBlob(b.d, b.m, b.complete, *buf); err != nil {
			return fmt.Errorf("blob %s: %w", blobstore.DigestCID(b.d), err)
		}
	}
	if err := s.db.Sync(); err != nil {
		return err
	}
	err = s.update(func(txn *badger.Txn) error { return txn.Set(keyVersion, []byte(layoutVersion)) })
	if err == nil {
		err = s.db.Sync()
	}
	if err == nil {
		s.log.Info("blob store: migrated to one file per blob", "blobs", len(blobs), "bytes", total)
	}
	return err
}

// migrateBlob writes one blob's layout-1 chunks into its file and chunk keys. A complete blob whose chunk is
// missing or damaged becomes partial (quarantined): a fetch or put heals it.
func (s *Store) migrateBlob(d [32]byte, m *blobstore.Manifest, complete bool, buf []byte) error {
	path := s.partialPath(d)
	if err := createSparse(path, int64(m.Size)); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var keys, vals [][]byte
	for i := range m.Chunks {
		data, err := s.v1Chunk(d, m, i, buf[:0])
		if errors.Is(err, errChunkMissing) || errors.Is(err, blobstore.ErrInvalidData) {
			if complete {
				s.log.Warn("blob store: migrate: damaged or missing chunk; the blob is quarantined", "blob", blobstore.DigestCID(d), "chunk", i, "err", err)
			}
			complete = false
			continue
		}
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(data, int64(m.ChunkOffset(i))); err != nil {
			return err
		}
		keys, vals = append(keys, haveKey(d, i)), append(vals, encodeCRC(chunkCRC(data)))
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := s.setKeys(keys, vals); err != nil {
		return err
	}
	if !complete {
		return s.update(func(txn *badger.Txn) error {
			if err := txn.Delete(key(prefixManifest, d)); err != nil {
				return err
			}
			return txn.Set(key(prefixPartial, d), m.Encode())
		})
	}
	if err := f.Chmod(0o444); err != nil {
		return err
	}
	if err := os.Rename(path, s.blobPath(d)); err != nil {
		return err
	}
	return atomicfile.SyncDir(s.blobDir)
}

// v1Chunk is the layout-1 read path, kept for the migration: chunk i of m from its c key, length-checked and
// re-hashed.
func (s *Store) v1Chunk(d [32]byte, m *blobstore.Manifest, i int, dst []byte) ([]byte, error) {
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixChunkV1, m.Chunks[i]))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%s: %w", chunkID(d, m, i), errChunkMissing)
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			dst = append(dst, v...)
			return nil
		})
	})
	if err != nil {
		if !errors.Is(err, errChunkMissing) {
			err = fmt.Errorf("%w: %s: %w", blobstore.ErrInvalidData, chunkID(d, m, i), err)
		}
		return nil, err
	}
	if len(dst) != m.ChunkLen(i) || sha256.Sum256(dst) != m.Chunks[i] {
		return nil, fmt.Errorf("%w: %s", blobstore.ErrInvalidData, chunkID(d, m, i))
	}
	return dst, nil
}
