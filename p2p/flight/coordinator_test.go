package flight

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
)

// fastConfig keeps in-memory flights quick: ticks of a few ms, takeover after 300 ms.
func fastConfig() Config {
	return Config{Window: 50 * time.Millisecond, LeaseTTL: 400 * time.Millisecond, Deadline: 20 * time.Second,
		Logger: testLogger()}
}

// testLogger logs flight events to stderr when FLIGHT_DEBUG is set, and nowhere otherwise.
func testLogger() *slog.Logger {
	if os.Getenv("FLIGHT_DEBUG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testPeer struct {
	id peer.ID
	c  *Coordinator
}

// newMemFleet starts n coordinators on one in-memory network; cleanup stops them and waits for Run to return.
func newMemFleet(t *testing.T, n int, cfg Config) (*MemNetwork, []*testPeer) {
	t.Helper()
	net := NewMemNetwork()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	peers := make([]*testPeer, n)
	for i := range peers {
		id := testPeerID(t, i+1)
		tr := net.Join(id)
		c, err := New(tr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		peers[i] = &testPeer{id: id, c: c}
		wg.Go(func() {
			if err := c.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return net, peers
}

// testCID is the blob CID of a name.
func testCID(name string) cid.Cid { return blobstore.DigestCID(sha256.Sum256([]byte(name))) }

func cidOf(p peer.ID) cid.Cid { return testCID("blob of " + string(p)) }

// compiles records which peers ran a compile, in order.
type compiles struct {
	mu  sync.Mutex
	ids []peer.ID
}

func (c *compiles) add(id peer.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ids = append(c.ids, id)
}

func (c *compiles) list() []peer.ID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}

// quick compiles in d and returns the peer's CID.
func quick(rec *compiles, id peer.ID, d time.Duration) func(context.Context) (cid.Cid, error) {
	return func(ctx context.Context) (cid.Cid, error) {
		rec.add(id)
		select {
		case <-time.After(d):
			return cidOf(id), nil
		case <-ctx.Done():
			return cid.Undef, ctx.Err()
		}
	}
}

// blocking compiles until release is closed (then succeeds) or ctx is done; it reports its start on started.
func blocking(rec *compiles, id peer.ID, started chan<- peer.ID, release <-chan struct{}) func(context.Context) (cid.Cid, error) {
	return func(ctx context.Context) (cid.Cid, error) {
		rec.add(id)
		started <- id
		select {
		case <-release:
			return cidOf(id), nil
		case <-ctx.Done():
			return cid.Undef, ctx.Err()
		}
	}
}

type result struct {
	id  peer.ID
	out Outcome
	err error
}

func goDo(ctx context.Context, p *testPeer, req Request, results chan<- result) {
	go func() {
		out, err := p.c.Do(ctx, req)
		results <- result{id: p.id, out: out, err: err}
	}()
}

// await returns n results, failing the test if they do not all arrive within a bound far above the expected time.
func await(t *testing.T, results <-chan result, n int) map[peer.ID]result {
	t.Helper()
	got := map[peer.ID]result{}
	timeout := time.After(15 * time.Second)
	for len(got) < n {
		select {
		case r := <-results:
			got[r.id] = r
		case <-timeout:
			t.Fatalf("only %d of %d flights ended: %+v", len(got), n, got)
		}
	}
	return got
}

func awaitStart(t *testing.T, started <-chan peer.ID) peer.ID {
	t.Helper()
	select {
	case id := <-started:
		return id
	case <-time.After(15 * time.Second):
		t.Fatal("no compile started")
		return ""
	}
}

// checkServed asserts that every result is a success served by compiler's blob, and that exactly compiler
// compiled with role.
func checkServed(t *testing.T, got map[peer.ID]result, compiler peer.ID, role Role) {
	t.Helper()
	for id, r := range got {
		if r.err != nil {
			t.Errorf("peer %s: %v", id, r.err)
			continue
		}
		if r.out.CID != cidOf(compiler) || r.out.From != compiler {
			t.Errorf("peer %s got %+v, want the blob of %s", id, r.out, compiler)
		}
		wantRole := RoleWaited
		if id == compiler {
			wantRole = role
		}
		if r.out.Role != wantRole {
			t.Errorf("peer %s role %v, want %v", id, r.out.Role, wantRole)
		}
	}
}

func TestAllWantAtOnce(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 6, fastConfig())
	keyA := Key{ModelID: "m1", ProfileID: "p1", Class: "class-a"}
	keyB := Key{ModelID: "m1", ProfileID: "p1", Class: "class-b"}
	// Class A ranks 2, 0, 1: the rank-0 peer must compile. Class B ranks are equal: rendezvous hashing decides.
	classA := map[peer.ID]int{peers[0].id: 2, peers[1].id: 0, peers[2].id: 1}
	classB := map[peer.ID]int{peers[3].id: 0, peers[4].id: 0, peers[5].id: 0}
	wantB := peers[3].id
	for _, p := range peers[4:] {
		if before(keyB, p.id, 0, wantB, 0) {
			wantB = p.id
		}
	}
	var recA, recB compiles
	results := make(chan result, 6)
	for _, p := range peers {
		key, rank, rec := keyA, classA[p.id], &recA
		if r, ok := classB[p.id]; ok {
			key, rank, rec = keyB, r, &recB
		}
		goDo(t.Context(), p, Request{Key: key, Rank: rank, Compile: quick(rec, p.id, 50*time.Millisecond)}, results)
	}
	got := await(t, results, 6)
	if ids := recA.list(); !slices.Equal(ids, []peer.ID{peers[1].id}) {
		t.Errorf("class A compiled by %v, want only the rank-0 peer %s", ids, peers[1].id)
	}
	if ids := recB.list(); !slices.Equal(ids, []peer.ID{wantB}) {
		t.Errorf("class B compiled by %v, want only the rendezvous winner %s", ids, wantB)
	}
	gotA, gotB := map[peer.ID]result{}, map[peer.ID]result{}
	for id, r := range got {
		if _, ok := classA[id]; ok {
			gotA[id] = r
		} else {
			gotB[id] = r
		}
	}
	checkServed(t, gotA, peers[1].id, RoleCompiled)
	checkServed(t, gotB, wantB, RoleCompiled)
}

func TestAlonePeerCompiles(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 1, fastConfig())
	var rec compiles
	out, err := peers[0].c.Do(t.Context(), Request{Key: testKey, Compile: quick(&rec, peers[0].id, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if out.Role != RoleCompiled || out.CID != cidOf(peers[0].id) || out.Epoch != 1 {
		t.Fatalf("got %+v", out)
	}
}

func TestCompilerDiesMidCompile(t *testing.T) {
	t.Parallel()
	net, peers := newMemFleet(t, 4, fastConfig())
	var rec compiles
	started := make(chan peer.ID, 4)
	release := make(chan struct{})
	results := make(chan result, 4)
	// Ranks 0..3: peer 0 compiles first, peer 1 must take over.
	for i, p := range peers {
		goDo(t.Context(), p, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)}, results)
	}
	if id := awaitStart(t, started); id != peers[0].id {
		t.Fatalf("first compiler %s, want %s", id, peers[0].id)
	}
	net.Drop(peers[0].id) // its heartbeats stop reaching anyone
	if id := awaitStart(t, started); id != peers[1].id {
		t.Fatalf("took over by %s, want %s", id, peers[1].id)
	}
	// Release both compiles: the dropped holder finishes unheard, the new holder serves everyone.
	close(release)
	got := await(t, results, 4)
	dead := got[peers[0].id]
	delete(got, peers[0].id)
	checkServed(t, got, peers[1].id, RoleTookOver)
	if ids := rec.list(); len(ids) != 2 {
		t.Errorf("compiles %v, want the dead holder's and one takeover", ids)
	}
	// The dropped peer never hears anything: it finishes its own compile and is not counted among the served.
	if dead.err != nil || dead.out.Role != RoleCompiled {
		t.Errorf("dropped peer: %+v, %v", dead.out, dead.err)
	}
}

func TestCompileFailsThenTakeover(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 4, fastConfig())
	var rec compiles
	errOOM := errors.New("compiler killed: out of memory")
	results := make(chan result, 4)
	for i, p := range peers {
		compile := quick(&rec, p.id, 20*time.Millisecond)
		if i == 0 {
			compile = func(context.Context) (cid.Cid, error) { rec.add(peers[0].id); return cid.Undef, errOOM }
		}
		goDo(t.Context(), p, Request{Key: testKey, Rank: i, Compile: compile}, results)
	}
	got := await(t, results, 4)
	if r := got[peers[0].id]; !errors.Is(r.err, errOOM) || r.out.Role != RoleCompiled {
		t.Errorf("failed holder: %+v, %v; want its compile error", r.out, r.err)
	}
	delete(got, peers[0].id)
	checkServed(t, got, peers[1].id, RoleTookOver)
	if ids := rec.list(); !slices.Equal(ids, []peer.ID{peers[0].id, peers[1].id}) {
		t.Errorf("compiles %v, want peer 0 then peer 1", ids)
	}
}

func TestCompileFailsTwiceGivesUp(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 4, fastConfig())
	var rec compiles
	results := make(chan result, 4)
	for i, p := range peers {
		compile := quick(&rec, p.id, 0)
		if i < 2 {
			compile = func(context.Context) (cid.Cid, error) {
				rec.add(p.id)
				return cid.Undef, fmt.Errorf("model %d invalid", i)
			}
		}
		goDo(t.Context(), p, Request{Key: testKey, Rank: i, Compile: compile}, results)
	}
	got := await(t, results, 4)
	for i, p := range peers {
		r := got[p.id]
		switch {
		case i < 2 && (r.err == nil || !r.out.Role.Compiled()):
			t.Errorf("peer %d: %+v, %v; want its own compile error", i, r.out, r.err)
		case i >= 2 && !errors.Is(r.err, ErrRemoteFailed):
			t.Errorf("peer %d: %+v, %v; want ErrRemoteFailed", i, r.out, r.err)
		}
	}
	if ids := rec.list(); !slices.Equal(ids, []peer.ID{peers[0].id, peers[1].id}) {
		t.Errorf("compiles %v, want peer 0 then peer 1 only", ids)
	}
}

func TestLateJoinerWaits(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 4, fastConfig())
	var rec compiles
	started := make(chan peer.ID, 4)
	release := make(chan struct{})
	results := make(chan result, 4)
	for i, p := range peers[:3] {
		goDo(t.Context(), p, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)}, results)
	}
	holder := awaitStart(t, started)
	// The late joiner has the worst rank: the live lease serves it, so it must wait rather than compile.
	goDo(t.Context(), peers[3], Request{Key: testKey, Rank: 3,
		Compile: blocking(&rec, peers[3].id, started, release)}, results)
	time.Sleep(3 * fastConfig().Window) // longer than the late joiner's window: it decided to wait
	close(release)
	got := await(t, results, 4)
	checkServed(t, got, holder, RoleCompiled)
	if ids := rec.list(); len(ids) != 1 {
		t.Errorf("compiles %v, want one", ids)
	}
}

func TestLateJoinerWithBetterRankCompiles(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 2, fastConfig())
	var rec compiles
	started := make(chan peer.ID, 2)
	release := make(chan struct{})
	results := make(chan result, 2)
	goDo(t.Context(), peers[0], Request{Key: testKey, Rank: 5,
		Compile: blocking(&rec, peers[0].id, started, release)}, results)
	awaitStart(t, started)
	// A rank-5 blob does not serve a rank-1 peer: the late joiner compiles its own.
	goDo(t.Context(), peers[1], Request{Key: testKey, Rank: 1, Compile: quick(&rec, peers[1].id, 0)}, results)
	r := await(t, results, 1)[peers[1].id]
	if r.err != nil || r.out.Role != RoleCompiled || r.out.CID != cidOf(peers[1].id) {
		t.Errorf("late better-ranked peer: %+v, %v", r.out, r.err)
	}
	close(release)
	// The rank-1 blob serves the rank-5 holder too, but a holder already compiling finishes its own compile.
	r = await(t, results, 1)[peers[0].id]
	if r.err != nil || r.out.Role != RoleCompiled {
		t.Errorf("first holder: %+v, %v", r.out, r.err)
	}
}

func TestDeadline(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	cfg.Deadline = 400 * time.Millisecond
	_, peers := newMemFleet(t, 2, cfg)
	var rec compiles
	started := make(chan peer.ID, 2)
	results := make(chan result, 2)
	holderCtx, stopHolder := context.WithCancel(t.Context())
	defer stopHolder()
	goDo(holderCtx, peers[0], Request{Key: testKey, Rank: 0,
		Compile: blocking(&rec, peers[0].id, started, nil)}, results) // heartbeats, never finishes
	awaitStart(t, started)
	goDo(t.Context(), peers[1], Request{Key: testKey, Rank: 1,
		Compile: blocking(&rec, peers[1].id, started, closed())}, results)
	r := await(t, results, 1)[peers[1].id]
	if r.err != nil || r.out.Role != RoleDeadline || r.out.CID != cidOf(peers[1].id) {
		t.Errorf("waiter past the deadline: %+v, %v", r.out, r.err)
	}
	stopHolder()
	if r := await(t, results, 1)[peers[0].id]; !errors.Is(r.err, context.Canceled) {
		t.Errorf("cancelled holder: %+v, %v", r.out, r.err)
	}
}

func closed() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func TestWaiterCancelled(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 3, fastConfig())
	var rec compiles
	started := make(chan peer.ID, 3)
	release := make(chan struct{})
	results := make(chan result, 3)
	waiterCtx, cancelWaiter := context.WithCancel(t.Context())
	for i, p := range peers {
		ctx := t.Context()
		if i == 2 {
			ctx = waiterCtx
		}
		goDo(ctx, p, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)}, results)
	}
	holder := awaitStart(t, started)
	cancelWaiter()
	if r := await(t, results, 1)[peers[2].id]; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled waiter: %+v, %v", r.out, r.err)
	}
	close(release)
	checkServed(t, await(t, results, 2), holder, RoleCompiled)
	if ids := rec.list(); len(ids) != 1 {
		t.Errorf("compiles %v, want one", ids)
	}
}

func TestHolderCancelledHandsOver(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 3, fastConfig())
	var rec compiles
	started := make(chan peer.ID, 3)
	release := make(chan struct{})
	results := make(chan result, 3)
	holderCtx, cancelHolder := context.WithCancel(t.Context())
	for i, p := range peers {
		ctx := t.Context()
		if i == 0 {
			ctx = holderCtx
		}
		goDo(ctx, p, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)}, results)
	}
	awaitStart(t, started)
	cancelHolder() // WITHDRAW: the next peer takes over without waiting for the lease to expire
	if r := await(t, results, 1)[peers[0].id]; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled holder: %+v, %v", r.out, r.err)
	}
	if id := awaitStart(t, started); id != peers[1].id {
		t.Fatalf("took over by %s, want %s", id, peers[1].id)
	}
	close(release)
	checkServed(t, await(t, results, 2), peers[1].id, RoleTookOver)
}

func TestPartitionBothSidesCompile(t *testing.T) {
	t.Parallel()
	net, peers := newMemFleet(t, 4, fastConfig())
	net.Partition([]peer.ID{peers[0].id, peers[1].id}, []peer.ID{peers[2].id, peers[3].id})
	var rec compiles
	results := make(chan result, 4)
	for i, p := range peers {
		goDo(t.Context(), p, Request{Key: testKey, Rank: i % 2, Compile: quick(&rec, p.id, 0)}, results)
	}
	got := await(t, results, 4)
	checkServed(t, map[peer.ID]result{peers[0].id: got[peers[0].id], peers[1].id: got[peers[1].id]},
		peers[0].id, RoleCompiled)
	checkServed(t, map[peer.ID]result{peers[2].id: got[peers[2].id], peers[3].id: got[peers[3].id]},
		peers[2].id, RoleCompiled)
	if n := len(rec.list()); n != 2 {
		t.Errorf("%d compiles, want one per side", n)
	}
}

func TestForgedSenderIgnored(t *testing.T) {
	t.Parallel()
	net, peers := newMemFleet(t, 2, fastConfig())
	attacker := net.Join(testPeerID(t, 99))
	var rec compiles
	started := make(chan peer.ID, 2)
	release := make(chan struct{})
	results := make(chan result, 2)
	for i, p := range peers {
		goDo(t.Context(), p, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)}, results)
	}
	holder := awaitStart(t, started)
	forged, err := (&Message{Type: TypeDone, Sender: holder, Key: testKey, Epoch: 1, CID: testCID("evil")}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{forged, []byte("garbage"), nil} {
		if err := attacker.Publish(t.Context(), b); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * fastConfig().Window) // the forged DONE would have ended the wait by now
	close(release)
	checkServed(t, await(t, results, 2), holder, RoleCompiled)
}

func TestReady(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 2, fastConfig())
	var rec compiles
	t.Run("at start", func(t *testing.T) {
		out, err := peers[0].c.Do(t.Context(), Request{Key: testKey, Compile: quick(&rec, peers[0].id, 0),
			Ready: func() (cid.Cid, bool) { return testCID("known"), true }})
		if err != nil || out.Role != RoleFound || out.CID != testCID("known") {
			t.Fatalf("got %+v, %v", out, err)
		}
	})
	t.Run("on notify while waiting", func(t *testing.T) {
		started := make(chan peer.ID, 1)
		results := make(chan result, 2)
		holderCtx, stopHolder := context.WithCancel(t.Context())
		defer stopHolder()
		key := Key{ModelID: "m", ProfileID: "p", Class: "notify"}
		goDo(holderCtx, peers[0], Request{Key: key, Rank: 0, Compile: blocking(&rec, peers[0].id, started, nil)},
			results)
		awaitStart(t, started)
		var mu sync.Mutex
		have := false
		goDo(t.Context(), peers[1], Request{Key: key, Rank: 1, Compile: quick(&rec, peers[1].id, 0),
			Ready: func() (cid.Cid, bool) { mu.Lock(); defer mu.Unlock(); return testCID("arrived"), have }}, results)
		time.Sleep(3 * fastConfig().Window)
		mu.Lock()
		have = true
		mu.Unlock()
		peers[1].c.Notify()
		r := await(t, results, 1)[peers[1].id]
		if r.err != nil || r.out.Role != RoleFound || r.out.CID != testCID("arrived") {
			t.Fatalf("got %+v, %v", r.out, r.err)
		}
	})
	if ids := rec.list(); len(ids) != 1 || ids[0] != peers[0].id {
		t.Errorf("compiles %v, want only the blocked holder", ids)
	}
}

func TestDoRejects(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 1, fastConfig())
	c := peers[0].c
	ok := func(context.Context) (cid.Cid, error) { return testCID("cid"), nil }
	tests := []struct {
		name string
		req  Request
	}{
		{"empty key", Request{Compile: ok}},
		{"bad class", Request{Key: Key{ModelID: "m", ProfileID: "p", Class: "a b"}, Compile: ok}},
		{"negative rank", Request{Key: testKey, Rank: -1, Compile: ok}},
		{"rank too large", Request{Key: testKey, Rank: 1 << 16, Compile: ok}},
		{"no compile", Request{Key: testKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Do(t.Context(), tt.req); !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("got %v, want ErrInvalidRequest", err)
			}
		})
	}
	t.Run("busy", func(t *testing.T) {
		started := make(chan peer.ID, 1)
		release := make(chan struct{})
		results := make(chan result, 1)
		goDo(t.Context(), peers[0], Request{Key: testKey, Compile: blocking(&compiles{}, peers[0].id, started, release)},
			results)
		awaitStart(t, started)
		if _, err := c.Do(t.Context(), Request{Key: testKey, Compile: ok}); !errors.Is(err, ErrBusy) {
			t.Errorf("second Do: %v, want ErrBusy", err)
		}
		close(release)
		if r := await(t, results, 1)[peers[0].id]; r.err != nil {
			t.Errorf("first Do: %v", r.err)
		}
	})
}

func TestNewRejectsConfig(t *testing.T) {
	t.Parallel()
	tr := NewMemNetwork().Join(testPeerID(t, 1))
	for _, cfg := range []Config{
		{Window: -1}, {LeaseTTL: time.Millisecond}, {LeaseTTL: 2 * MaxTTL}, {LeaseTTL: time.Second + 1},
		{Deadline: -1}, {MaxFailures: -1}, {Spread: -1},
	} {
		if _, err := New(tr, cfg); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("New(%+v): %v, want ErrInvalidRequest", cfg, err)
		}
	}
}

// TestMissedDoneAnswered: a waiter that missed the holder's DONE (a partition here; lost gossip in a large fleet)
// sees the lease expire, speaks its WANT in a new round, and the finished compiler answers with its DONE again:
// the waiter is served rather than compiling a second time.
func TestMissedDoneAnswered(t *testing.T) {
	t.Parallel()
	net, peers := newMemFleet(t, 2, fastConfig())
	var rec compiles
	started := make(chan peer.ID, 2)
	release := make(chan struct{})
	results := make(chan result, 2)
	for i, p := range peers {
		goDo(t.Context(), p, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)}, results)
	}
	if id := awaitStart(t, started); id != peers[0].id {
		t.Fatalf("first compiler %s, want %s", id, peers[0].id)
	}
	net.Partition([]peer.ID{peers[0].id})
	close(release)
	if r := await(t, results, 1)[peers[0].id]; r.err != nil || r.out.Role != RoleCompiled {
		t.Fatalf("holder: %+v, %v", r.out, r.err)
	}
	net.Heal()
	r := await(t, results, 1)[peers[1].id]
	if r.err != nil || r.out.Role != RoleWaited || r.out.CID != cidOf(peers[0].id) {
		t.Errorf("waiter that missed the DONE: %+v, %v; want the holder's blob", r.out, r.err)
	}
	if ids := rec.list(); len(ids) != 1 {
		t.Errorf("compiles %v, want one", ids)
	}
}
