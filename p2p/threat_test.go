package p2p

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
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

// Threat 9.2 "record flood": five producers (any identity is a producer when no trust list is set) flood the
// record book with records claiming a creation time 9 minutes ahead. Each producer's records evict only its own
// (per-producer cap), the total cap evicts from the largest producer, future times are clamped to receipt, and
// the log is appended and compacted rarely, never rewritten per insert.
func TestThreatRecordFlood(t *testing.T) {
	t.Parallel()
	const max, perProducer = 200, 50
	path := filepath.Join(t.TempDir(), RecordsFile)
	b, err := openRecordBookLimits(path, newTrustPolicy("", nil, nil), testLog, max, perProducer)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	seal := func(k crypto.PrivKey, id peer.ID, model string, created time.Time) SignedRecord {
		r := sampleRecord(id)
		r.ModelID, r.Created = model, created
		sr, err := SealRecord(r, k)
		if err != nil {
			t.Fatal(err)
		}
		sr, err = OpenRecord(sr.Envelope, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return sr
	}
	honestKey, honestID := newKey(t)
	var honest [][32]byte
	for i := range 10 {
		sr := seal(honestKey, honestID, fmt.Sprintf("honest-%d", i), time.Now().Add(-time.Hour))
		if ok, err := b.add(sr); !ok || err != nil {
			t.Fatalf("honest record: %v, %v", ok, err)
		}
		honest = append(honest, sr.ID)
	}
	var offered int64
	for f := range 5 {
		k, id := newKey(t)
		for i := range 100 {
			sr := seal(k, id, fmt.Sprintf("flood-%d-%d", f, i), time.Now().Add(9*time.Minute))
			offered += int64(entryLenPrefix + len(sr.Envelope))
			b.add(sr)
		}
	}
	late := seal(honestKey, honestID, "honest-late", time.Now())
	b.add(late)
	b.mu.Lock()
	kept, producers, written := len(b.byID), maps.Clone(b.byProducer), b.written
	_, lateKept := b.byID[late.ID]
	missing := 0
	for _, id := range honest {
		if _, ok := b.byID[id]; !ok {
			missing++
		}
	}
	b.mu.Unlock()
	t.Logf("records kept %d of %d offered; per producer %v; bytes written %d for %d offered", kept, 511,
		slices.Collect(maps.Values(producers)), written, offered)
	if missing > 0 || !lateKept {
		t.Errorf("%d of the honest producer's records evicted (late kept: %v)", missing, lateKept)
	}
	if kept > max {
		t.Errorf("%d records kept, cap %d", kept, max)
	}
	for p, n := range producers {
		if n > perProducer {
			t.Errorf("producer %s holds %d records, cap %d", p, n, perProducer)
		}
	}
	if written > 2*offered {
		t.Errorf("%d bytes written to the log for %d bytes of records offered", written, offered)
	}
	// The late honest record is newer than every flood record that claimed to come from the future.
	if rs := b.records("", ""); len(rs) == 0 || rs[0].ID != late.ID {
		t.Errorf("newest record is not the one received last")
	}
	// The log reloads to the same set.
	b.close()
	b2, err := openRecordBookLimits(path, newTrustPolicy("", nil, nil), testLog, max, perProducer)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.close()
	if len(b2.byID) != kept {
		t.Errorf("reloaded %d records, kept %d", len(b2.byID), kept)
	}
}

// Member (which rollout status intake asks) counts a peer that connected, and not a key that never did: a
// member relaying reports signed by throwaway keys gets them ignored. With an allowlist, only its peers count.
func TestThreatMembership(t *testing.T) {
	t.Parallel()
	victim := startNode(t, "", nil)
	a := hostilePeers(t, 1, hostile.PeerOptions{})[0]
	if err := a.Connect(t.Context(), peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	_, stranger := newKey(t)
	eventually(t, "connected peer is a member", func() bool { return victim.Member(a.ID()) })
	if victim.Member(stranger) {
		t.Error("a key that never connected counts as a member")
	}
	if !victim.Member(victim.ID()) {
		t.Error("self is not a member")
	}
	_, listed := newKey(t)
	allowing := startNode(t, "", func(c *Config) { c.Allowlist = []peer.ID{listed} })
	if !allowing.Member(listed) || allowing.Member(a.ID()) {
		t.Error("with an allowlist, membership is the allowlist")
	}
}

// Threat 9.2 "no fleet key": by default a node without a fleet key does not register the chunk protocol, so a
// host that connects cannot fetch (or even ask for) a blob; `fleet-key new` makes a key ReadFleetKey accepts.
func TestThreatNoFleetKeyServesNothing(t *testing.T) {
	t.Parallel()
	victim := startNode(t, "", func(c *Config) { c.ServeWithoutFleetKey = false })
	data := randomBlob(t, blobstore.ChunkSize+5)
	blob := put(t, victim, data)
	if victim.ServesBlobs() {
		t.Fatal("a node without a fleet key serves blobs")
	}
	outsider := startNode(t, "", nil)
	connect(t, outsider, victim)
	if err := fetch(t, outsider, blob, victim); err == nil {
		t.Fatal("fetched a blob from a node without a fleet key")
	}
	if _, err := outsider.store.Manifest(t.Context(), blob); err == nil {
		t.Error("the outsider holds the manifest")
	}

	path := filepath.Join(t.TempDir(), "fleet.key")
	if err := WriteFleetKey(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("fleet key file mode: %v, %v", fi, err)
	}
	if k, err := ReadFleetKey(path); err != nil || len(k) != 32 {
		t.Fatalf("read the new fleet key: %v", err)
	}
	if err := WriteFleetKey(path); err == nil {
		t.Error("WriteFleetKey replaced an existing key")
	}
}

// Threat 9.2 "oversized rollout source": a fetch that expects a size (a rollout manifest's file size) aborts as
// soon as the blob's manifest claims more, before any chunk is stored.
func TestThreatFetchExpectedSize(t *testing.T) {
	t.Parallel()
	seed, fetcher := startNode(t, "", nil), startNode(t, "", nil)
	data := randomBlob(t, 3*blobstore.ChunkSize)
	blob := put(t, seed, data)
	connect(t, fetcher, seed)
	ctx := blobstore.WithExpectedSize(t.Context(), 10)
	if err := fetcher.Fetch(ctx, blob, []peer.ID{seed.ID()}, nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("fetch of a blob larger than expected: %v, want ErrTooLarge", err)
	}
	if seed.srv.served.Load() != 0 {
		t.Errorf("%d chunks served before the size check", seed.srv.served.Load())
	}
	if _, err := fetcher.store.Manifest(t.Context(), blob); err == nil {
		t.Error("a partial blob was begun")
	}
	// The exact size fetches.
	ctx = blobstore.WithExpectedSize(t.Context(), uint64(len(data)))
	if err := fetcher.Fetch(ctx, blob, []peer.ID{seed.ID()}, nil); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, fetcher, blob, data)
}
