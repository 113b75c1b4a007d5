package p2p

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/blobstore"
)

// A seed sends each chunk once while some chunk has not left it: a second request for a sent chunk gets NO_CHUNK
// until every chunk has been sent, then it is served again (counted as resent). A chunk counts as delivered only
// once the client asks again or closes.
func TestServerSeedSendsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	data := bytes.Repeat([]byte("npu"), blobstore.ChunkSize) // 3 chunks
	m, err := st.Put(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	blob := m.CID()
	srv, client, done := servePipe(t, ctx, st)
	ask := func(i int) bool {
		t.Helper()
		rs := []chunkRange{{uint32(i), 1}}
		if err := writeFrame(client, msgGetChunks, encodeGetChunks(blob, rs)); err != nil {
			t.Fatal(err)
		}
		got := false
		if err := readChunks(client, m, rs, func(_ int, d []byte) error { got = d != nil; return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, c := range []struct {
		chunk     int
		served    bool
		delivered int // after the request
	}{
		{0, true, 0},  // chunk 0 is not confirmed until the next request
		{0, false, 1}, // sent already, chunks 1 and 2 have not left: refused
		{1, true, 1},
		{1, false, 2},
		{2, true, 2},
		{0, true, 3}, // every chunk has left: served again
	} {
		if got := ask(c.chunk); got != c.served {
			t.Fatalf("chunk %d served = %v, want %v", c.chunk, got, c.served)
		}
		if s := srv.seeds.stats(blob); s.Delivered != c.delivered {
			t.Fatalf("after chunk %d: delivered %d, want %d", c.chunk, s.Delivered, c.delivered)
		}
	}
	client.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s := srv.seeds.stats(blob)
	want := SeedStats{Seed: true, Chunks: 3, Sent: 3, Delivered: 3, Resent: 1, Refused: 2, AllSent: true, AllDelivered: true}
	if s != want {
		t.Fatalf("stats %+v, want %+v", s, want)
	}
}

// A partial holder (a receiver forwarding) refuses nothing: each receiver forwards to every other.
func TestServerPartialServesAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, m, _ := partialMem(t, ctx, 0)
	blob := m.CID()
	srv, client, _ := servePipe(t, ctx, st)
	rs := []chunkRange{{0, 1}}
	for range 2 {
		if err := writeFrame(client, msgGetChunks, encodeGetChunks(blob, rs)); err != nil {
			t.Fatal(err)
		}
		got := false
		if err := readChunks(client, m, rs, func(_ int, d []byte) error { got = d != nil; return nil }); err != nil || !got {
			t.Fatalf("served %v, %v", got, err)
		}
	}
	if s := srv.seeds.stats(blob); s.Seed || s.Refused != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// A fleet distribution from one seed to several receivers: the seed sends every chunk once before it sends any
// twice, and every receiver completes.
func TestFetchSeedSendsOnce(t *testing.T) {
	t.Parallel()
	const receivers = 4
	data := randomBlob(t, 24<<20)
	seed := startNode(t, "", nil)
	blob := put(t, seed, data)
	seed.srv.beforeSend = func(int, []byte) { time.Sleep(20 * time.Millisecond) } // a scarce seed uplink
	rs := make([]*testNode, receivers)
	for i := range rs {
		rs[i] = startNode(t, "", nil)
		connect(t, rs[i], seed)
		for _, o := range rs[:i] {
			connect(t, rs[i], o)
		}
	}
	errs := make(chan error, receivers)
	for _, r := range rs {
		go func() { errs <- fetch(t, r, blob) }()
	}
	for range receivers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range rs {
		checkBlob(t, r, blob, data)
	}
	s := seed.SeedStats(blob)
	served := seed.ChunksServed()
	t.Logf("seed: %d chunks, served %d, resent %d, refused %d", s.Chunks, served, s.Resent, s.Refused)
	if !s.Seed || !s.AllSent || int64(s.Chunks)+s.Resent != served {
		t.Fatalf("seed stats %+v, served %d: want every chunk sent once before any twice", s, served)
	}
}

// A chunk that no peer holds, with nothing arriving, fails the fetch with ErrNoPeers after sourceTimeout, long
// before stallTimeout (a seed that left before sending every chunk).
func TestFetchOrphanChunkFails(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 2<<20)
	f, s := startNode(t, "", nil), startNode(t, "", nil)
	f.fp.stallTimeout = time.Minute
	f.fp.sourceTimeout = 300 * time.Millisecond
	blob := putPartial(t, s, data, 0)
	connect(t, f, s)
	began := time.Now()
	if err := fetch(t, f, blob, s); !errors.Is(err, ErrNoPeers) {
		t.Fatalf("err = %v, want ErrNoPeers", err)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Fatalf("failed after %s", d)
	}
}

// Threat 9.2 "first-send hog": a member asks the seed for half of a blob's chunks and forwards none of them. The
// seed refuses those chunks to honest receivers only while other chunks have not left it, then serves them
// again: an honest receiver still completes, at the cost of one more pass of the hogged chunks.
func TestThreatSeedFirstSendHog(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 8<<20) // 8 chunks and a bit
	seed, hog, honest := startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, seed, data)
	m, err := seed.store.Manifest(context.Background(), blob)
	if err != nil {
		t.Fatal(err)
	}
	connect(t, hog, seed)
	connect(t, honest, seed)
	connect(t, honest, hog)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, done, err := rpc(ctx, hog.Host(), seed.ID(), msgGetChunks, encodeGetChunks(blob, []chunkRange{{0, 4}}), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := readChunks(st, m, []chunkRange{{0, 4}}, func(int, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	done() // the hog closes: chunks 0-3 delivered to it, and it holds none of them
	if err := fetch(t, honest, blob, seed, hog); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, honest, blob, data)
	if s := seed.SeedStats(blob); s.Resent < 4 || !s.AllDelivered {
		t.Fatalf("seed stats %+v: want the hogged chunks sent again", s)
	}
}
