package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"sync"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// BeginPartial records the manifest of a blob being fetched. Calling it again (a resumed fetch, after a restart
// too) keeps the chunks already stored; for a complete blob it does nothing. It fails with ErrNoSpace if the
// whole blob would not fit, or if it is larger than Options.Quota.
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
		if q := s.opts.Quota; q > 0 && m.Size > q {
			return fmt.Errorf("begin partial %s: %w: the blob claims %d bytes, the store's quota is %d",
				blobstore.DigestCID(d), ErrNoSpace, m.Size, q)
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
// It takes one badger transaction when the manifest is cached: a new transaction waits for the commits in flight,
// so each one more costs the fetch's other workers.
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
	var st blobState
	err = s.update(func(txn *badger.Txn) error {
		st, err = s.state(txn, d)
		if err != nil || st != statePartial {
			return err
		}
		if err := s.checkSpace(uint64(len(data))); err != nil {
			return err
		}
		return txn.Set(key(prefixChunk, m.Chunks[i]), data)
	})
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

// prefixHash is the whole-blob sha256 of the leading chunks of a partial blob, kept while a fetch stores the
// rest so that Commit has only the tail left to hash. Chunks go in as PutChunk verified them when they arrive in
// order, else read back from the store.
type prefixHash struct {
	mu   sync.Mutex
	h    hash.Hash
	next int // chunks [0, next) are in h
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
	p.advance(ctx, s, d, m)
}

// advance hashes stored chunks into p until one is missing or unreadable (that error); p.mu must be held.
func (p *prefixHash) advance(ctx context.Context, s *Store, d [32]byte, m *blobstore.Manifest) error {
	for ; p.next < len(m.Chunks); p.next++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.chunkValue(d, m, p.next, func(v []byte) { p.h.Write(v) }); err != nil {
			return err
		}
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
	s.dropPrefix(d)
	return nil
}

// verifyWhole checks the whole-blob sha256 the manifest claims, hashing the chunks that PutChunk has not yet
// added to d's prefix hash straight from badger's value log. PutChunk verified every chunk, so they are re-hashed
// one by one only when the whole does not match: to find a chunk damaged since and delete it, so that the fetch
// gets it again. A chunk that is missing or that badger cannot read is deleted too.
func (s *Store) verifyWhole(ctx context.Context, d [32]byte, m *blobstore.Manifest) error {
	p := s.prefixOf(d)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.advance(ctx, s, d, m); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return s.dropChunk(m, p.next, err)
	}
	var sum [32]byte
	if p.h.Sum(sum[:0]); sum == m.SHA256 {
		return nil
	}
	s.dropPrefix(d) // a chunk hashed into it may be the bad one: start afresh
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
