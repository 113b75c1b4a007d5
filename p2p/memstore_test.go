package p2p

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// memStore is an in-memory blobstore.ChunkStore (what the p2p package uses: fetch and serve) plus Put, so that
// the benchmark can tell the cost of the protocol from the cost of the disk store. Chunks are verified on
// PutChunk like the real store; ReadChunk does not re-hash (memory does not rot).
type memStore struct {
	mu       sync.Mutex
	blobs    map[cid.Cid]*memBlob
	complete map[cid.Cid]bool
}

type memBlob struct {
	m      *blobstore.Manifest
	chunks [][]byte
}

var _ blobstore.ChunkStore = (*memStore)(nil)

func newMemStore() *memStore {
	return &memStore{blobs: map[cid.Cid]*memBlob{}, complete: map[cid.Cid]bool{}}
}

func (s *memStore) Put(ctx context.Context, r io.Reader) (*blobstore.Manifest, error) {
	m := &blobstore.Manifest{ChunkSize: blobstore.ChunkSize}
	b := &memBlob{m: m}
	whole := sha256.New()
	for {
		buf := make([]byte, blobstore.ChunkSize)
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			buf = buf[:n]
			whole.Write(buf)
			b.chunks = append(b.chunks, buf)
			m.Chunks = append(m.Chunks, sha256.Sum256(buf))
			m.Size += uint64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	copy(m.SHA256[:], whole.Sum(nil))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[m.CID()] = b
	s.complete[m.CID()] = true
	return m, nil
}

func (s *memStore) blob(c cid.Cid) (*memBlob, error) {
	b := s.blobs[c]
	if b == nil {
		return nil, fmt.Errorf("%w: %s", blobstore.ErrNotFound, c)
	}
	return b, nil
}

func (s *memStore) Has(ctx context.Context, c cid.Cid) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.complete[c], nil
}

func (s *memStore) Manifest(ctx context.Context, c cid.Cid) (*blobstore.Manifest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(c)
	if err != nil {
		return nil, err
	}
	return b.m, nil
}

func (s *memStore) Delete(ctx context.Context, c cid.Cid) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.blob(c); err != nil {
		return err
	}
	delete(s.blobs, c)
	delete(s.complete, c)
	return nil
}

func (s *memStore) BeginPartial(ctx context.Context, m *blobstore.Manifest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blobs[m.CID()] == nil {
		s.blobs[m.CID()] = &memBlob{m: m, chunks: make([][]byte, len(m.Chunks))}
	}
	return nil
}

func (s *memStore) PutChunk(ctx context.Context, c cid.Cid, i int, data []byte) error {
	return s.PutChunkSum(ctx, c, i, data, sha256.Sum256(data))
}

func (s *memStore) PutChunkSum(ctx context.Context, c cid.Cid, i int, data []byte, sum [32]byte) error {
	s.mu.Lock()
	b, err := s.blob(c)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if i < 0 || i >= len(b.m.Chunks) || len(data) != b.m.ChunkLen(i) || sum != b.m.Chunks[i] {
		return fmt.Errorf("chunk %d: %w", i, blobstore.ErrInvalidData)
	}
	cp := bytes.Clone(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	b.chunks[i] = cp
	return nil
}

func (s *memStore) HaveChunks(ctx context.Context, c cid.Cid) ([]bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(c)
	if err != nil {
		return nil, err
	}
	have := make([]bool, len(b.chunks))
	for i, ch := range b.chunks {
		have[i] = ch != nil
	}
	return have, nil
}

func (s *memStore) ReadChunk(ctx context.Context, c cid.Cid, i int, dst []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(c)
	if err != nil {
		return dst, err
	}
	if i < 0 || i >= len(b.chunks) || b.chunks[i] == nil {
		return dst, fmt.Errorf("chunk %d: %w", i, blobstore.ErrNotFound)
	}
	return append(dst, b.chunks[i]...), nil
}

func (s *memStore) ServeChunk(ctx context.Context, c cid.Cid, i int, dst []byte) ([]byte, error) {
	return s.ReadChunk(ctx, c, i, dst)
}

func (s *memStore) Commit(ctx context.Context, c cid.Cid) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := s.blob(c)
	if err != nil {
		return err
	}
	for _, ch := range b.chunks {
		if ch == nil {
			return blobstore.ErrIncomplete
		}
	}
	s.complete[c] = true
	return nil
}

func (s *memStore) Close() error { return nil }
