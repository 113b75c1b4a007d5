package server

import (
	"context"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"io"
	"testing"
)

// BenchmarkBlobStream measures GET /v1/blobs through the unix socket into a discarding reader: the API's cost on
// top of the store's read speed.
func BenchmarkBlobStream(b *testing.B) {
	agent := newFakeAgent()
	data := make([]byte, 64<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	c := agent.add(data)
	ts := startServer(b, agent, Options{})
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		rd, err := ts.client.Blob(context.Background(), c)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, rd); err != nil || n != int64(len(data)) {
			b.Fatal(n, err)
		}
		rd.Close()
	}
}

// BenchmarkEnsure measures one small ensure round trip (JSON both ways) over the socket.
func BenchmarkEnsure(b *testing.B) {
	agent := newFakeAgent()
	c := agent.add([]byte("blob"))
	agent.ensure = func(context.Context, api.EnsureRequest) (api.EnsureResponse, error) {
		return api.EnsureResponse{CID: c, Path: "/var/lib/npu-agent/blobs/x.blob", Source: blobstore.SourceStore, Size: 4}, nil
	}
	ts := startServer(b, agent, Options{})
	req := api.EnsureRequest{Model: "/m.xml", Profile: testProfile()}
	for b.Loop() {
		if _, err := ts.client.Ensure(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
