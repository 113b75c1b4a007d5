package p2p

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"

	"github.com/npu-agent/npu-agent/blobstore"
)

// The server's request loop over net.Pipe against an in-memory store: several requests on one stream, chunks of
// a partial blob, and the error answers.
func TestServerOverPipe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	data := bytes.Repeat([]byte("npu"), blobstore.ChunkSize) // 3 chunks
	m, chunks := manifestOf(data)
	blob := m.CID()
	if err := st.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := st.PutChunk(ctx, blob, 0, chunks[0]); err != nil {
		t.Fatal(err)
	}
	if err := st.PutChunk(ctx, blob, 2, chunks[2]); err != nil {
		t.Fatal(err)
	}
	srv := newServer(ctx, st, testLog)
	client, server := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- srv.serve(server, nil); server.Close() }()
	defer client.Close()

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
	err = readChunks(client, m, rs, nil, func(i int, data []byte) error {
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
