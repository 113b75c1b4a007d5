package flight

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/internal/hostile"
)

// Threat 9.2 "forged compile failed": while a member compiles, two throwaway identities (real gossipsub peers,
// signing as themselves, holding no lease) publish failed DONEs for the key at every epoch around the holder's.
// Failures count only from a holder's live held lease of that epoch, so the waiter keeps waiting and is served
// by the honest compiler instead of giving up with ErrRemoteFailed.
func TestThreatForgedFlightFailure(t *testing.T) {
	peers := newPubSubFleet(t, 2)
	attackers, err := hostile.NewPeers(2, hostile.PeerOptions{PubSub: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, a := range attackers {
		t.Cleanup(func() { a.Close() })
		for _, p := range peers {
			if err := a.Connect(ctx, peer.AddrInfo{ID: p.h.ID(), Addrs: p.h.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.WaitTopicPeers(ctx, Topic, len(peers)); err != nil {
			t.Fatal(err)
		}
	}
	var rec compiles
	started := make(chan peer.ID, 2)
	release := make(chan struct{})
	results := make(chan result, 2)
	for i, p := range peers {
		goDo(t.Context(), &p.testPeer, Request{Key: testKey, Rank: i, Compile: blocking(&rec, p.id, started, release)},
			results)
	}
	if id := awaitStart(t, started); id != peers[0].id {
		t.Fatalf("first compiler %s, want %s", id, peers[0].id)
	}
	// The forgeries, repeated over more than a gossip delivery time so every member hears them.
	for range 5 {
		for _, a := range attackers {
			for epoch := uint64(1); epoch <= 3; epoch++ {
				b, err := (&Message{Type: TypeDone, Sender: a.ID(), Key: testKey, Epoch: epoch,
					Reason: "out of memory (forged)"}).Encode()
				if err != nil {
					t.Fatal(err)
				}
				if err := a.Publish(ctx, Topic, b); err != nil {
					t.Fatal(err)
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case r := <-results:
		t.Fatalf("peer %s ended during the forgeries: %+v, %v", r.id, r.out, r.err)
	default:
	}
	close(release)
	checkServed(t, await(t, results, 2), peers[0].id, RoleCompiled)
	if n := len(rec.list()); n != 1 {
		t.Errorf("%d compiles, want 1", n)
	}
}

// Threat 9.2 "a member claims the best candidacy and never claims": an attacker keeps a rank-0 WANT live, so every
// honest member stays silent (rule 2) and elects it. Passed over after the lease TTL (rule 5), it delays the flight
// by about T and costs no extra compile.
func TestThreatSilentBestWant(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	net, peers := newMemFleet(t, 4, cfg)
	attacker := net.Join(testPeerID(t, 99))
	want, err := (&Message{Type: TypeWant, Sender: attacker.Self(), Key: testKey, Rank: 0, TTL: cfg.LeaseTTL}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go func() {
		tick := time.NewTicker(cfg.LeaseTTL / 4)
		defer tick.Stop()
		for {
			_ = attacker.Publish(ctx, want)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	time.Sleep(10 * time.Millisecond) // the honest peers hear it before they start
	var rec compiles
	results := make(chan result, len(peers))
	start := time.Now()
	for i, p := range peers {
		goDo(t.Context(), p, Request{Key: testKey, Rank: 1 + i, Compile: quick(&rec, p.id, 0)}, results)
	}
	checkServed(t, await(t, results, len(peers)), peers[0].id, RoleCompiled)
	if ids := rec.list(); len(ids) != 1 {
		t.Errorf("compiles %v, want one", ids)
	}
	t.Logf("flight with a silent best candidate took %s (lease TTL %s)", time.Since(start).Round(time.Millisecond),
		cfg.LeaseTTL)
}

// Threat 9.2 "WANT flood at a finished compiler": it answers a WANT for a key it compiled with its DONE again, at
// most once per window and only for 2T + spread after the compile, so a flood of WANTs costs a bounded number of
// DONEs.
func TestThreatWantFloodAnswered(t *testing.T) {
	t.Parallel()
	cfg := fastConfig()
	net, peers := newMemFleet(t, 1, cfg)
	var rec compiles
	if _, err := peers[0].c.Do(t.Context(), Request{Key: testKey, Compile: quick(&rec, peers[0].id, 0)}); err != nil {
		t.Fatal(err)
	}
	attacker := net.Join(testPeerID(t, 99))
	want, err := (&Message{Type: TypeWant, Sender: attacker.Self(), Key: testKey, TTL: cfg.LeaseTTL}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	before := net.Sent()[TypeDone]
	start := time.Now()
	window := peers[0].c.finishedTTL() + 200*time.Millisecond
	sent := 0
	for time.Since(start) < window {
		if err := attacker.Publish(t.Context(), want); err != nil {
			t.Fatal(err)
		}
		sent++
		time.Sleep(100 * time.Microsecond)
	}
	answers := net.Sent()[TypeDone] - before
	limit := int(peers[0].c.finishedTTL()/cfg.Window) + 2
	t.Logf("%d WANTs in %s: %d DONEs answered (bound %d)", sent, window, answers, limit)
	if answers < 1 || answers > limit {
		t.Errorf("%d DONEs answered to %d WANTs, want 1..%d", answers, sent, limit)
	}
}
