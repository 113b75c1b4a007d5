package p2p

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/hostile"
)

// openWatch sends WATCH_HAVE for blob (n chunks) on client and returns the bitmap of the HAVE that opens the answer.
func openWatch(t *testing.T, client io.ReadWriter, blob cid.Cid, n int) []bool {
	t.Helper()
	if err := writeFrame(client, msgWatchHave, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	_, p, err := readResponse(client, nil, msgHave)
	if err != nil {
		t.Fatal(err)
	}
	have, err := decodeHave(p, n)
	if err != nil {
		t.Fatal(err)
	}
	return have
}

// putPublished stores chunk i of blob in st and tells srv's watches of it, as a transfer does (the hub only: a
// resync's shared bitmap is left as it is).
func putPublished(t *testing.T, ctx context.Context, srv *server, st blobstore.ChunkStore, blob cid.Cid, i int, data []byte) {
	t.Helper()
	if err := st.PutChunk(ctx, blob, i, data); err != nil {
		t.Fatal(err)
	}
	srv.haves.publish(blob, i)
}

// WATCH_HAVE over a pipe: the bitmap first, then each published chunk at once as HAVE_ADD, a chunk put
// straight into the store within watchResync, and the end of the watch once the blob is complete.
func TestServerWatchHave(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, m, chunks := partialMem(t, ctx, 0)
	blob := m.CID()
	srv, client, done := servePipe(t, ctx, st)
	if have := openWatch(t, client, blob, 3); !have[0] || have[1] || have[2] {
		t.Fatalf("have = %v", have)
	}
	// Published: pushed well before the resync.
	t0 := time.Now()
	putPublished(t, ctx, srv, st, blob, 2, chunks[2])
	_, p, err := readResponse(client, nil, msgHaveAdd)
	if err != nil {
		t.Fatal(err)
	}
	if idx, err := decodeHaveAdd(p, 3); err != nil || len(idx) != 1 || idx[0] != 2 {
		t.Fatalf("have add = %v, %v", idx, err)
	}
	if d := time.Since(t0); d > watchResync/2 {
		t.Errorf("published chunk pushed after %v", d)
	}
	// Not published: found by the resync.
	if err := st.PutChunk(ctx, blob, 1, chunks[1]); err != nil {
		t.Fatal(err)
	}
	_, p, err = readResponse(client, nil, msgHaveAdd)
	if idx, err2 := decodeHaveAdd(p, 3); err != nil || err2 != nil || len(idx) != 1 || idx[0] != 1 {
		t.Fatalf("have add = %v, %v %v", idx, err, err2)
	}
	// Complete: the watch ends and the stream takes the next request.
	if err := writeFrame(client, msgGetHave, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readResponse(client, nil, msgHave); err != nil {
		t.Fatal(err)
	}
	client.Close()
	if err := <-done; err != nil && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("server ended with %v", err)
	}
	if n := len(srv.haves.subs); n != 0 {
		t.Errorf("%d blobs still watched", n)
	}
}

// A chain fetch: c fetches from b while b fetches from a; b's chunks reach c through WATCH_HAVE pushes.
func TestFetchChainPushesHave(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 8<<20)
	a, b, c := startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, a, data)
	connect(t, b, a)
	connect(t, c, b)
	a.srv.beforeSend = func(int, []byte) { time.Sleep(50 * time.Millisecond) }
	errs := make(chan error, 2)
	go func() { errs <- fetch(t, b, blob, a) }()
	eventually(t, "b has a chunk", func() bool { return a.srv.served.Load() > 0 })
	go func() { errs <- fetch(t, c, blob, b) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	checkBlob(t, c, blob, data)
}

// Threat 9.2 "watch flood": a member opens many WATCH_HAVE streams on a partial blob and never reads. Past
// maxWatchesPerPeer each is answered busy; the heap stays bounded and an honest peer still fetches.
// Not parallel: the heap is the process's, and parallel tests would count their own allocations.
func TestThreatWatchFlood(t *testing.T) {
	victim := startNode(t, "", nil)
	honest := startNode(t, "", nil)
	data := randomBlob(t, 3*blobstore.ChunkSize+17)
	blob := putPartial(t, victim, data, 0)
	ai := peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()}
	a := hostilePeers(t, 1, hostile.PeerOptions{})[0]
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := a.Connect(ctx, ai); err != nil {
		t.Fatal(err)
	}
	heap0, g0 := heapInuse(), runtime.NumGoroutine()
	req := hostile.Frame(byte(msgWatchHave), uint32(len(blob.Bytes())), blob.Bytes())
	opened, _ := a.OpenStreams(ctx, victim.ID(), ChunkProtocol, 2*maxStreamsPerPeer, req)
	time.Sleep(time.Second)
	victim.srv.mu.Lock()
	watching := victim.srv.watching
	victim.srv.mu.Unlock()
	heap1, g1 := heapInuse(), runtime.NumGoroutine()
	t.Logf("watch flood: %d streams opened, %d watches served; heap in use %d -> %d MiB, goroutines %d -> %d",
		opened, watching, heap0>>20, heap1>>20, g0, g1)
	if watching > maxWatchesPerPeer {
		t.Errorf("%d watches served for one peer, budget %d", watching, maxWatchesPerPeer)
	}
	if heap1 > heap0+16<<20 {
		t.Errorf("heap grew by %d MiB under the flood", (heap1-heap0)>>20)
	}
	// The honest peer's own watch is within its budget: it fetches the rest once the victim has it.
	connect(t, honest, victim)
	done := make(chan error, 1)
	go func() { done <- fetch(t, honest, blob, victim) }()
	m, chunks := manifestOf(data)
	for i := 1; i < len(chunks); i++ {
		if err := victim.store.PutChunk(ctx, m.CID(), i, chunks[i]); err != nil {
			t.Fatal(err)
		}
		victim.srv.haves.publish(blob, i)
	}
	if err := <-done; err != nil {
		t.Fatalf("honest fetch under watch flood: %v", err)
	}
	checkBlob(t, honest, blob, data)
	a.ResetStreams()
}

func TestDecodeHaveAddRejects(t *testing.T) {
	t.Parallel()
	good := encodeHaveAdd([]uint32{0, 5})
	if idx, err := decodeHaveAdd(good, 6); err != nil || len(idx) != 2 || idx[1] != 5 {
		t.Fatalf("good: %v %v", idx, err)
	}
	many := make([]uint32, maxHaveAdd+1)
	for name, p := range map[string][]byte{
		"empty":        {},
		"zero":         encodeHaveAdd(nil),
		"out of range": encodeHaveAdd([]uint32{6}),
		"too many":     encodeHaveAdd(many),
		"truncated":    good[:len(good)-1],
		"trailing":     append(append([]byte(nil), good...), 0),
	} {
		if _, err := decodeHaveAdd(p, 6); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// countingStore counts HaveChunks calls.
type countingStore struct {
	*memStore
	haves atomic.Int64
}

func (s *countingStore) HaveChunks(ctx context.Context, c cid.Cid) ([]bool, error) {
	s.haves.Add(1)
	return s.memStore.HaveChunks(ctx, c)
}

// The watches of a blob share the bitmap their resyncs read: one store read per resyncShare however many ask, with
// the chunks published since set in it.
func TestResyncBitmapShared(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	mem, m, chunks := partialMem(t, ctx, 0)
	st := &countingStore{memStore: mem}
	srv := newServer(ctx, st, testLog)
	blob := m.CID()
	for range 20 {
		if have, err := srv.recentHave(blob, nil); err != nil || !have[0] || have[1] || have[2] {
			t.Fatalf("have %v, %v", have, err)
		}
	}
	if n := st.haves.Load(); n != 1 {
		t.Fatalf("20 resyncs within %v read the store %d times, want 1", resyncShare, n)
	}
	// Published: in the shared bitmap at once. Not published (a put straight into the store): at the next read.
	if err := st.PutChunk(ctx, blob, 2, chunks[2]); err != nil {
		t.Fatal(err)
	}
	srv.storedChunk(blob, 2)
	if err := st.PutChunk(ctx, blob, 1, chunks[1]); err != nil {
		t.Fatal(err)
	}
	if have, err := srv.recentHave(blob, nil); err != nil || !have[2] || have[1] {
		t.Fatalf("after publishing chunk 2: have %v, %v", have, err)
	}
	time.Sleep(resyncShare + 10*time.Millisecond)
	if have, err := srv.recentHave(blob, nil); err != nil || !have[1] {
		t.Fatalf("after %v: have %v, %v, want chunk 1", resyncShare, have, err)
	}
	if n := st.haves.Load(); n != 2 {
		t.Fatalf("store read %d times, want 2", n)
	}
}

// A shared bitmap that lacks a chunk the watch has announced is not taken for a drop: the watch asks the store
// itself, sends no whole HAVE (which would withdraw the chunk from its client) and goes on announcing.
func TestWatchStaleSharedBitmap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, m, chunks := partialMem(t, ctx, 0)
	blob := m.CID()
	srv, client, _ := servePipe(t, ctx, st)
	openWatch(t, client, blob, 3)
	putPublished(t, ctx, srv, st, blob, 2, chunks[2])
	if idx := readIndexes(t, client, msgHaveAdd); len(idx) != 1 || idx[0] != 2 {
		t.Fatalf("HAVE_ADD %v, want [2]", idx)
	}
	// Every resync from now on finds a bitmap read before chunk 2 was stored (its time in the future keeps it
	// shared; a read racing the publish can leave one so).
	srv.shared.mu.Lock()
	srv.shared.m = map[cid.Cid]*haveSnap{blob: {at: time.Now().Add(time.Hour), have: []bool{true, false, false}}}
	srv.shared.mu.Unlock()
	if err := st.PutChunk(ctx, blob, 1, chunks[1]); err != nil { // not published: found by a resync
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(5 * watchResync))
	if idx := readIndexes(t, client, msgHaveAdd); len(idx) != 1 || idx[0] != 1 { // a whole HAVE first fails here
		t.Fatalf("HAVE_ADD %v, want [1]", idx)
	}
}
