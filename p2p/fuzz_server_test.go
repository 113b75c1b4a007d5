package p2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/hostile"
)

// Bounds of FuzzChunkServer.
const (
	fuzzMaxInput = 64 << 10
	// fuzzHandlerDeadline: the handler must return this long after the client half-closed its stream (it reads
	// EOF at once; nothing it does may wait for a timeout).
	fuzzHandlerDeadline = 5 * time.Second
	// fuzzAllocBase is what serving one input may allocate besides per-byte work: a frame header claiming a
	// payload (up to 4 GiB, or a response type's 1 MiB chunk or 2 MiB manifest) must never be allocated.
	fuzzAllocBase = 512 << 10
	// fuzzAllocPerByte covers what each request byte may cost (decoded requests, encoded answers).
	fuzzAllocPerByte = 64
	// fuzzChunkBuf is the pooled chunk buffer a GET_CHUNKS takes once it reads a chunk from the store, allocated
	// when the pool has none at hand.
	fuzzChunkBuf = frameHeaderLen + chunkFrameOverhead + blobstore.ChunkSize
)

// fuzzStream is a stream of one input: reads the input to EOF, counts what the server writes.
type fuzzStream struct {
	io.Reader
	written int64
}

func (s *fuzzStream) Write(p []byte) (int, error)      { s.written += int64(len(p)); return len(p), nil }
func (s *fuzzStream) SetReadDeadline(time.Time) error  { return nil }
func (s *fuzzStream) SetWriteDeadline(time.Time) error { return nil }

func fuzzHeader(t byte, n uint32, payload []byte) []byte {
	b := make([]byte, frameHeaderLen, frameHeaderLen+len(payload))
	b[0] = t
	binary.LittleEndian.PutUint32(b[1:], n)
	return append(b, payload...)
}

// getChunksFrames counts the whole GET_CHUNKS frames among the request frames at the start of in: each may take a
// chunk buffer from the pool, which allocates one when it has none at hand.
func getChunksFrames(in []byte) int {
	n := 0
	for len(in) >= frameHeaderLen {
		t, l := msgType(in[0]), int64(binary.LittleEndian.Uint32(in[1:]))
		if t == 0 || t >= msgTypeEnd || !isRequest(t) || l > int64(maxPayload[t]) || l > int64(len(in)-frameHeaderLen) {
			break
		}
		if t == msgGetChunks {
			n++
		}
		in = in[frameHeaderLen+l:]
	}
	return n
}

func fuzzSeeds(blob cid.Cid) [][]byte {
	get := func(t msgType, p []byte) []byte { return fuzzHeader(byte(t), uint32(len(p)), p) }
	chunks := encodeGetChunks(blob, []chunkRange{{0, 3}, {5, 2}})
	seeds := [][]byte{
		nil,
		get(msgGetManifest, blob.Bytes()),
		get(msgGetHave, blob.Bytes()),
		get(msgWatchHave2, blob.Bytes()),
		get(msgGetChunks, chunks),
		append(append(get(msgGetManifest, blob.Bytes()), get(msgGetHave, blob.Bytes())...), get(msgGetChunks, chunks)...),
		get(msgGetHave, testCID("unknown").Bytes()),
		get(msgGetChunks, encodeGetChunks(blob, []chunkRange{{0, 64}})),
		get(msgGetChunks, chunks[:len(chunks)-3]),    // payload shorter than its header claims
		fuzzHeader(byte(msgGetManifest), 3, nil)[:3], // truncated header
		append(get(msgGetHave, blob.Bytes()), 0xff),  // trailing garbage
		get(msgGetManifest, append(blob.Bytes(), 1)), // non-canonical CID
		fuzzHeader(byte(msgGetChunks), 600, chunks),  // header claims more than it sends
	}
	// Oversized headers of every frame type (and unassigned ones): the largest allowed payload plus one, and 4 GiB.
	for _, t := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 127, 255} {
		limit := uint32(1 << 20)
		if t > 0 && t < int(msgTypeEnd) {
			limit = uint32(maxPayload[t])
		}
		seeds = append(seeds, fuzzHeader(byte(t), limit+1, nil), fuzzHeader(byte(t), 0xffffffff, []byte{1, 2, 3}),
			fuzzHeader(byte(t), limit, nil))
	}
	return seeds
}

// FuzzChunkServer feeds arbitrary bytes to the chunk-protocol server, twice per input: to its request loop over
// an in-memory stream, measuring what it allocates, and to the real libp2p handler over a loopback TCP stream.
// It asserts that the server never panics, that the handler returns within fuzzHandlerDeadline of the client's
// half-close, and that allocations stay within fuzzAllocBase + fuzzAllocPerByte per input byte (plus one chunk
// buffer when chunks were served): nothing is ever allocated from a frame header's claimed length.
func FuzzChunkServer(f *testing.F) {
	ctx := context.Background()
	store := newMemStore()
	data := bytes.Repeat([]byte("fuzz"), (3*blobstore.ChunkSize-100)/4) // 3 chunks, the last short
	m, err := store.Put(ctx, bytes.NewReader(data))
	if err != nil {
		f.Fatal(err)
	}
	blob := m.CID()
	for _, s := range fuzzSeeds(blob) {
		f.Add(s)
	}
	srv := newServer(ctx, store, testLog)

	// The real stream: a bare libp2p host serving the chunk protocol with the server's handler, and a client.
	hosts, err := hostile.NewPeers(2, hostile.PeerOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		for _, h := range hosts {
			h.Close()
		}
	})
	server, client := hosts[0], hosts[1]
	handled := make(chan struct{}, 1)
	server.Host.SetStreamHandler(ChunkProtocol, func(st network.Stream) {
		srv.handle(st)
		handled <- struct{}{}
	})
	if err := client.Connect(ctx, peer.AddrInfo{ID: server.ID(), Addrs: server.Host.Addrs()}); err != nil {
		f.Fatal(err)
	}
	var mu sync.Mutex // one input at a time per process: the handler channel and the MemStats deltas need it

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > fuzzMaxInput {
			in = in[:fuzzMaxInput]
		}
		mu.Lock()
		defer mu.Unlock()

		// 1. The request loop, allocations measured.
		st := &fuzzStream{Reader: bytes.NewReader(in)}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serve(st, nil)
		}()
		select {
		case <-done:
		case <-time.After(fuzzHandlerDeadline):
			t.Fatalf("the request loop did not return within %v of the input's end", fuzzHandlerDeadline)
		}
		runtime.ReadMemStats(&after)
		bound := uint64(fuzzAllocBase + fuzzAllocPerByte*len(in) + fuzzChunkBuf*getChunksFrames(in))
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > bound {
			t.Fatalf("serving %d input bytes (%d written) allocated %d bytes, bound %d", len(in), st.written, alloc, bound)
		}

		// 2. The libp2p handler over a real stream.
		sctx, cancel := context.WithTimeout(ctx, fuzzHandlerDeadline)
		defer cancel()
		s, err := client.Host.NewStream(sctx, server.ID(), ChunkProtocol)
		if err != nil {
			t.Fatalf("open stream: %v", err)
		}
		defer s.Reset()
		s.SetDeadline(time.Now().Add(fuzzHandlerDeadline))
		s.Write(in) // may fail once the server refused a frame and stopped reading
		s.CloseWrite()
		io.Copy(io.Discard, io.LimitReader(s, 1<<30))
		select {
		case <-handled:
		case <-time.After(fuzzHandlerDeadline):
			t.Fatalf("the stream handler did not return within %v of the client's half-close", fuzzHandlerDeadline)
		}
	})
}
