package flight

import (
	"cmp"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
)

// holderState is the peer a flight waits for, published by its goroutine for readers outside it (status).
type holderState struct {
	mu sync.Mutex
	id peer.ID
}

// noteHolder publishes whom this peer waits for: the peer of the live claim or lease whose blob would serve it,
// one compiling (held) before one only claiming, then the lowest rank; none while this peer claims or compiles.
func (f *flight) noteHolder() {
	var best peer.ID
	if !f.claiming && !f.compiling {
		var bl lease
		for p, l := range f.leases {
			if l.rank > f.rank {
				continue
			}
			if best == "" || holderBefore(p, l, best, bl) {
				best, bl = p, l
			}
		}
	}
	f.holder.mu.Lock()
	f.holder.id = best
	f.holder.mu.Unlock()
}

func holderBefore(p peer.ID, l lease, q peer.ID, m lease) bool {
	if l.held != m.held {
		return l.held
	}
	return cmp.Or(cmp.Compare(l.rank, m.rank), cmp.Compare(p, q)) < 0
}

// Holder returns the peer whose claim or lease the flight for key is waiting on: the peer compiling (or about to
// compile) the blob this peer will take. It is empty when no flight for key is under way here, while this peer
// elects, claims or compiles itself, and once the flight ended.
func (c *Coordinator) Holder(key Key) peer.ID {
	c.mu.Lock()
	f := c.flights[key]
	c.mu.Unlock()
	if f == nil {
		return ""
	}
	f.holder.mu.Lock()
	defer f.holder.mu.Unlock()
	return f.holder.id
}
