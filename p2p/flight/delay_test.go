package flight

import (
	"context"
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
