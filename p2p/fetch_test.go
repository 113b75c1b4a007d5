package p2p

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/blobstore"
)

// gatedStore holds Manifest calls until release is closed, telling entered when one arrives.
type gatedStore struct {
	blobstore.Store
	entered chan struct{}
	release chan struct{}
}

func (s *gatedStore) Manifest(ctx context.Context, c cid.Cid) (*blobstore.Manifest, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.Store.Manifest(ctx, c)
}

// Regression: a flight ranked its peers by score (which takes the node's lock) while holding the flight's lock,
// and a joining Fetch took them in the other order, so a Fetch whose flight goroutine reached the manifest step
// while another caller was joining (or before its own join returned) hung the whole node. The test holds the
// node's lock, lets the flight reach that step, and checks that a second Fetch of the blob can still join it
// (joining takes the flight's lock).
func TestFetchRanksPeersWithoutFlightLock(t *testing.T) {
	t.Parallel()
	f := startNode(t, "", nil)
	for range 2 { // two peers, so ranking compares scores
		connect(t, f, startNode(t, "", nil))
	}
	gs := &gatedStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{})}
	f.Node.store = gs
	blob := testCID("held by nobody")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := make(chan error, 2)
	go func() { res <- f.Fetch(ctx, blob, nil, nil) }()
	select {
	case <-gs.entered:
	case <-ctx.Done():
		t.Fatal("the flight never asked the store for the manifest")
	}

	f.mu.Lock()
	close(gs.release)
	// Give the flight time to take whatever locks it takes before it needs the node's lock.
	time.Sleep(200 * time.Millisecond)
	go func() { res <- f.Fetch(ctx, blob, nil, nil) }()
	joined := false
	for deadline := time.Now().Add(2 * time.Second); !joined && time.Now().Before(deadline); {
		if joined = f.flights.Waiters(blob) == 2; !joined {
			time.Sleep(10 * time.Millisecond)
		}
	}
	f.mu.Unlock()
	if !joined {
		t.Error("a second Fetch cannot join while the flight waits for the node's lock: deadlock")
	}
	for range 2 {
		if err := <-res; !errors.Is(err, ErrNoPeers) {
			t.Errorf("fetch: %v, want ErrNoPeers", err)
		}
	}
}

// testTransfer is a transfer of n chunks, none held, with no node behind it: enough for the scheduling logic.
func testTransfer(t *testing.T, n int) *transfer {
	t.Helper()
	tr := &transfer{
		p: testFetchParams, have: make([]bool, n), assigned: make([]uint8, n), avail: make([]uint16, n), since: make([]time.Time, n),
		missing: n, peers: map[peer.ID]*fpeer{}, began: time.Now(),
	}
	tr.p.chunksPerReq = 1
	tr.cond = sync.NewCond(&tr.mu)
	tr.ctx, tr.cancel = context.WithCancelCause(context.Background())
	t.Cleanup(func() { tr.cancel(nil) })
	return tr
}

// addTestPeer adds a peer holding the listed chunks (all if none are listed).
func (t *transfer) addTestPeer(id string, chunks ...int) *fpeer {
	fp := &fpeer{id: peer.ID(id), inflight: map[int]bool{}}
	have := make([]bool, len(t.have))
	for i := range have {
		have[i] = len(chunks) == 0 || slices.Contains(chunks, i)
	}
	t.peers[fp.id] = fp
	t.setHave(fp, have)
	return fp
}

// The rarest free chunks are chosen uniformly. Candidates 1, 4, 5 and 10 of 12 follow runs of 2 (wrapping), 2, 0
// and 4 non-candidates: taking the first candidate after a random start picks 10 five times as often as 5. (The
// source lacks chunk 0: a seed-like source gets the seed scatter instead, TestPickSeedScatter.)
func TestPickUniformAmongRarest(t *testing.T) {
	t.Parallel()
	tr := testTransfer(t, 12)
	cands := []int{1, 4, 5, 10}
	seed := tr.addTestPeer("seed", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
	var others []int // held by a second peer too, so not the rarest
	for i := range 12 {
		if !slices.Contains(cands, i) {
			others = append(others, i)
		}
	}
	tr.addTestPeer("partial", others...)
	const draws = 4000
	count := map[int]int{}
	for range draws {
		r, _, ok := tr.pick(seed)
		if !ok || r.Count != 1 {
			t.Fatalf("pick = %+v, %t", r, ok)
		}
		count[int(r.First)]++
	}
	for _, c := range cands {
		// Expected 1000 each; a fair draw leaves [800, 1200] with probability 1 - 1e-11.
		if n := count[c]; n < 800 || n > 1200 {
			t.Errorf("chunk %d picked %d times of %d, want about %d (all: %v)", c, n, draws, draws/len(cands), count)
		}
	}
	if len(count) != len(cands) {
		t.Errorf("picked chunks %v, want only the rarest %v", count, cands)
	}
}

// From a lone source every chunk is as rare as any other: picks come from the first pickWindow missing chunks
// that no request is fetching, so chunks arrive nearly in order.
func TestPickFrontWindow(t *testing.T) {
	t.Parallel()
	tr := testTransfer(t, 3*pickWindow)
	src := tr.addTestPeer("source")
	for i := range 5 { // stored
		tr.have[i] = true
		tr.missing--
	}
	for i := 5; i < 10; i++ { // requested
		tr.assigned[i] = 1
	}
	seen := map[int]bool{}
	for range 500 {
		r, _, ok := tr.pick(src)
		if !ok {
			t.Fatal("no pick")
		}
		if i := int(r.First); i < 10 || i >= 10+pickWindow {
			t.Fatalf("picked chunk %d, want one of %d..%d", i, 10, 10+pickWindow-1)
		}
		seen[int(r.First)] = true
	}
	if len(seen) < pickWindow/2 {
		t.Errorf("500 picks hit only %d chunks of the window of %d", len(seen), pickWindow)
	}
}

// A peer with the whole blob gets one request at a time while other peers hold parts of it or have not answered
// HAVE yet; alone, or beside peers without the blob, it gets as many as it has workers.
func TestSeedLikePeerOneRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		partial []int // chunks of a second peer; nil for no second peer
		second  string
		want    int // ranges handed out to the full peer before the next one blocks
	}{
		{"alone", nil, "", 4},
		{"beside a partial peer", []int{0}, "", 1},
		{"beside a peer yet to answer", nil, "silent", 1},
		{"beside a peer not fetching it yet", nil, "not found", 1},
		{"beside a peer without the blob", nil, "not found later", 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := testTransfer(t, 8)
			full := tr.addTestPeer("full")
			if tc.partial != nil {
				tr.addTestPeer("partial", tc.partial...)
			}
			if tc.second != "" {
				fp := &fpeer{id: "second", inflight: map[int]bool{}}
				tr.peers[fp.id] = fp
				if tc.second != "silent" {
					tr.setHaveFrom(fp, make([]bool, len(tr.have)), false)
				}
				if tc.second == "not found later" {
					tr.began = time.Now().Add(-2 * startGrace)
				}
			}
			got := 0
			for range 4 {
				res := make(chan bool, 1)
				go func() {
					_, _, ok, _ := tr.next(full, true)
					res <- ok
				}()
				select {
				case ok := <-res:
					if !ok {
						t.Fatal("next gave up")
					}
					got++
					continue
				case <-time.After(time.Second): // blocked, as it should once the limit is reached
				}
				tr.cancel(nil) // unblock the waiting next
				tr.mu.Lock()
				tr.cond.Broadcast()
				tr.mu.Unlock()
				<-res
				break
			}
			if got != tc.want {
				t.Errorf("%d ranges in flight at once, want %d", got, tc.want)
			}
		})
	}
}

// A Fetch joining a running transfer adds its peers to it and gets progress: the first Fetch names only a peer
// missing a chunk, the second names a full seed, and both complete.
func TestFetchJoinerAddsPeers(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 2<<20)
	f, partial, full := startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)
	blob := putPartial(t, partial, data, 0)
	put(t, full, data)
	connect(t, f, partial)
	connect(t, f, full)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := make(chan error, 1)
	var firstDone atomic.Int64
	go func() {
		first <- f.Fetch(ctx, blob, []peer.ID{partial.ID()}, func(done, _ int64) { firstDone.Store(done) })
	}()
	eventually(t, "the first chunk from the partial peer", func() bool { return firstDone.Load() > 0 })
	var lastDone, lastTotal int64
	if err := f.Fetch(ctx, blob, []peer.ID{full.ID()}, func(done, total int64) { lastDone, lastTotal = done, total }); err != nil {
		t.Fatalf("joining fetch: %v", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first fetch: %v", err)
	}
	if lastDone != int64(len(data)) || lastTotal != int64(len(data)) || firstDone.Load() != int64(len(data)) {
		t.Errorf("progress: joiner %d/%d, first %d; want %d", lastDone, lastTotal, firstDone.Load(), len(data))
	}
	checkBlob(t, f, blob, data)
}

// The transfer ends when its last Fetch leaves; a Fetch after Close is refused.
func TestFetchLastCallerCancels(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 4<<20)
	f, seed := startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, seed, data)
	release := make(chan struct{})
	seed.srv.beforeSend = func(int, []byte) { <-release }
	defer close(release)
	connect(t, f, seed)
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- f.Fetch(ctx, blob, []peer.ID{seed.ID()}, nil) }()
	}
	eventually(t, "both fetches to join", func() bool { return f.flights.Waiters(blob) == 2 })
	cancel()
	for range 2 {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	}
	eventually(t, "the transfer to end", func() bool { return f.flights.Waiters(blob) == 0 })
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fetch(t, f, blob, seed); !errors.Is(err, ErrClosed) {
		t.Fatalf("fetch after Close: %v, want ErrClosed", err)
	}
}

// Before the end game, a peer with nothing free to send duplicates only a chunk whose request has run much longer
// than a chunk usually takes.
func TestPickStealsSlowRequest(t *testing.T) {
	t.Parallel()
	tr := testTransfer(t, 4)
	tr.addTestPeer("seed")
	other := tr.addTestPeer("other", 0, 1)
	tr.chunkTime = 100 * time.Millisecond // slowAfter: minSlowAfter
	tr.assigned[0], tr.since[0] = 1, time.Now()
	tr.assigned[1], tr.since[1] = 1, time.Now().Add(-2*minSlowAfter)
	// Chunks 2 and 3 are free at the seed only, so this is not the end game.
	for range 50 {
		r, rule, ok := tr.pick(other)
		if !ok || r.First != 1 || r.Count != 1 || rule != ruleSlow {
			t.Fatalf("pick = %v %v %v, want the slow chunk 1 by ruleSlow", r, rule, ok)
		}
	}
	// While bytes of any chunk of the blob still flow in (this node's downlink is busy, not the slow request's
	// sender stopped), no request is copied; bytes of another blob do not count. Once the blob's bytes have
	// stopped for flowWindow the slow request is copied.
	tr.arriving = &arrivals{}
	elsewhere := tr.arriving.begin(testCID("another blob"), 1, 1<<10)
	defer elsewhere.finish(false)
	elsewhere.progress(10)
	if r, _, ok := tr.pick(other); !ok || r.First != 1 {
		t.Fatalf("pick = %v %v, want chunk 1: only another blob's bytes flow", r, ok)
	}
	for _, i := range []int{1, 0} { // the slow chunk itself, then another chunk of the blob
		a := tr.arriving.begin(tr.blob, i, 1<<10)
		a.progress(10)
		if r, _, ok := tr.pick(other); ok {
			t.Fatalf("pick = %v, a copy while chunk %d of the blob flows", r, i)
		}
		a.mu.Lock()
		a.at = time.Now().Add(-2 * flowWindow)
		a.mu.Unlock()
		defer a.finish(false)
	}
	if r, _, ok := tr.pick(other); !ok || r.First != 1 {
		t.Fatalf("pick = %v %v, want the stalled slow chunk 1", r, ok)
	}
	tr.since[1] = time.Now()
	if r, _, ok := tr.pick(other); ok {
		t.Fatalf("pick = %v with no slow request", r)
	}
}

// End game (every missing chunk requested): a chunk requested from one other peer is requested again only when its
// request is slow; with fewer than endGameFill requests in flight (the downlink would idle) even while bytes of the
// blob arrive (a trickling sender), from a seed-like peer too; with more, only once nothing arrives.
func TestPickEndGameFill(t *testing.T) {
	t.Parallel()
	const slow = 2 * minSlowAfter
	tests := []struct {
		name     string
		inflight int           // requests in flight, each for its own missing chunk from peer "a"
		age      time.Duration // how long they have run
		flowing  bool          // bytes of the blob arrived within flowWindow
		seedLike bool          // "b" holds every chunk while "a" holds part of the blob
		want     bool
		rule     copyRule // the rule of the duplicate, when want
	}{
		{"downlink idle, young request", endGameFill - 1, 0, false, false, false, 0},
		{"downlink idle, slow request", endGameFill - 1, slow, false, false, true, ruleFill},
		{"downlink idle, slow request trickling", endGameFill - 1, slow, true, false, true, ruleFill},
		{"downlink idle, seed, young request", endGameFill - 1, 0, false, true, false, 0},
		{"downlink idle, seed, slow request trickling", endGameFill - 1, slow, true, true, true, ruleFill},
		{"downlink full", endGameFill, 0, false, false, false, 0},
		{"downlink full, slow request", endGameFill, slow, false, false, true, ruleSlow},
		{"downlink full, slow request, bytes flowing", endGameFill, slow, true, false, false, 0},
		{"downlink full, seed", endGameFill, 0, false, true, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := tc.inflight
			if tc.seedLike {
				n++ // a chunk "a" lacks (and this node holds)
			}
			tr := testTransfer(t, n)
			var a *fpeer
			if tc.seedLike {
				tr.have[n-1] = true
				tr.missing--
				var held []int
				for i := range n - 1 {
					held = append(held, i)
				}
				a = tr.addTestPeer("a", held...)
			} else {
				a = tr.addTestPeer("a")
			}
			b := tr.addTestPeer("b")
			if got := tr.seedLike(b); got != tc.seedLike {
				t.Fatalf("seedLike(b) = %v", got)
			}
			tr.chunkTime = 100 * time.Millisecond // slowAfter: minSlowAfter
			for i := range tc.inflight {
				tr.mark(a, chunkRange{First: uint32(i), Count: 1}, ruleFree)
				tr.since[i] = time.Now().Add(-tc.age)
			}
			if tc.flowing {
				tr.arriving = &arrivals{}
				tr.arriving.begin(tr.blob, 0, 1<<10).progress(10)
			}
			r, rule, ok := tr.pick(b)
			if ok != tc.want || ok && rule != tc.rule {
				t.Fatalf("pick = %v %v %v, want a duplicate: %v by %v", r, rule, ok, tc.want, tc.rule)
			}
			if ok {
				tr.mark(b, r, rule)
				if tr.copies[rule] != int(r.Count) {
					t.Fatalf("copies by rule %v = %d, want %d", rule, tr.copies[rule], r.Count)
				}
			}
		})
	}
}

// Seed scatter: receivers with the same fetchers split the seed's chunks between them in equal shares, each taking
// its own share front to back, then other shares' chunks that only the seed holds.
func TestPickSeedScatter(t *testing.T) {
	t.Parallel()
	const n = 64
	ids := []peer.ID{"recv-a", "recv-b", "recv-c"}
	owned := make([]int, n)
	var trs []*transfer
	for k, self := range ids {
		tr := testTransfer(t, n)
		tr.self = self
		tr.addTestPeer("seed")
		for j, other := range ids {
			if j != k {
				tr.addTestPeer(string(other), n-1) // each receiver holds the last chunk already
			}
		}
		own := tr.owners()
		for i, o := range own {
			if o {
				owned[i]++
			}
		}
		trs = append(trs, tr)
	}
	for i, c := range owned {
		if c != 1 {
			t.Fatalf("chunk %d owned by %d receivers, want 1", i, c)
		}
	}
	for _, tr := range trs {
		if k := len(slices.DeleteFunc(slices.Clone(tr.owners()), func(o bool) bool { return !o })); k < n/3 || k > n/3+1 {
			t.Errorf("share of %d chunks, want %d or %d", k, n/3, n/3+1)
		}
	}
	tr := trs[0]
	seed := tr.peers["seed"]
	own := tr.owners()
	var mine []int
	for i, o := range own[:n-1] {
		if o {
			mine = append(mine, i)
		}
	}
	for _, want := range mine {
		r, _, ok := tr.pick(seed)
		if !ok || int(r.First) != want || r.Count != 1 {
			t.Fatalf("pick = %+v %t, want own chunk %d", r, ok, want)
		}
		tr.assigned[want]++
	}
	r, _, ok := tr.pick(seed)
	if !ok || own[r.First] || int(r.First) == n-1 {
		t.Fatalf("after its share: pick = %+v %t, want another share's chunk that only the seed holds", r, ok)
	}
}

// A peer that connects while an open transfer runs joins it (FetchAll, Fetch without peers); a Fetch that named
// its peers keeps to them. The fetcher starts connected only to a partial peer missing chunk 1; the full seed
// connects afterwards and is the only way to complete.
func TestFetchLateConnectJoins(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		open bool
	}{{"open joins", true}, {"named stays", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := randomBlob(t, 2<<20)
			f, partial, full := startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)
			blob := putPartial(t, partial, data, 0)
			put(t, full, data)
			connect(t, f, partial)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			var got atomic.Int64
			progress := func(d, _ int64) { got.Store(d) }
			go func() {
				if tc.open {
					done <- f.FetchAll(ctx, blob, nil, progress)
				} else {
					done <- f.Fetch(ctx, blob, []peer.ID{partial.ID()}, progress)
				}
			}()
			eventually(t, "chunk 0 from the partial peer", func() bool { return got.Load() > 0 })
			connect(t, f, full)
			if !tc.open {
				select {
				case err := <-done:
					t.Fatalf("fetch naming only the partial peer returned %v; want it still waiting", err)
				case <-time.After(2 * time.Second):
				}
				if n := f.FetchPeers(blob); n != 0 {
					t.Errorf("%d peers sending; want 0 (the full seed was not named)", n)
				}
				cancel()
				<-done
				return
			}
			if err := <-done; err != nil {
				t.Fatalf("fetch: %v", err)
			}
			checkBlob(t, f, blob, data)
		})
	}
}

// noFill keeps a node from dialling members to fill its overlay, so that a test decides who is connected.
func noFill(c *Config) { c.MinPeers = -1 }

// fetchAll fetches blob as an open transfer (FetchAll, no named peers) within 30 s and checks f holds data.
func fetchAll(t *testing.T, f *testNode, blob cid.Cid, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.FetchAll(ctx, blob, nil, nil); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	checkBlob(t, f, blob, data)
}

// An open transfer dials the members it knows but is not connected to (dialForTransfer): the fetcher is connected
// only to a partial peer and knows the full seed from the membership table alone (no overlay fill dials it).
func TestFetchDialsKnownMembers(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 2<<20)
	f, partial, full := startNode(t, "", noFill), startNode(t, "", noFill), startNode(t, "", noFill)
	blob := putPartial(t, partial, data, 0)
	put(t, full, data)
	connect(t, full, partial)
	connect(t, f, partial)
	eventually(t, "the seed in the fetcher's membership table", func() bool {
		return slices.ContainsFunc(f.Members(), func(m MemberInfo) bool { return m.ID == full.ID() })
	})
	if f.h.Network().Connectedness(full.ID()) == network.Connected {
		t.Fatal("fetcher already connected to the seed")
	}
	fetchAll(t, f, blob, data)
}

// Threat (docs/design.md 9.2): a member that holds the fleet key mints member records for throwaway identities
// with addresses of its choosing, so that every fetch dials them. An open transfer dials at most fetchDialPeers
// peers in all, each within fetchDialTimeout, and completes from its real peers.
func TestThreatFetchDialBound(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 2<<20)
	f, seed := startNode(t, "", noFill), startNode(t, "", noFill)
	blob := put(t, seed, data)
	connect(t, f, seed)
	const bogus = 40
	addr := ma.StringCast("/ip4/127.0.0.1/tcp/9")
	for range bogus {
		key, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(key)
		raw, err := SealMember(MemberInfo{ID: id, Seq: uint64(time.Now().UnixNano()), Addrs: []ma.Multiaddr{addr}}, key)
		if err != nil {
			t.Fatal(err)
		}
		if _, res := f.members.book.add(raw, time.Now()); res != memberAdded {
			t.Fatalf("bogus member record not taken: %v", res)
		}
	}
	var dials atomic.Int32
	f.transferDial = func(ctx context.Context, p peer.ID) error {
		dials.Add(1)
		<-ctx.Done() // an address that never answers: the dial lasts its whole timeout
		return ctx.Err()
	}
	fetchAll(t, f, blob, data)
	if n := dials.Load(); n == 0 || n > fetchDialPeers-1 {
		t.Errorf("%d of %d bogus members dialled; want 1..%d (%d peers connected in all)", n, bogus, fetchDialPeers-1, fetchDialPeers)
	}
}

// A chunk received whole after another copy was stored counts in vain under the rule of its request (logDone's
// per-rule counts and their sum); one not yet stored does not.
func TestAlreadyCountsByRule(t *testing.T) {
	t.Parallel()
	tr := testTransfer(t, 2)
	tr.have[0] = true
	for _, c := range []struct {
		i    int
		rule copyRule
		want bool
	}{{0, ruleSlow, true}, {0, ruleFill, true}, {0, ruleFill, true}, {1, ruleSlow, false}, {0, ruleFree, true}} {
		if got := tr.already(c.i, c.rule); got != c.want {
			t.Fatalf("already(%d, %v) = %v, want %v", c.i, c.rule, got, c.want)
		}
	}
	if want := [rules]int{ruleFree: 1, ruleSlow: 1, ruleFill: 2}; tr.inVain != want {
		t.Fatalf("inVain = %v, want %v", tr.inVain, want)
	}
}

// A fetch's workers hold a chunk buffer only while a chunk's bytes arrive: waiting for an answer they hold none
// (24 idle workers of a 12-host fetch held 24 MiB, docs/design.md 6.8). The holder's sends are held, so while the
// fetch waits the only chunk buffers taken are the holder's, one per request it has read from its store. Not
// parallel: the count is the process's.
func TestWaitingWorkersHoldNoBuffer(t *testing.T) {
	data := randomBlob(t, 8<<20)
	f, holder := startNode(t, "", nil), startNode(t, "", nil)
	blob := put(t, holder, data)
	connect(t, f, holder)
	before := chunkBufsHeld.Load()
	var held atomic.Int32 // the holder's requests held before their chunk is sent
	release := make(chan struct{})
	holder.srv.beforeSend = func(int, []byte) {
		held.Add(1)
		<-release
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.Fetch(ctx, blob, []peer.ID{holder.ID()}, nil) }()
	// Each of the fetch's workers has its request held; half a second more for any stray Get. The requests time
	// out after testFetchParams.requestTimeout (5 s).
	for deadline := time.Now().Add(3 * time.Second); held.Load() < int32(testFetchParams.perPeer); {
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("%d requests reached the holder, want %d", held.Load(), testFetchParams.perPeer)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	got, want := chunkBufsHeld.Load()-before, int64(held.Load())
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkBlob(t, f, blob, data)
	if got != want {
		t.Errorf("%d chunk buffers taken while %d requests waited for their answer: want one each at the holder, none at the fetch's workers", got, want)
	}
	if n := chunkBufsHeld.Load() - before; n != 0 {
		t.Errorf("%d chunk buffers not given back after the fetch", n)
	}
}
