package p2p

import (
	"context"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestFetchPeers: while a fetch runs, FetchPeers counts the peers chunks are coming from (one seed: 1; two seeds
// holding the whole blob: 2); it is 0 before and after.
func TestFetchPeers(t *testing.T) {
	t.Parallel()
	for _, seeds := range []int{1, 2} {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			data := randomBlob(t, 8<<20)
			f := startNode(t, "", nil)
			var (
				from []peer.ID
				blob cid.Cid
			)
			for range seeds {
				s := startNode(t, "", nil)
				blob = put(t, s, data)
				s.srv.beforeSend = func(int, []byte) { time.Sleep(30 * time.Millisecond) }
				connect(t, f, s)
				from = append(from, s.ID())
			}
			if n := f.FetchPeers(blob); n != 0 {
				t.Fatalf("FetchPeers before the fetch: %d", n)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- f.Fetch(ctx, blob, from, nil) }()
			most := 0
			for polling := true; polling; {
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
					polling = false
				case <-time.After(2 * time.Millisecond):
					most = max(most, f.FetchPeers(blob))
				}
			}
			if most != seeds {
				t.Errorf("FetchPeers was at most %d during the fetch, want %d", most, seeds)
			}
			if n := f.FetchPeers(blob); n != 0 {
				t.Errorf("FetchPeers after the fetch: %d", n)
			}
		})
	}
}
