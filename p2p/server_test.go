package p2p

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/npu-agent/npu-agent/blobstore"
)

// partialMem is an in-memory store holding the listed chunks of a 3-chunk blob as a partial blob.
func partialMem(t *testing.T, ctx context.Context, have ...int) (*memStore, *blobstore.Manifest, [][]byte) {
	t.Helper()
	st := newMemStore()
	m, chunks := manifestOf(bytes.Repeat([]byte("npu"), blobstore.ChunkSize))
	if err := st.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	for _, i := range have {
		if err := st.PutChunk(ctx, m.CID(), i, chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	return st, m, chunks
}

// servePipe runs a server for st on one end of a pipe; done gets serve's result. The client end is closed at
// cleanup.
func servePipe(t *testing.T, ctx context.Context, st blobstore.ChunkStore) (srv *server, client net.Conn, done <-chan error) {
	t.Helper()
	srv = newServer(ctx, st, testLog)
	client, server := net.Pipe()
	d := make(chan error, 1)
	go func() { d <- srv.serve(server, nil); server.Close() }()
	t.Cleanup(func() { client.Close() })
	return srv, client, d
}

// The server's request loop over net.Pipe against an in-memory store: several requests on one stream, chunks of
// a partial blob, and the error answers.
func TestServerOverPipe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, m, chunks := partialMem(t, ctx, 0, 2)
	blob := m.CID()
	_, client, done := servePipe(t, ctx, st)

	// Manifest of a partial blob.
	if err := writeFrame(client, msgGetManifest, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	got, err := readManifest(client, blob)
	if err != nil || got.CID() != blob {
		t.Fatalf("manifest: %v", err)
	}
	// HAVE.
	if err := writeFrame(client, msgGetHave, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	_, p, err := readResponse(client, nil, msgHave)
	if err != nil {
		t.Fatal(err)
	}
	have, err := decodeHave(p, 3)
	if err != nil || !have[0] || have[1] || !have[2] {
		t.Fatalf("have = %v, %v", have, err)
	}
	// Chunks, one not held and one past the end.
	rs := []chunkRange{{0, 3}, {7, 1}}
	if err := writeFrame(client, msgGetChunks, encodeGetChunks(blob, rs)); err != nil {
		t.Fatal(err)
	}
	var gotIdx, missing []int
	err = readChunks(client, m, rs, func(i int, data []byte) error {
		if data == nil {
			missing = append(missing, i)
		} else if bytes.Equal(data, chunks[i]) {
			gotIdx = append(gotIdx, i)
		}
		return nil
	})
	if err != nil || len(gotIdx) != 2 || len(missing) != 2 || missing[0] != 1 || missing[1] != 7 {
		t.Fatalf("chunks: got %v missing %v, %v", gotIdx, missing, err)
	}
	// An unknown blob is an ERROR answer and the stream goes on.
	other := testCID("other")
	if err := writeFrame(client, msgGetHave, other.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readResponse(client, nil, msgHave); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("unknown blob: %v", err)
	}
	// A malformed request is answered, then the server stops.
	if err := writeFrame(client, msgGetChunks, encodeGetChunks(blob, []chunkRange{{0, 0}})); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readResponse(client, nil, msgChunk); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("malformed request: %v", err)
	}
	if err := <-done; !errors.Is(err, errStopServing) {
		t.Fatalf("server ended with %v", err)
	}
}

// readChunks is readChunksSummed for a test client that needs no digests and forwards nothing.
func readChunks(r io.Reader, m *blobstore.Manifest, rs []chunkRange, fn func(i int, data []byte) error) error {
	return readChunksSummed(r, m, rs, nil, func(i int, data []byte, _ [32]byte) error { return fn(i, data) })
}
