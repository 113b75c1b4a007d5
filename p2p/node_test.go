package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Process-wide goroutines of libp2p dependencies, started once and never stopped.
		goleak.IgnoreAnyFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreTopFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2.(*defaultPolicy[...]).processItems"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2.(*Cache[...]).processItems"),
	)
}

var testLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func logger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return testLog
}

// testFetchParams keeps fetches of the tests short-lived when something goes wrong.
var testFetchParams = fetchParams{
	perPeer:        2,
	chunksPerReq:   2,
	requestTimeout: 5 * time.Second,
	rpcTimeout:     5 * time.Second,
	haveRefresh:    100 * time.Millisecond,
	stallTimeout:   10 * time.Second,
	sourceTimeout:  3 * time.Second,
	maxFailures:    2,
	cutThrough:     true,
}

type testNode struct {
	*Node
	store *badgerstore.Store
	dir   string
}

func loopbackConfig(dir string) Config {
	return Config{
		DataDir:       dir,
		ListenAddrs:   []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")},
		AllowLoopback: true,
		// Most tests run without a fleet key; TestNoFleetKeyServesNothing covers the default.
		ServeWithoutFleetKey: true,
	}
}

// startNode starts a node with its own store under dir (a new temp dir when empty), closed at cleanup.
func startNode(t *testing.T, dir string, mod func(*Config)) *testNode {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	st, err := badgerstore.Open(filepath.Join(dir, "store"), badgerstore.Options{Logger: testLog})
	if err != nil {
		t.Fatal(err)
	}
	cfg := loopbackConfig(filepath.Join(dir, "p2p"))
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(context.Background(), cfg, st, logger(t))
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	n.fp = testFetchParams
	tn := &testNode{Node: n, store: st, dir: dir}
	t.Cleanup(tn.close)
	return tn
}

func (tn *testNode) close() {
	tn.Node.Close()
	tn.store.Close()
}

func connect(t *testing.T, a, b *testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Host().Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
}

func randomBlob(t *testing.T, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	return b
}

func put(t *testing.T, tn *testNode, data []byte) cid.Cid {
	t.Helper()
	m, err := tn.store.Put(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return m.CID()
}

// putPartial stores only the listed chunks of data in tn, as a fetch interrupted there would.
func putPartial(t *testing.T, tn *testNode, data []byte, chunks ...int) cid.Cid {
	t.Helper()
	ctx := context.Background()
	m, chunkData := manifestOf(data)
	if err := tn.store.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	for _, i := range chunks {
		if err := tn.store.PutChunk(ctx, m.CID(), i, chunkData[i]); err != nil {
			t.Fatal(err)
		}
	}
	return m.CID()
}

func manifestOf(data []byte) (*blobstore.Manifest, [][]byte) {
	m := &blobstore.Manifest{Size: uint64(len(data)), ChunkSize: blobstore.ChunkSize, SHA256: sha256.Sum256(data)}
	var chunks [][]byte
	for off := 0; off < len(data); off += blobstore.ChunkSize {
		c := data[off:min(off+blobstore.ChunkSize, len(data))]
		chunks = append(chunks, c)
		m.Chunks = append(m.Chunks, sha256.Sum256(c))
	}
	return m, chunks
}

// checkBlob asserts that tn holds blob, complete, with exactly data.
func checkBlob(t *testing.T, tn *testNode, blob cid.Cid, data []byte) {
	t.Helper()
	ctx := context.Background()
	r, err := tn.store.Open(ctx, blob)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("fetched blob differs from the original (%d bytes, want %d)", len(got), len(data))
	}
}

func fetch(t *testing.T, tn *testNode, blob cid.Cid, from ...*testNode) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ids []peer.ID
	for _, f := range from {
		ids = append(ids, f.ID())
	}
	return tn.Fetch(ctx, blob, ids, nil)
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func recordFor(t *testing.T, n *testNode, data []byte, model string) blobstore.Record {
	t.Helper()
	r := sampleRecord(n.ID())
	r.ModelID = model
	r.Blob = put(t, n, data)
	r.Size = uint64(len(data))
	r.Created = time.Now()
	return r
}

// waitGossip waits until a and b see each other on the record topic, and a little longer: gossipsub loses
// messages published while a new peer's streams are being set up (sync repairs that; this test is about gossip).
func waitGossip(t *testing.T, a, b *testNode) {
	t.Helper()
	eventually(t, "peers on the record topic", func() bool {
		return slices.Contains(a.PubSub().ListPeers(RecordTopic), b.ID()) &&
			slices.Contains(b.PubSub().ListPeers(RecordTopic), a.ID())
	})
	time.Sleep(200 * time.Millisecond)
}

func hasRecord(n *testNode, model string) bool { return len(n.Records(model, "")) > 0 }

func TestIdentityPersisted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := startNode(t, dir, nil)
	id := a.ID()
	if err := a.Node.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	a.close()
	fi, err := os.Stat(filepath.Join(dir, "p2p", IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("identity key mode %v, want 0600", fi.Mode().Perm())
	}
	b := startNode(t, dir, nil)
	if b.ID() != id {
		t.Fatalf("restarted with ID %s, want %s", b.ID(), id)
	}
}

func TestRecordPropagation(t *testing.T) {
	t.Parallel()
	a, b := startNode(t, "", nil), startNode(t, "", nil)
	connect(t, a, b)
	got := make(chan SignedRecord, 4)
	cancel := b.OnRecord(func(sr SignedRecord) { got <- sr })
	defer cancel()

	r := recordFor(t, a, randomBlob(t, 1000), "model-a")
	waitGossip(t, a, b)
	sr, err := a.Publish(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-got:
		if g.ID != sr.ID || g.Signer != a.ID() {
			t.Fatalf("b got %+v, want %+v", g.Record, sr.Record)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("record not gossiped to b")
	}
	// Records are the agent's: the node keeps its own in the book and leaves the store's index alone.
	if rs, err := a.store.Records(context.Background(), "", ""); err != nil || len(rs) != 0 {
		t.Fatalf("store records = %v, %v; the node must not write records", rs, err)
	}
	if !hasRecord(a, "model-a") {
		t.Fatal("the producer's book lacks its own record")
	}

	// A late joiner learns the record by sync on connect, from a peer that is not its producer.
	c := startNode(t, "", nil)
	connect(t, c, b)
	eventually(t, "late joiner to learn the record", func() bool { return hasRecord(c, "model-a") })

	// Records persist: a restarted node has them before any connection.
	dir := c.dir
	c.close()
	c2 := startNode(t, dir, nil)
	if !hasRecord(c2, "model-a") {
		t.Fatal("record lost across restart")
	}
	// Fetching the blob stores its bytes and no record: whether it serves this host is the agent's decision.
	connect(t, c2, a)
	if err := fetch(t, c2, r.Blob, a); err != nil {
		t.Fatal(err)
	}
	if ok, err := c2.store.Has(context.Background(), r.Blob); !ok || err != nil {
		t.Fatalf("fetcher does not hold the blob (%v)", err)
	}
	if rs, err := c2.store.Records(context.Background(), "", ""); err != nil || len(rs) != 0 {
		t.Fatalf("fetcher store records = %v, %v; the node must not write records", rs, err)
	}
}

// attacker is a bare libp2p host on the record topic and sync protocol, without the node's checks.
func attacker(t *testing.T, syncAnswer ...[]byte) (*pubsub.Topic, peer.AddrInfo) {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(RecordTopic)
	if err != nil {
		t.Fatal(err)
	}
	h.SetStreamHandler(RecordSyncProtocol, func(st network.Stream) {
		defer st.Close()
		for _, raw := range syncAnswer {
			st.Write(appendEntry(nil, raw))
		}
	})
	t.Cleanup(func() {
		topic.Close()
		cancel()
		h.Close()
	})
	return topic, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}
}

func TestForgedRecordsRejected(t *testing.T) {
	t.Parallel()
	victim, producer := startNode(t, "", nil), startNode(t, "", nil)
	k2, _ := newKey(t)
	kSelf, selfID := newKey(t)

	// Claims in producer's name signed by someone else, and a tampered one.
	forgedR := sampleRecord(producer.ID())
	forgedR.ModelID = "forged-sync"
	payload, err := encodeRecord(forgedR)
	if err != nil {
		t.Fatal(err)
	}
	forgedSync := forge(t, payload, k2)
	forgedR.ModelID = "forged-gossip"
	payload, _ = encodeRecord(forgedR)
	forgedGossip := forge(t, payload, k2)
	goodR := sampleRecord(selfID)
	goodR.ModelID = "honest"
	good, err := SealRecord(goodR, kSelf)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(good.Envelope)
	tampered[bytes.Index(tampered, []byte("honest"))] = 'H'

	topic, ai := attacker(t, forgedSync, tampered, good.Envelope)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := victim.Host().Connect(ctx, ai); err != nil {
		t.Fatal(err)
	}
	// Sync delivered the valid record only.
	eventually(t, "valid synced record", func() bool { return hasRecord(victim, "honest") })
	eventually(t, "victim on the topic", func() bool { return len(topic.ListPeers()) > 0 })
	if err := topic.Publish(ctx, forgedGossip); err != nil {
		t.Fatal(err)
	}
	// A valid gossip after the forged one proves the forged one had its chance to arrive.
	goodR.ModelID = "honest-gossip"
	good2, err := SealRecord(goodR, kSelf)
	if err != nil {
		t.Fatal(err)
	}
	if err := topic.Publish(ctx, good2.Envelope); err != nil {
		t.Fatal(err)
	}
	eventually(t, "valid gossiped record", func() bool { return hasRecord(victim, "honest-gossip") })
	for _, m := range []string{"forged-sync", "forged-gossip", "Honest"} {
		if hasRecord(victim, m) {
			t.Errorf("victim accepted record %q", m)
		}
	}
	if n := len(victim.Records("", "")); n != 2 {
		t.Errorf("victim holds %d records, want 2", n)
	}
}

func TestUntrustedProducerIgnored(t *testing.T) {
	t.Parallel()
	trusted, untrusted := startNode(t, "", nil), startNode(t, "", nil)
	b := startNode(t, "", func(c *Config) { c.TrustedProducers = []peer.ID{trusted.ID()} })
	// Records made before connecting travel by sync, later ones by gossip.
	if _, err := untrusted.Publish(context.Background(), recordFor(t, untrusted, randomBlob(t, 10), "u-sync")); err != nil {
		t.Fatal(err)
	}
	connect(t, b, trusted)
	connect(t, b, untrusted)
	waitGossip(t, b, trusted)
	waitGossip(t, b, untrusted)
	if _, err := untrusted.Publish(context.Background(), recordFor(t, untrusted, randomBlob(t, 10), "u-gossip")); err != nil {
		t.Fatal(err)
	}
	if _, err := trusted.Publish(context.Background(), recordFor(t, trusted, randomBlob(t, 10), "t-gossip")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "trusted record", func() bool { return hasRecord(b, "t-gossip") })
	// Give the untrusted gossip the same time again, then check neither untrusted record was kept.
	time.Sleep(200 * time.Millisecond)
	if hasRecord(b, "u-sync") || hasRecord(b, "u-gossip") {
		t.Fatal("record of an untrusted producer was kept")
	}
}

// Three complete seeds: every one serves a share of a 16 MiB blob.
func TestFetchFromSeveralSeeds(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 16<<20)
	var rejected atomic.Int64
	f := startNode(t, "", func(c *Config) { c.OnBadChunk = func(peer.ID) { rejected.Add(1) } })
	f.fp.perPeer, f.fp.chunksPerReq = 1, 1
	var seeds []*testNode
	var blob cid.Cid
	for range 3 {
		s := startNode(t, "", nil)
		blob = put(t, s, data)
		connect(t, f, s)
		seeds = append(seeds, s)
	}
	var last atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := f.Fetch(ctx, blob, nil, func(done, total int64) {
		if total != int64(len(data)) || done < last.Load() {
			t.Errorf("progress %d/%d after %d", done, total, last.Load())
		}
		last.Store(done)
	})
	if err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
	if last.Load() != int64(len(data)) {
		t.Errorf("last progress %d, want %d", last.Load(), len(data))
	}
	var sum int64
	for i, s := range seeds {
		n := s.srv.served.Load()
		if n == 0 {
			t.Errorf("seed %d served no chunk", i)
		}
		sum += n
	}
	if sum < 16 {
		t.Errorf("seeds served %d chunks, want at least 16", sum)
	}
}

// Seeds that each hold only part of the blob (still fetching it) serve what they have; the union completes it.
func TestFetchFromPartialPeers(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 12<<20+5)
	f := startNode(t, "", nil)
	parts := [][]int{{0, 1, 2, 3, 4}, {4, 5, 6, 7, 8}, {8, 9, 10, 11, 12, 0}}
	var seeds []*testNode
	var blob cid.Cid
	for _, p := range parts {
		s := startNode(t, "", nil)
		blob = putPartial(t, s, data, p...)
		connect(t, f, s)
		seeds = append(seeds, s)
	}
	if err := fetch(t, f, blob, seeds...); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
	for i, s := range seeds {
		if s.srv.served.Load() == 0 {
			t.Errorf("partial seed %d served no chunk", i)
		}
	}
}

// A chunk that appears at a partial peer during the fetch is found: pushed by WATCH_HAVE, or by HAVE polls of a
// peer that does not support WATCH_HAVE (an older version).
func TestFetchHaveRefresh(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		noWatch bool
	}{{"watched", false}, {"older peer, polled", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := randomBlob(t, 3<<20)
			f, s := startNode(t, "", nil), startNode(t, "", nil)
			s.srv.noWatch = tc.noWatch
			blob := putPartial(t, s, data, 0, 1)
			connect(t, f, s)
			done := make(chan error, 1)
			go func() { done <- fetch(t, f, blob, s) }()
			eventually(t, "two chunks fetched", func() bool { return s.srv.served.Load() == 2 })
			m, chunks := manifestOf(data)
			if err := s.store.PutChunk(context.Background(), m.CID(), 2, chunks[2]); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			checkBlob(t, f, blob, data)
		})
	}
}

func TestFetchDropsBadChunkPeer(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 16<<20)
	var rejected atomic.Int64
	f := startNode(t, "", func(c *Config) { c.OnBadChunk = func(peer.ID) { rejected.Add(1) } })
	f.fp.perPeer, f.fp.chunksPerReq = 1, 1
	var seeds []*testNode
	var blob cid.Cid
	for range 3 {
		s := startNode(t, "", nil)
		blob = put(t, s, data)
		connect(t, f, s)
		seeds = append(seeds, s)
	}
	bad := seeds[0]
	var flipped atomic.Int64
	bad.srv.beforeSend = func(_ int, b []byte) {
		b[len(b)/2] ^= 0x40
		flipped.Add(1)
	}
	if err := fetch(t, f, blob, seeds...); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
	if flipped.Load() == 0 {
		t.Skip("the bad peer was never asked for a chunk") // random scheduling; very unlikely with 16 chunks
	}
	if flipped.Load() > 1 {
		t.Errorf("bad peer asked for %d chunks after its first bad one", flipped.Load()-1)
	}
	if rejected.Load() != flipped.Load() {
		t.Errorf("OnBadChunk called %d times for %d bad chunks", rejected.Load(), flipped.Load())
	}
	if sc := f.score(bad.ID()); sc >= 0 {
		t.Errorf("bad peer score %d, want negative", sc)
	}
	// Its low score makes the next fetch ask it last for the manifest and use one worker.
	if c := f.candidates([]peer.ID{bad.ID(), seeds[1].ID(), seeds[2].ID()}, false); c[2] != bad.ID() {
		t.Errorf("candidates order %v, bad peer %s not last", c, bad.ID())
	}
}

func TestFetchBadManifestPeer(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 1<<20)
	f, liar, good := startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, good, data)
	connect(t, f, liar)
	connect(t, f, good)
	// The liar answers GET_MANIFEST for any CID with some other manifest.
	other, _ := manifestOf(randomBlob(t, 10))
	liar.Host().SetStreamHandler(ChunkProtocol, func(st network.Stream) {
		defer st.Close()
		readFrame(st, nil)
		writeFrame(st, msgManifest, other.Encode())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.Fetch(ctx, blob, []peer.ID{liar.ID(), good.ID()}, nil); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
}

// FetchAll asks the named holder for the manifest before the other peers, which at a rollout's start mostly do not
// have the blob (each asked first would cost a round trip).
func TestFetchAllManifestNamedFirst(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 1<<20)
	f, holder := startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, holder, data)
	connect(t, f, holder)
	var asked atomic.Int32 // GET_MANIFEST requests to the peers not named
	for range 4 {
		o := startNode(t, "", nil)
		connect(t, f, o)
		o.Host().SetStreamHandler(ChunkProtocol, func(st network.Stream) {
			defer st.Close()
			if typ, _, err := readFrame(st, nil); err == nil && typ == msgGetManifest {
				asked.Add(1)
			}
			writeFrame(st, msgError, encodeError(blobstore.ErrNotFound))
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.FetchAll(ctx, blob, []peer.ID{holder.ID()}, nil); err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
	if n := asked.Load(); n != 0 {
		t.Fatalf("%d peers not named were asked for the manifest before the named holder", n)
	}
}

func TestFetchPeerDies(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 16<<20)
	f, dying, other := startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, dying, data)
	put(t, other, data)
	connect(t, f, dying)
	connect(t, f, other)
	// Both are slow so that the transfer is still running when dying goes away.
	slow := func(int, []byte) { time.Sleep(30 * time.Millisecond) }
	dying.srv.beforeSend, other.srv.beforeSend = slow, slow
	var once sync.Once
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := f.Fetch(ctx, blob, nil, func(done, total int64) {
		if dying.srv.served.Load() > 0 && done > total/4 {
			once.Do(func() { go dying.close() })
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
	if dying.srv.served.Load() == 0 {
		t.Fatal("dying peer never served")
	}
}

func TestFetchResumesAfterRestart(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 10<<20)
	seed := startNode(t, "", nil)
	blob := put(t, seed, data)
	seed.srv.beforeSend = func(int, []byte) { time.Sleep(20 * time.Millisecond) }

	dir := t.TempDir()
	f := startNode(t, dir, nil)
	connect(t, f, seed)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fctx, stop := context.WithCancel(ctx)
	err := f.Fetch(fctx, blob, []peer.ID{seed.ID()}, func(done, total int64) {
		if done >= 4<<20 {
			stop()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted fetch: %v", err)
	}
	f.close()
	// A write the seed began before the close may complete (and count) after it: read the count once it is stable.
	servedBefore := seed.srv.served.Load()
	for range 50 {
		time.Sleep(50 * time.Millisecond)
		n := seed.srv.served.Load()
		if n == servedBefore {
			break
		}
		servedBefore = n
	}

	f = startNode(t, dir, nil)
	connect(t, f, seed)
	var first atomic.Int64
	first.Store(-1)
	err = f.Fetch(ctx, blob, []peer.ID{seed.ID()}, func(done, total int64) { first.CompareAndSwap(-1, done) })
	if err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
	if first.Load() < 4<<20 {
		t.Errorf("resumed fetch started at %d bytes, want at least 4 MiB", first.Load())
	}
	if again := seed.srv.served.Load() - servedBefore; again > 10-4 {
		t.Errorf("resumed fetch took %d chunks, want at most 6", again)
	}
}

func TestConcurrentFetchSharesTransfer(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 8<<20)
	f, seed := startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, seed, data)
	seed.srv.beforeSend = func(int, []byte) { time.Sleep(5 * time.Millisecond) }
	connect(t, f, seed)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = fetch(t, f, blob, seed) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	checkBlob(t, f, blob, data)
	if n := seed.srv.served.Load(); n != 8 {
		t.Errorf("seed served %d chunks for 4 concurrent fetches of 8, want 8", n)
	}
}

func TestFetchNoPeers(t *testing.T) {
	t.Parallel()
	f, empty := startNode(t, "", nil), startNode(t, "", nil)
	connect(t, f, empty)
	if err := fetch(t, f, testCID("nobody has it")); !errors.Is(err, ErrNoPeers) {
		t.Fatalf("err = %v, want ErrNoPeers", err)
	}
	lonely := startNode(t, "", nil)
	if err := fetch(t, lonely, testCID("x")); !errors.Is(err, ErrNoPeers) {
		t.Fatalf("err = %v, want ErrNoPeers", err)
	}
}

// A chunk nobody holds stalls the fetch, which gives up after stallTimeout and keeps what it got for a resume.
func TestFetchStalls(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 2<<20)
	f, s := startNode(t, "", nil), startNode(t, "", nil)
	f.fp.stallTimeout = 500 * time.Millisecond
	f.fp.sourceTimeout = time.Minute // the stall, not the missing source (TestFetchOrphanChunkFails)
	blob := putPartial(t, s, data, 0)
	connect(t, f, s)
	if err := fetch(t, f, blob, s); !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	have, err := f.store.HaveChunks(context.Background(), blob)
	if err != nil || !have[0] || have[1] {
		t.Fatalf("kept chunks %v, %v", have, err)
	}
}

func writeKey(t *testing.T) pnet.PSK {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	path := filepath.Join(t.TempDir(), "swarm.key")
	body := "/key/swarm/psk/1.0.0/\n/base16/\n" + string(bytes.ToLower([]byte(hexString(k))))
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	psk, err := ReadFleetKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(psk, k) {
		t.Fatal("fleet key read back differs")
	}
	return psk
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestMembership(t *testing.T) {
	t.Parallel()
	key := writeKey(t)
	withKey := func(c *Config) {
		c.FleetKey = key
		c.ListenAddrs = append(c.ListenAddrs, ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1"))
	}
	a := startNode(t, "", withKey)
	member := startNode(t, "", withKey)
	outsider := startNode(t, "", nil)
	otherFleet := startNode(t, "", func(c *Config) { c.FleetKey = writeKey(t) })
	for _, addr := range a.Host().Addrs() {
		if isQUIC(addr) {
			t.Errorf("QUIC address %s with a fleet key", addr)
		}
	}
	data := randomBlob(t, 2<<20)
	blob := put(t, a, data)

	connect(t, member, a)
	if err := fetch(t, member, blob, a); err != nil {
		t.Fatalf("member fetch: %v", err)
	}
	for name, n := range map[string]*testNode{"outsider": outsider, "other fleet": otherFleet} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := n.Host().Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()})
		cancel()
		if err == nil {
			t.Errorf("%s connected to a fleet member", name)
		}
	}

	// An allowlist admits only its peers, in both directions, even with the fleet key.
	allowed := startNode(t, "", withKey)
	strict := startNode(t, "", func(c *Config) {
		withKey(c)
		c.Allowlist = []peer.ID{allowed.ID()}
	})
	put(t, strict, data)
	connect(t, allowed, strict)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A fleet member outside the allowlist. The dialler may finish its handshake before the listener's gater
	// closes the connection, so what counts is that no connection stays up and nothing can be asked.
	stranger := startNode(t, "", withKey)
	stranger.Host().Connect(ctx, peer.AddrInfo{ID: strict.ID(), Addrs: strict.Host().Addrs()})
	eventually(t, "refused connection to close", func() bool {
		return stranger.Host().Network().Connectedness(strict.ID()) != network.Connected &&
			strict.Host().Network().Connectedness(stranger.ID()) != network.Connected
	})
	if err := strict.Host().Connect(ctx, peer.AddrInfo{ID: stranger.ID(), Addrs: stranger.Host().Addrs()}); err == nil {
		t.Error("allowlisted node dialled a peer outside its allowlist")
	}
	stranger.Host().Peerstore().AddAddrs(strict.ID(), strict.Host().Addrs(), time.Minute)
	if _, err := getHave(ctx, stranger.Host(), strict.ID(), blob, 2, time.Second); err == nil {
		t.Error("peer outside the allowlist asked HAVE")
	}
	if err := fetch(t, stranger, blob, strict); err == nil {
		t.Error("peer outside the allowlist fetched")
	}
	if err := fetch(t, allowed, blob, strict); err != nil {
		t.Errorf("allowlisted peer fetch: %v", err)
	}
}

func TestAddressFiltering(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr     string
		loopback bool
		want     bool
	}{
		{"/ip4/127.0.0.1/tcp/1", false, false},
		{"/ip4/127.0.0.1/tcp/1", true, true},
		{"/ip6/::1/tcp/1", false, false},
		{"/ip4/0.0.0.0/tcp/1", true, false},
		{"/ip6/fe80::1/tcp/1", false, false},
		{"/ip4/192.168.1.20/tcp/4051", false, true},
		{"/ip4/10.0.0.5/udp/4051/quic-v1", false, true},
	} {
		if got := usableAddr(ma.StringCast(tc.addr), tc.loopback); got != tc.want {
			t.Errorf("usableAddr(%s, loopback=%v) = %v", tc.addr, tc.loopback, got)
		}
	}
	// A node that does not allow loopback advertises none and never dials one, even if mDNS offers it.
	a := startNode(t, "", func(c *Config) { c.AllowLoopback = false })
	for _, addr := range a.Host().Addrs() {
		if !usableAddr(addr, false) {
			t.Errorf("advertised %s", addr)
		}
	}
	b := startNode(t, "", nil)
	a.disc.HandlePeerFound(peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Host().Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err == nil {
		t.Error("dialled a loopback address")
	}
	if a.Host().Network().Connectedness(b.ID()) == network.Connected {
		t.Error("connected over loopback")
	}
}

// staticAddr is tn's address as a static peer (Config.StaticPeers).
func staticAddr(tn *testNode) ma.Multiaddr {
	return tn.Host().Addrs()[0].Encapsulate(ma.StringCast("/p2p/" + tn.ID().String()))
}

func TestStaticPeers(t *testing.T) {
	t.Parallel()
	a := startNode(t, "", nil)
	b := startNode(t, "", func(c *Config) { c.StaticPeers = []ma.Multiaddr{staticAddr(a)} })
	eventually(t, "static peer connection", func() bool {
		return b.Host().Network().Connectedness(a.ID()) == network.Connected
	})
	if ps := b.Peers(); len(ps) != 1 || ps[0].ID != a.ID() || ps[0].ConnectedSince.IsZero() || len(ps[0].Addrs) == 0 {
		t.Errorf("Peers() = %+v", ps)
	}
}

// A holder in libp2p's dial backoff (a dial that failed earlier, e.g. under load) is still dialled when a fetch
// names it: a waiter must not compile because of a stale backoff entry (seen in TestRolloutFleet under load).
func TestFetchDialsNamedHolderInBackoff(t *testing.T) {
	t.Parallel()
	a := startNode(t, "", nil)
	b := startNode(t, "", nil)
	data := randomBlob(t, 2*blobstore.ChunkSize+5)
	blob := put(t, a, data)
	b.Host().Peerstore().AddAddrs(a.ID(), a.Host().Addrs(), time.Hour)
	sw, ok := b.Host().Network().(interface{ Backoff() *swarm.DialBackoff })
	if !ok {
		t.Fatalf("%T has no dial backoff", b.Host().Network())
	}
	for _, addr := range a.Host().Addrs() {
		sw.Backoff().AddBackoff(a.ID(), addr)
	}
	if err := fetch(t, b, blob, a); err != nil {
		t.Fatalf("fetch from a holder in dial backoff: %v", err)
	}
	checkBlob(t, b, blob, data)
}

// A lone source holding the whole blob gets perWhole requests in flight (one stream each), a deeper pipe than
// perPeer; without perWhole it gets perPeer.
func TestFetchLoneSourceDepth(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name              string
		perWhole          int
		minPeak, wantPeak int // streams the source serves for the fetcher at once
	}{
		{"perPeer only", 0, 1, 2},
		{"perWhole 4", 4, 3, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := randomBlob(t, 32<<20)
			f := startNode(t, "", nil)
			f.fp.perPeer, f.fp.perWhole, f.fp.chunksPerReq = 2, tc.perWhole, 1
			s := startNode(t, "", nil)
			blob := put(t, s, data)
			connect(t, f, s)
			var peak atomic.Int64
			done := make(chan struct{})
			go func() {
				for range 30000 { // bounded: 30 s at 1 ms
					s.srv.mu.Lock()
					if b := s.srv.byPeer[f.h.ID()]; b != nil && int64(b.streams) > peak.Load() {
						peak.Store(int64(b.streams))
					}
					s.srv.mu.Unlock()
					select {
					case <-done:
						return
					case <-time.After(time.Millisecond):
					}
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := f.Fetch(ctx, blob, nil, nil)
			close(done)
			if err != nil {
				t.Fatal(err)
			}
			checkBlob(t, f, blob, data)
			if p := int(peak.Load()); p < tc.minPeak || p > tc.wantPeak {
				t.Errorf("source served %d streams of the fetcher at once, want %d to %d", p, tc.minPeak, tc.wantPeak)
			}
		})
	}
}
