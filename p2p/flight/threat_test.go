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
