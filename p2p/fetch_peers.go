package p2p

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// FetchPeers returns how many peers the transfer of blob under way in this node is receiving chunks from now (peers
// with a chunk request in flight); 0 when none runs. Status polls it; do not call it from a Fetch progress callback
// (that runs under the transfer's watcher lock, which a joining Fetch takes inside the flight group's).
func (n *Node) FetchPeers(blob cid.Cid) int {
	f, ok := n.flights.State(blob)
	if !ok {
		return 0
	}
	f.mu.Lock()
	t := f.t
	f.mu.Unlock()
	if t == nil {
		return 0
	}
	return t.sending()
}

// sending counts the live peers of t with a chunk request in flight.
func (t *transfer) sending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, fp := range t.peers {
		if !fp.dropped && len(fp.inflight) > 0 {
			n++
		}
	}
	return n
}

// joinTransfers adds p, a member that has just connected (or proven its membership), to every open transfer under
// way (docs/design.md 6.8): a receiver that started while the fleet's hosts were still connecting to each other
// swarms with all of them, not only with the peers it knew at its start.
func (n *Node) joinTransfers(p peer.ID) {
	for _, f := range n.flights.States() {
		f.mu.Lock()
		t, open := f.t, f.open
		f.mu.Unlock()
		if open && t != nil {
			t.addPeers([]peer.ID{p})
		}
	}
}

// An open transfer dials members it knows (membership table, 6.2) but is not connected to, until this many peers
// are connected: the overlay keeps each member's degree near MinPeers (6.3), while a swarm forwards best when
// receivers reach many others (6.9). Each peer costs every transfer a watch and its flows, so not every other:
// 12 took 9 % less CPU per byte than 16 at 24 hosts, and less time (docs/design.md 6.8). The connections are the
// transfer's (protected while it runs); the connection manager trims them after.
const (
	fetchDialPeers   = 12
	fetchDialTimeout = 5 * time.Second
)

// dialForTransfer dials known members it is not connected to, in random order and all at once, so that at most
// fetchDialPeers peers are connected in all; the dials end with ctx. Each member joins the open transfers as it
// connects (or proves its membership): joinTransfers.
func (n *Node) dialForTransfer(ctx context.Context) {
	if n.members == nil {
		return
	}
	need := fetchDialPeers - len(n.h.Network().Peers())
	if need <= 0 {
		return
	}
	cands := n.members.book.list(time.Now())
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, c := range cands {
		if need == 0 || ctx.Err() != nil {
			return
		}
		if c.ID == n.ID() || n.h.Network().Connectedness(c.ID) == network.Connected {
			continue
		}
		need--
		dial := n.transferDial
		if dial == nil {
			dial = func(ctx context.Context, p peer.ID) error { return n.h.Connect(ctx, peer.AddrInfo{ID: p}) }
		}
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, fetchDialTimeout)
			defer cancel()
			if err := dial(dctx, c.ID); err != nil {
				n.log.Debug("member not reached for a fetch", "peer", c.ID, "err", err)
			}
		})
	}
}
