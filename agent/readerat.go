package agent

import (
	"context"
	"fmt"
	"io"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// storeReaderAt reads a stored blob at offsets, a chunk at a time, so the trailer parser can look at a blob's
// tail without reading (or holding) the whole blob. Chunks come back verified from the store.
type storeReaderAt struct {
	ctx   context.Context
	store blobstore.Store
	blob  cid.Cid
	size  int64
	idx   int    // index of the chunk in buf, -1 if none
	buf   []byte // one chunk
}

func newStoreReaderAt(ctx context.Context, s blobstore.Store, blob cid.Cid) (*storeReaderAt, error) {
	m, err := s.Manifest(ctx, blob)
	if err != nil {
		return nil, err
	}
	return &storeReaderAt{ctx: ctx, store: s, blob: blob, size: int64(m.Size), idx: -1}, nil
}

func (r *storeReaderAt) Size() int64 { return r.size }

func (r *storeReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= r.size {
			return n, io.EOF
		}
		i := int(pos / blobstore.ChunkSize)
		if i != r.idx {
			buf, err := r.store.ReadChunk(r.ctx, r.blob, i, r.buf[:0])
			if err != nil {
				return n, err
			}
			r.buf, r.idx = buf, i
		}
		n += copy(p[n:], r.buf[pos-int64(i)*blobstore.ChunkSize:])
	}
	return n, nil
}
