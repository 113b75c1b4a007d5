package p2p

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
)

func putIndex(b []byte, i int) { binary.LittleEndian.PutUint32(b, uint32(i)) }

// rpc opens a chunk-protocol stream to p, sends one request and returns the stream for the response. The stream
// is reset when ctx ends and gets ctx's deadline, if any, or timeout.
func rpc(ctx context.Context, h host.Host, p peer.ID, t msgType, payload []byte, timeout time.Duration) (network.Stream, func(), error) {
	st, err := h.NewStream(ctx, p, ChunkProtocol)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	done := func() {
		stop()
		st.Close()
	}
	dl := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	st.SetDeadline(dl)
	if err := writeFrame(st, t, payload); err != nil {
		st.Reset()
		done()
		return nil, nil, err
	}
	if err := st.CloseWrite(); err != nil {
		st.Reset()
		done()
		return nil, nil, err
	}
	return st, done, nil
}

// readResponse reads one frame, turning an ERROR frame into its error and anything but want into ErrProtocol.
func readResponse(r io.Reader, buf []byte, want ...msgType) (msgType, []byte, error) {
	t, p, err := readFrame(r, buf)
	if err != nil {
		return 0, nil, noEOF(err)
	}
	if t == msgError {
		return 0, nil, decodeError(p)
	}
	for _, w := range want {
		if t == w {
			return t, p, nil
		}
	}
	return 0, nil, fmt.Errorf("%w: unexpected %s frame", ErrProtocol, t)
}

// getManifest fetches blob's manifest from p and checks that it hashes to the CID.
func getManifest(ctx context.Context, h host.Host, p peer.ID, blob cid.Cid, timeout time.Duration) (*blobstore.Manifest, error) {
	st, done, err := rpc(ctx, h, p, msgGetManifest, blob.Bytes(), timeout)
	if err != nil {
		return nil, err
	}
	defer done()
	return readManifest(st, blob)
}

func readManifest(r io.Reader, blob cid.Cid) (*blobstore.Manifest, error) {
	_, b, err := readResponse(r, nil, msgManifest)
	if err != nil {
		return nil, err
	}
	want, err := blobstore.Digest(blob)
	if err != nil {
		return nil, err
	}
	if sha256.Sum256(b) != want {
		return nil, fmt.Errorf("manifest from peer: %w", blobstore.ErrInvalidData)
	}
	return blobstore.DecodeManifest(b)
}

// getHave asks p which chunks of blob (n chunks) it holds verified.
func getHave(ctx context.Context, h host.Host, p peer.ID, blob cid.Cid, n int, timeout time.Duration) ([]bool, error) {
	st, done, err := rpc(ctx, h, p, msgGetHave, blob.Bytes(), timeout)
	if err != nil {
		return nil, err
	}
	defer done()
	_, b, err := readResponse(st, nil, msgHave)
	if err != nil {
		return nil, err
	}
	return decodeHave(b, n)
}

// readChunks is readChunksSummed for a caller that needs no digests.
func readChunks(r io.Reader, m *blobstore.Manifest, rs []chunkRange, buf []byte, fn func(i int, data []byte) error) error {
	return readChunksSummed(r, m, rs, buf, func(i int, data []byte, _ [32]byte) error { return fn(i, data) })
}

// readChunksSummed reads the answer to a GET_CHUNKS for rs: exactly one CHUNK or NO_CHUNK frame per requested
// index, in request order. fn gets each index with its bytes (nil for NO_CHUNK) and their sha2-256, computed
// piece by piece while the bytes arrived (so a fetch worker does not hash the whole chunk after its last byte
// before it asks for the next, and each piece is hashed while it is still in the CPU's cache); the bytes are
// valid only during the call. The chunk length is checked against the manifest before fn sees it; the content is
// fn's to verify (against the digest).
func readChunksSummed(r io.Reader, m *blobstore.Manifest, rs []chunkRange, buf []byte, fn func(i int, data []byte, sum [32]byte) error) error {
	hr := &chunkHasher{r: r, h: sha256.New()}
	r = hr
	for _, cr := range rs {
		for i := int(cr.First); i < int(cr.First)+int(cr.Count); i++ {
			hr.next()
			t, p, err := readResponse(r, buf, msgChunk, msgNoChunk)
			if err != nil {
				return err
			}
			got, data, err := decodeChunkIndex(t, p)
			if err != nil {
				return err
			}
			if got != i {
				return fmt.Errorf("%w: got chunk %d, want %d", ErrProtocol, got, i)
			}
			if t == msgNoChunk {
				data = nil
			} else if len(data) != m.ChunkLen(i) {
				return fmt.Errorf("%w: chunk %d is %d bytes, want %d", ErrProtocol, i, len(data), m.ChunkLen(i))
			}
			if err := fn(i, data, hr.sum()); err != nil {
				return err
			}
		}
	}
	return nil
}

// chunkHasher passes reads through to r and hashes each frame's bytes after its header and chunk index as they are
// read. readFrame reads a frame's header with a read of exactly its length, then its payload, so the position in
// the frame is known; next starts a frame.
type chunkHasher struct {
	r   io.Reader
	h   hash.Hash
	pos int // bytes of the current frame read so far
}

func (c *chunkHasher) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if skip := max(frameHeaderLen+chunkFrameOverhead-c.pos, 0); n > skip {
		c.h.Write(p[skip:n])
	}
	c.pos += n
	return n, err
}

func (c *chunkHasher) next() {
	c.pos = 0
	c.h.Reset()
}

// sum is the digest of the current frame's chunk bytes (meaningful for a CHUNK frame read whole).
func (c *chunkHasher) sum() (s [32]byte) {
	c.h.Sum(s[:0])
	return s
}

// putChunk stores a received chunk with the digest computed as it arrived, where the store takes it.
func putChunk(ctx context.Context, st blobstore.ChunkStore, blob cid.Cid, i int, data []byte, sum [32]byte) error {
	if sp, ok := st.(blobstore.ChunkSumPutter); ok {
		return sp.PutChunkSum(ctx, blob, i, data, sum)
	}
	return st.PutChunk(ctx, blob, i, data)
}
