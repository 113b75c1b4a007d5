package flight

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// pubsubConfig leaves room for gossipsub on a loaded 2-core machine under -race, where delivery on loopback was
// seen to take over 400 ms: the window must exceed the delivery time or peers decide before they hear each other
// (and then both compile, which the rules allow but these tests count).
func pubsubConfig() Config {
	return Config{Window: time.Second, LeaseTTL: 3 * time.Second, Deadline: 30 * time.Second,
		Logger: testLogger()}
}

type psPeer struct {
	testPeer
	h       host.Host
	tr      *PubSubTransport
	ctx     context.Context    // lives as long as this peer's pubsub
	cancel  context.CancelFunc // stops this peer's pubsub and coordinator
	ran     chan struct{}      // closed when Run returned
	running bool
}

// newPubSubFleet starts n real libp2p hosts on loopback TCP, each with gossipsub and a coordinator, connects
// them all directly, and starts the coordinators once every peer hears every other.
func newPubSubFleet(t *testing.T, n int) []*psPeer {
	t.Helper()
	return newPubSubOverlay(t, n, func(int, int) bool { return true })
}

// newPubSubOverlay is newPubSubFleet with peers i < j connected only where edge(i, j).
func newPubSubOverlay(t *testing.T, n int, edge func(i, j int) bool) []*psPeer {
	t.Helper()
	peers := make([]*psPeer, n)
	for i := range peers {
		h, err := libp2p.New(
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
			libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
			libp2p.DisableRelay(),
		)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		// Flood publishing, as DESIGN.md asks of the node: a new peer hears us before the next mesh heartbeat.
		ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true))
		if err != nil {
			t.Fatal(err)
		}
		tr, err := NewPubSubTransport(ps, h.ID())
		if err != nil {
			t.Fatal(err)
		}
		c, err := New(tr, pubsubConfig())
		if err != nil {
			t.Fatal(err)
		}
		p := &psPeer{testPeer: testPeer{id: h.ID(), c: c}, h: h, tr: tr, ctx: ctx, cancel: cancel,
			ran: make(chan struct{})}
		peers[i] = p
		t.Cleanup(func() {
			_ = tr.Close() // fails once pubsub's context is done; nothing to release then
			cancel()
			if p.running {
				<-p.ran
			}
			if err := h.Close(); err != nil {
				t.Errorf("close host: %v", err)
			}
		})
	}
	for i, a := range peers {
		for j, b := range peers[i+1:] {
			if !edge(i, i+1+j) {
				continue
			}
			if err := a.h.Connect(t.Context(), peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	warmUp(t, peers)
	for _, p := range peers {
		p.running = true
		go func() {
			defer close(p.ran)
			if err := p.c.Run(p.ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
	}
	return peers
}

// warmUp returns once every peer has received a message from every other peer. Gossipsub drops what is
// published in the first moments after a connection (before its outbound stream is up), which would make the
// flight tests depend on startup timing rather than on the flight rules.
func warmUp(t *testing.T, peers []*psPeer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	warm := Key{ModelID: "warm", ProfileID: "up", Class: "test"}
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(func() {
			heard := map[peer.ID]bool{}
			for len(heard) < len(peers)-1 {
				rctx, rcancel := context.WithTimeout(ctx, 50*time.Millisecond)
				_, from, err := p.tr.Next(rctx)
				rcancel()
				if err == nil {
					heard[from] = true
				} else if ctx.Err() != nil {
					t.Errorf("peer %s heard %d of %d peers", p.id, len(heard), len(peers)-1)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, p := range peers {
			b, err := (&Message{Type: TypeWithdraw, Sender: p.id, Key: warm}).Encode()
			if err != nil {
				t.Fatal(err)
			}
			if err := p.tr.Publish(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-done:
			if t.Failed() {
				t.FailNow()
			}
			return
		case <-tick.C:
		}
	}
}

// The gossipsub tests do not run in parallel: twelve hosts under -race on two cores delay delivery past any
// window short enough for a test.

func TestPubSubOneCompile(t *testing.T) {
	peers := newPubSubFleet(t, 4)
	var rec compiles
	results := make(chan result, 4)
	for i, p := range peers {
		goDo(t.Context(), &p.testPeer, Request{Key: testKey, Rank: i, Compile: quick(&rec, p.id, 100*time.Millisecond)},
			results)
	}
	checkServed(t, await(t, results, 4), peers[0].id, RoleCompiled)
	if ids := rec.list(); !slices.Equal(ids, []peer.ID{peers[0].id}) {
		t.Errorf("compiles %v, want only %s", ids, peers[0].id)
	}
}

func TestPubSubKilledCompilerTakenOver(t *testing.T) {
	peers := newPubSubFleet(t, 4)
	var rec compiles
	started := make(chan peer.ID, 4)
	release := make(chan struct{})
	results := make(chan result, 4)
	deadCtx, stopDead := context.WithCancel(t.Context())
	defer stopDead()
	for i, p := range peers {
		ctx := t.Context()
		if i == 0 {
			ctx = deadCtx
		}
		goDo(ctx, &p.testPeer, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)},
			results)
	}
	if id := awaitStart(t, started); id != peers[0].id {
		t.Fatalf("first compiler %s, want %s", id, peers[0].id)
	}
	if err := peers[0].h.Close(); err != nil { // the compiler's host dies mid-compile
		t.Fatal(err)
	}
	stopDead()
	if r := await(t, results, 1)[peers[0].id]; r.err == nil {
		t.Errorf("killed compiler returned %+v", r.out)
	}
	if id := awaitStart(t, started); id != peers[1].id {
		t.Fatalf("took over by %s, want %s", id, peers[1].id)
	}
	close(release)
	checkServed(t, await(t, results, 3), peers[1].id, RoleTookOver)
	if n := len(rec.list()); n != 2 {
		t.Errorf("%d compiles, want the killed one and one takeover", n)
	}
}

func TestPubSubValidatorRejectsForgedSender(t *testing.T) {
	t.Parallel()
	peers := newPubSubFleet(t, 2)
	forged, err := (&Message{Type: TypeDone, Sender: peers[1].id, Key: testKey, Epoch: 1, CID: testCID("evil")}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	// The local validator runs on publish too, so a forged or malformed message never leaves the host.
	for _, b := range [][]byte{forged, []byte("garbage")} {
		if err := peers[0].tr.Publish(t.Context(), b); err == nil {
			t.Errorf("publishing %q succeeded", b)
		}
	}
	honest, err := (&Message{Type: TypeWithdraw, Sender: peers[0].id, Key: testKey}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := peers[0].tr.Publish(t.Context(), honest); err != nil {
		t.Fatal(err)
	}
}

// TestPubSubLineOneCompilePerClass connects real hosts in a line (each only to its neighbours) with two classes
// alternating along it, so no two peers of a class are adjacent: a class's flight messages cross members of the
// other class. Exactly one compile per class.
func TestPubSubLineOneCompilePerClass(t *testing.T) {
	const n = 8
	peers := newPubSubOverlay(t, n, func(i, j int) bool { return j == i+1 })
	keys := [2]Key{{ModelID: "m", ProfileID: "p", Class: "class-a"}, {ModelID: "m", ProfileID: "p", Class: "class-b"}}
	recs := [2]*compiles{{}, {}}
	results := make(chan result, n)
	for i, p := range peers {
		goDo(t.Context(), &p.testPeer, Request{Key: keys[i%2], Compile: quick(recs[i%2], p.id, 200*time.Millisecond)},
			results)
	}
	got := await(t, results, n)
	for c, rec := range recs {
		ids := rec.list()
		if len(ids) != 1 {
			t.Errorf("class %d compiled by %v, want exactly one peer", c, ids)
			continue
		}
		for i, p := range peers {
			if r := got[p.id]; i%2 == c && (r.err != nil || r.out.CID != cidOf(ids[0])) {
				t.Errorf("peer %d (class %d): %+v, %v; want the blob of %s", i, c, r.out, r.err, ids[0])
			}
		}
	}
}
