package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// BeginPartial records the manifest of a blob being fetched. Calling it again (a resumed fetch, after a restart
// too) keeps the chunks already stored; for a complete blob it does nothing. It fails with ErrNoSpace if the
// whole blob would not fit.
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
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update(func(txn *badger.Txn) error {
		st, err := s.state(txn, d)
		if err != nil || st != stateAbsent {
			return err
		}
		if err := s.checkSpace(m.Size + uint64(len(enc))); err != nil {
			return fmt.Errorf("begin partial %s: %w", blobstore.DigestCID(d), err)
		}
		if err := txn.Set(key(prefixPartial, d), enc); err != nil {
			return err
		}
		return s.setAccess(txn, d, s.opts.now())
	})
}

// PutChunk stores chunk i of a partial blob after checking its length and hash against the manifest. For a
// complete blob it only checks. Chunks are not synced one by one: Commit syncs before the blob becomes visible.
func (s *Store) PutChunk(ctx context.Context, blob cid.Cid, i int, data []byte) error {
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
	err = s.db.View(func(txn *badger.Txn) error {
		m, st, err = s.manifest(txn, d)
		return err
	})
	if err != nil {
		return fmt.Errorf("put chunk %d: %w", i, err)
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
	if st == stateComplete {
		return nil
	}
	if err := s.checkSpace(uint64(len(data))); err != nil {
		return fmt.Errorf("put chunk %d of %s: %w", i, blob, err)
	}
	err = s.update(func(txn *badger.Txn) error { return txn.Set(key(prefixChunk, m.Chunks[i]), data) })
	if err != nil {
		return fmt.Errorf("put chunk %d of %s: %w", i, blob, err)
	}
	return nil
}

// HaveChunks reports which chunks are stored, for a complete or partial blob. Stored means the key exists;
// ReadChunk and Commit re-verify the bytes.
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
		have, err = haveChunks(txn, m)
		return err
	})
	return have, err
}

func haveChunks(txn *badger.Txn, m *blobstore.Manifest) ([]bool, error) {
	have := make([]bool, len(m.Chunks))
	for i, c := range m.Chunks {
		_, err := txn.Get(key(prefixChunk, c))
		if err == nil {
			have[i] = true
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return nil, err
		}
	}
	return have, nil
}

// Commit makes a partial blob visible. It re-reads every chunk to check the whole-blob sha256 the manifest
// claims (verifyWhole), syncs, and then swaps the partial key for the manifest key in one transaction. A missing
// chunk gives ErrIncomplete; a corrupt one is deleted (so HaveChunks asks for it again) and gives ErrInvalidData.
// Committing a complete blob does nothing.
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
			have, err = haveChunks(txn, m)
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
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("commit %s: sync chunks: %w", blob, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.update(func(txn *badger.Txn) error {
		st, err := s.state(txn, d)
		if err != nil || st == stateComplete {
			return err
		}
		if st == stateAbsent {
			return fmt.Errorf("%w: deleted during commit", blobstore.ErrNotFound)
		}
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
	return nil
}

// verifyWhole checks the whole-blob sha256 the manifest claims in one pass, hashing the chunks straight from
// badger's value log. PutChunk verified every chunk, so they are re-hashed one by one only when the whole does not
// match: to find a chunk damaged since and delete it, so that the fetch gets it again. A chunk that is missing or
// that badger cannot read is deleted too.
func (s *Store) verifyWhole(ctx context.Context, d [32]byte, m *blobstore.Manifest) error {
	h := sha256.New()
	for i := range m.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := s.chunkValue(d, m, i, func(v []byte) { h.Write(v) })
		if err != nil {
			return s.dropChunk(m, i, err)
		}
	}
	var sum [32]byte
	if h.Sum(sum[:0]); sum == m.SHA256 {
		return nil
	}
	buf := s.getBuf()
	defer s.putBuf(buf)
	for i := range m.Chunks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := s.readChunk(d, m, i, (*buf)[:0]); err != nil {
			return s.dropChunk(m, i, err)
		}
	}
	return fmt.Errorf("%w: the chunks' sha256 is %x, the manifest claims %x", blobstore.ErrInvalidData, sum, m.SHA256)
}

// dropChunk deletes chunk i of m when err (from reading it) says it is corrupt or missing, and returns err:
// ErrInvalidData, or ErrIncomplete for a missing chunk.
func (s *Store) dropChunk(m *blobstore.Manifest, i int, err error) error {
	if !errors.Is(err, blobstore.ErrInvalidData) && !errors.Is(err, errChunkMissing) {
		return err
	}
	s.mu.Lock()
	derr := s.deleteKeys([][]byte{key(prefixChunk, m.Chunks[i])})
	s.mu.Unlock()
	if derr != nil {
		return errors.Join(err, derr)
	}
	if errors.Is(err, errChunkMissing) {
		return fmt.Errorf("%w: %w", blobstore.ErrIncomplete, err)
	}
	return err
}
