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

// readChunksSummed reads the answer to a GET_CHUNKS for rs: exactly one CHUNK or NO_CHUNK frame per requested
// index, in request order. fn gets each index with its bytes (nil for NO_CHUNK) and their sha2-256, computed
// piece by piece while the bytes arrived (so a fetch worker does not hash the whole chunk after its last byte
// before it asks for the next, and each piece is hashed while it is still in the CPU's cache); the bytes are
// valid only during the call. The chunk length is checked against the manifest before fn sees it; the content is
// fn's to verify (against the digest).
//
// begin, if not nil, is called once a CHUNK frame's index and length are checked, before its bytes are read: an
// arrival it returns receives the bytes (and forwards see them as they arrive, swarm_arriving.go) and is finished
// after fn, verified only if fn succeeded and the bytes match the manifest's digest. Without an arrival the bytes
// go to a pooled chunk buffer taken for that chunk only: a request waiting for its answer holds none.
func readChunksSummed(r io.Reader, m *blobstore.Manifest, rs []chunkRange, begin func(i, size int) *arrival,
	fn func(i int, data []byte, sum [32]byte) error) error {
	h := sha256.New()
	for _, cr := range rs {
		for i := int(cr.First); i < int(cr.First)+int(cr.Count); i++ {
			t, n, err := readHeader(r)
			if err != nil {
				return noEOF(err)
			}
			if t == msgChunk && n >= chunkFrameOverhead {
				if err := readChunk(r, m, i, n-chunkFrameOverhead, h, begin, fn); err != nil {
					return err
				}
				continue
			}
			// Any other type is refused from its header; what is left (ERROR, NO_CHUNK, a short CHUNK) is small.
			if t != msgError && t != msgNoChunk && t != msgChunk {
				return fmt.Errorf("%w: unexpected %s frame", ErrProtocol, t)
			}
			t, p, err := readPayload(r, t, n, nil)
			if err != nil {
				return err
			}
			if t == msgError {
				return decodeError(p)
			}
			got, _, err := decodeChunkIndex(t, p)
			if err != nil {
				return err
			}
			if got != i {
				return fmt.Errorf("%w: got chunk %d, want %d", ErrProtocol, got, i)
			}
			if err := fn(i, nil, [32]byte{}); err != nil {
				return err
			}
		}
	}
	return nil
}

// readChunk reads the rest of a CHUNK frame for chunk i whose header announced size chunk bytes: the index, then
// the bytes, hashed (and handed to an arrival, if begin gives one) piece by piece as they arrive.
func readChunk(r io.Reader, m *blobstore.Manifest, i, size int, h hash.Hash, begin func(i, size int) *arrival,
	fn func(i int, data []byte, sum [32]byte) error) (err error) {
	var ib [chunkFrameOverhead]byte
	if _, err := io.ReadFull(r, ib[:]); err != nil {
		return fmt.Errorf("%w: CHUNK frame truncated: %w", ErrProtocol, noEOF(err))
	}
	got, _, err := decodeChunkIndex(msgChunk, ib[:])
	if err != nil {
		return err
	}
	if got != i {
		return fmt.Errorf("%w: got chunk %d, want %d", ErrProtocol, got, i)
	}
	if size != m.ChunkLen(i) {
		return fmt.Errorf("%w: chunk %d is %d bytes, want %d", ErrProtocol, i, size, m.ChunkLen(i))
	}
	var a *arrival
	if begin != nil {
		a = begin(i, size)
	}
	var data []byte
	if a != nil {
		data = a.buf
	} else {
		bp := getChunkBuf()
		defer putChunkBuf(bp)
		data = (*bp)[:size]
	}
	verified := false
	if a != nil {
		defer func() { a.finish(verified) }()
	}
	h.Reset()
	for pos := 0; pos < size; {
		k, err := r.Read(data[pos:])
		h.Write(data[pos : pos+k])
		if pos += k; a != nil {
			a.progress(pos)
		}
		if err != nil && pos < size {
			return fmt.Errorf("%w: CHUNK frame truncated: %w", ErrProtocol, noEOF(err))
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	if err := fn(i, data, sum); err != nil {
		return err
	}
	verified = sum == m.Chunks[i]
	return nil
}

// putChunk stores a received chunk with the digest computed as it arrived, where the store takes it.
func putChunk(ctx context.Context, st blobstore.ChunkStore, blob cid.Cid, i int, data []byte, sum [32]byte) error {
	if sp, ok := st.(blobstore.ChunkSumPutter); ok {
		return sp.PutChunkSum(ctx, blob, i, data, sum)
	}
	return st.PutChunk(ctx, blob, i, data)
}
