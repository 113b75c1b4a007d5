package p2p

import (
	"slices"
	"testing"
	"time"
)

// A waiting worker is woken by the events that may give it something to do (its own peer's announcements, a
// chunk free again, the end game, a seed-like gate opening) and not by others (another peer's announcements, a
// request of another peer that ends well): docs/design.md 6.8 "Waking".
func TestWakeTargeted(t *testing.T) {
	t.Parallel()
	const n = 8
	none := -1 // addTestPeer(id, none): a peer holding no chunk
	tests := []struct {
		name  string
		setup func(tr *transfer) (waiter *fpeer, event func())
		want  []int // chunks the woken worker may ask for; nil: it must not be woken
	}{
		{"own HAVE_ADD", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", none)
			tr.addTestPeer("q", none)
			return p, func() { tr.addHave(p, []int{3}) }
		}, []int{3}},
		{"another peer's HAVE_ADD", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", none)
			q := tr.addTestPeer("q", none)
			return p, func() { tr.addHave(q, []int{3}) }
		}, nil},
		{"own ARRIVING", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", none)
			tr.addTestPeer("q", none)
			return p, func() { tr.addArriving(p, []int{3}) }
		}, []int{3}},
		{"another peer's ARRIVING", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", none)
			q := tr.addTestPeer("q", none)
			return p, func() { tr.addArriving(q, []int{3}) }
		}, nil},
		{"another peer's HAVE_ADD of a chunk a third peer holds", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", none)
			q := tr.addTestPeer("q", none)
			tr.addTestPeer("o", 3)
			return p, func() { tr.addHave(q, []int{3}) }
		}, nil},
		{"another peer's ARRIVING of a chunk a third peer holds", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", none)
			q := tr.addTestPeer("q", none)
			tr.addTestPeer("o", 3)
			return p, func() { tr.addArriving(q, []int{3}) }
		}, nil},
		{"own HAVE_ADD of a chunk requested from another peer", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", none)
			q := tr.addTestPeer("q", 3, 4, 5, 6, 7)
			tr.mark(q, chunkRange{First: 3, Count: 5}, ruleFree)
			return p, func() { tr.addHave(p, []int{3}) }
		}, nil},
		{"own HAVE_ADD of a chunk requested from another peer, end game", func(tr *transfer) (*fpeer, func()) {
			for i := 3; i < n; i++ {
				tr.have[i] = true
				tr.missing--
			}
			p := tr.addTestPeer("p", none)
			q := tr.addTestPeer("q", 0, 1, 2)
			tr.mark(q, chunkRange{First: 0, Count: 3}, ruleFree) // every missing chunk, fewer than endGameFill
			return p, func() { tr.addHave(p, []int{1}) }
		}, []int{1}},
		{"another peer's request fails: its chunk is free", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", 3)
			q := tr.addTestPeer("q", 3, 4, 5, 6, 7)
			tr.mark(q, chunkRange{First: 3, Count: 5}, ruleFree)
			return p, func() { tr.release(q, chunkRange{First: 3, Count: 1}) }
		}, []int{3}},
		{"another peer's request ends well", func(tr *transfer) (*fpeer, func()) {
			p := tr.addTestPeer("p", 3)
			q := tr.addTestPeer("q", 3, 4, 5, 6, 7)
			tr.mark(q, chunkRange{First: 3, Count: 5}, ruleFree)
			return p, func() {
				tr.have[3] = true
				tr.missing--
				tr.release(q, chunkRange{First: 3, Count: 1}) // 4 still in flight
			}
		}, nil},
		{"end game: requests in flight fall below endGameFill", func(tr *transfer) (*fpeer, func()) {
			for i := 4; i < n; i++ {
				tr.have[i] = true
				tr.missing--
			}
			p := tr.addTestPeer("p", 0, 1, 2)
			q := tr.addTestPeer("q", 0, 1, 2, 3)
			tr.mark(q, chunkRange{First: 0, Count: 4}, ruleFree) // every missing chunk requested
			return p, func() {
				tr.have[3] = true
				tr.missing--
				tr.release(q, chunkRange{First: 3, Count: 1})
			}
		}, []int{0, 1, 2}},
		{"seed-like gate: its own request ends", func(tr *transfer) (*fpeer, func()) {
			f := tr.addTestPeer("full")
			r := tr.addTestPeer("partial", 0)
			tr.mark(r, chunkRange{First: 4, Count: 4}, ruleFree) // keeps endGameFill out of it
			first, _, ok, _ := tr.next(f, true)
			if !ok {
				t.Fatal("no first request for the full peer")
			}
			return f, func() {
				tr.have[first.First] = true
				tr.missing--
				tr.release(f, first)
			}
		}, []int{1, 2, 3}},
		{"seed-like gate: the last partial peer completes", func(tr *transfer) (*fpeer, func()) {
			f := tr.addTestPeer("full")
			r := tr.addTestPeer("partial", 0, 1, 2, 3, 4, 5, 6)
			first, _, ok, _ := tr.next(f, true)
			if !ok || first.First != 7 {
				t.Fatalf("first request %v %v, want chunk 7, which only the full peer has", first, ok)
			}
			return f, func() { tr.addHave(r, []int{7}) }
		}, []int{0, 1, 2, 3, 4, 5, 6}},
		{"a chunk only full holders had is arriving at a partial peer", func(tr *transfer) (*fpeer, func()) {
			for i := 4; i < n; i++ {
				tr.have[i] = true
				tr.missing--
			}
			f := tr.addTestPeer("full")
			r := tr.addTestPeer("partial", 0, 1)
			tr.assigned[2], tr.assigned[3] = 1, 1 // only f has them, and they are on their way
			return f, func() { tr.addArriving(r, []int{2, 3}) }
		}, []int{0, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr := testTransfer(t, n)
			p, event := tc.setup(tr)
			type result struct {
				r  chunkRange
				ok bool
			}
			res := make(chan result, 1)
			go func() {
				r, _, ok, _ := tr.next(p, true)
				res <- result{r, ok}
			}()
			eventually(t, "the worker to wait", func() bool {
				tr.mu.Lock()
				defer tr.mu.Unlock()
				return p.wake != nil
			})
			select {
			case got := <-res:
				t.Fatalf("next returned %v before the event", got)
			default:
			}
			tr.mu.Lock()
			before := tr.wakeups
			tr.mu.Unlock()
			event()
			if tc.want != nil {
				select {
				case got := <-res:
					if !got.ok || got.r.Count != 1 || !slices.Contains(tc.want, int(got.r.First)) {
						t.Fatalf("next = %v %v, want one of chunks %v", got.r, got.ok, tc.want)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the worker slept through an event that gave it something to do")
				}
				return
			}
			time.Sleep(100 * time.Millisecond)
			tr.mu.Lock()
			woken := tr.wakeups - before
			tr.cancel(nil)
			tr.wakeAll()
			tr.mu.Unlock()
			if woken != 0 {
				t.Errorf("woken %d times by an event that gives it nothing", woken)
			}
			select {
			case got := <-res:
				if got.ok {
					t.Errorf("next = %v after an event that gives it nothing", got.r)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("next did not return once the transfer ended")
			}
		})
	}
}
