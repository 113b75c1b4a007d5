package flight

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// counting compiles for d unless cancelled, and counts starts and completions.
type counting struct {
	mu        sync.Mutex
	started   int
	completed map[peer.ID]int
}

func (c *counting) compile(id peer.ID, d time.Duration) func(context.Context) (cid.Cid, error) {
	return func(ctx context.Context) (cid.Cid, error) {
		c.mu.Lock()
		c.started++
		c.mu.Unlock()
		select {
		case <-time.After(d):
			c.mu.Lock()
			c.completed[id]++
			c.mu.Unlock()
			return cidOf(id), nil
		case <-ctx.Done():
			return cid.Undef, ctx.Err()
		}
	}
}

// TestDelayedMessagesOneCompile delays every message by a random time up to several claim windows, so peers
// elect and claim before they hear each other and several start compiling. Rule 7's yield must leave exactly one
// finished compile, and every peer must get its blob. The log line is the measurement of docs/design.md 6.10.
func TestDelayedMessagesOneCompile(t *testing.T) {
	t.Parallel()
	const n = 8
	cfg := Config{Window: 50 * time.Millisecond, LeaseTTL: 1500 * time.Millisecond, Deadline: 20 * time.Second,
		Logger: testLogger()}
	for _, maxDelay := range []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		t.Run(maxDelay.String(), func(t *testing.T) {
			net, peers := newMemFleet(t, n, cfg)
			if maxDelay > 0 {
				net.SetDelay(func(peer.ID, peer.ID) time.Duration { return rand.N(maxDelay) })
			}
			rec := &counting{completed: map[peer.ID]int{}}
			results := make(chan result, n)
			for _, p := range peers {
				// Equal ranks: rendezvous hashing decides, the hardest case for a tie.
				goDo(t.Context(), p, Request{Key: testKey, Compile: rec.compile(p.id, 4*maxDelay+300*time.Millisecond)},
					results)
			}
			got := await(t, results, n)
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.completed) != 1 {
				t.Fatalf("finished compiles %v, want exactly one", rec.completed)
			}
			var compiler peer.ID
			for id := range rec.completed {
				compiler = id
			}
			yielded := 0
			for id, r := range got {
				yielded += r.out.Yielded
				if r.err != nil || r.out.CID != cidOf(compiler) {
					t.Errorf("peer %s: %+v, %v; want the blob of %s", id, r.out, r.err, compiler)
				}
			}
			t.Logf("delay up to %v, window %v, %d peers: %d compiles started, %d yielded, 1 finished",
				maxDelay, cfg.Window, n, rec.started, yielded)
		})
	}
}

// raceEnabled is set under the race detector (race_test.go).
var raceEnabled bool

// TestManyPeersFewMessages is rule 2's point: when every member of a large class wants the key at once, only the
// first few in backoff order speak, so the messages of a flight do not grow with the class (each is delivered to
// every member, so a member receives about as many as are published). Deliveries are delayed up to 20 ms.
func TestManyPeersFewMessages(t *testing.T) {
	t.Parallel()
	sizes := []int{50, 400}
	if testing.Short() || raceEnabled {
		sizes = []int{50, 150} // 400 peers' tickers under the race detector do not finish on 2 shared cores
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			cfg := Config{Window: 500 * time.Millisecond, LeaseTTL: 3 * time.Second, Deadline: 20 * time.Second,
				Logger: testLogger()}
			net, peers := newMemFleet(t, n, cfg)
			net.SetDelay(func(peer.ID, peer.ID) time.Duration { return rand.N(20 * time.Millisecond) })
			rec := &counting{completed: map[peer.ID]int{}}
			results := make(chan result, n)
			for _, p := range peers {
				goDo(t.Context(), p, Request{Key: testKey, Compile: rec.compile(p.id, 300*time.Millisecond)}, results)
			}
			got := await(t, results, n)
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if rec.started != 1 || len(rec.completed) != 1 {
				t.Errorf("%d compiles started, finished %v; want exactly one", rec.started, rec.completed)
			}
			for id, r := range got {
				if r.err != nil {
					t.Errorf("peer %s: %v", id, r.err)
				}
			}
			// Speakers: a few WANTs, one claim, one held lease and its heartbeats, one DONE, their WITHDRAWs.
			byType := net.Sent()
			sent := 0
			for _, c := range byType {
				sent += c
			}
			t.Logf("%d peers: %d messages published in the flight (%.2f per peer): %v", n, sent,
				float64(sent)/float64(n), byType)
			if sent > 40 {
				t.Errorf("%d messages published, want at most 40 whatever the class size", sent)
			}
		})
	}
}
