package p2p

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/hostile"
)

// heapInuse is the process's heap in use after a GC.
func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func hostilePeers(t *testing.T, n int, opts hostile.PeerOptions) []*hostile.Peer {
	t.Helper()
	ps, err := hostile.NewPeers(n, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		t.Cleanup(func() { p.Close() })
	}
	return ps
}

// Threat 9.2 "chunk flood": peers without the fleet key (none is set here: the node serves anyone, the worst
// case) open many chunk streams and send frame headers claiming the largest payloads (a CHUNK or MANIFEST frame,
// which a client never sends, and a GET_CHUNKS whose payload never comes). The server refuses response types
// from the header alone, reads requests into a fixed buffer, resets streams past a peer's budget and drops a
// request whose payload does not arrive in time: the heap stays bounded and an honest peer still fetches.
func TestThreatChunkFlood(t *testing.T) {
	victim := startNode(t, "", nil)
	honest := startNode(t, "", nil)
	data := randomBlob(t, 3*blobstore.ChunkSize+17)
	blob := put(t, victim, data)
	ai := peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()}

	const peers, streams = 4, 128
	attackers := hostilePeers(t, peers, hostile.PeerOptions{})
	heap0, g0 := heapInuse(), runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	headers := [][]byte{
		hostile.Frame(byte(msgChunk), uint32(maxPayload[msgChunk]), nil),
		hostile.Frame(byte(msgManifest), uint32(maxPayload[msgManifest]), nil),
		hostile.Frame(byte(msgGetChunks), uint32(maxPayload[msgGetChunks]), []byte{1, 2, 3}),
		hostile.Frame(byte(msgGetManifest), 1<<31, nil),
	}
	opened := 0
	for i, a := range attackers {
		if err := a.Connect(ctx, ai); err != nil {
			t.Fatal(err)
		}
		n, _ := a.OpenStreams(ctx, victim.ID(), ChunkProtocol, streams, headers[i%len(headers)])
		opened += n
	}
	// Give the server time to read every header (and to allocate, if it did).
	time.Sleep(time.Second)
	heap1, g1 := heapInuse(), runtime.NumGoroutine()
	alive := 0
	for _, a := range attackers {
		alive += a.Alive(200 * time.Millisecond)
	}
	t.Logf("flood: %d streams opened by %d peers, %d still open; heap in use %d -> %d MiB, goroutines %d -> %d, refused %d",
		opened, peers, alive, heap0>>20, heap1>>20, g0, g1, victim.srv.refused.Load())
	if heap1 > heap0+64<<20 {
		t.Errorf("heap grew by %d MiB under the flood", (heap1-heap0)>>20)
	}
	if alive > peers*maxStreamsPerPeer {
		t.Errorf("%d hostile streams still open, budget %d", alive, peers*maxStreamsPerPeer)
	}
	// An honest peer still fetches while the flood holds what it could.
	connect(t, honest, victim)
	if err := fetch(t, honest, blob, victim); err != nil {
		t.Fatalf("honest fetch under flood: %v", err)
	}
	checkBlob(t, honest, blob, data)
	for _, a := range attackers {
		a.ResetStreams()
	}
}

// Threat 9.2 "slow request": a GET_CHUNKS header whose payload never comes is dropped after
// requestReadTimeout, not held for the idle timeout.
func TestThreatRequestPayloadDeadline(t *testing.T) {
	t.Parallel()
	victim := startNode(t, "", nil)
	a := hostilePeers(t, 1, hostile.PeerOptions{})[0]
	if err := a.Connect(t.Context(), peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.OpenStreams(t.Context(), victim.ID(), ChunkProtocol, 1,
		hostile.Frame(byte(msgGetChunks), 100, nil)); err != nil {
		t.Fatal(err)
	}
	if n := a.Alive(requestReadTimeout + 5*time.Second); n != 0 {
		t.Fatalf("a stalled request held its stream past %v", requestReadTimeout)
	}
}
