package p2p

import (
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// peerHolds tells a watch (swarm_have.go, serveWatch) which announcements its client cannot need: it sets out[k]
// when this node's transfer of blob knows that peer p holds chunk idx[k] verified (p's own HAVE or HAVE_ADD), or,
// with arriving, also when p has announced it arriving. Anything unknown (no transfer under way, p not in it or
// dropped, no HAVE of p yet) leaves out[k] false: the watch then announces the chunk as before. It only reads the
// transfer's state, under the transfer's lock.
func (n *Node) peerHolds(blob cid.Cid, p peer.ID, arriving bool, idx []uint32, out []bool) {
	clear(out)
	f, ok := n.flights.State(blob)
	if !ok || f == nil {
		return
	}
	f.mu.Lock()
	t := f.t
	f.mu.Unlock()
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	fp := t.peers[p]
	if fp == nil || fp.dropped || fp.have == nil {
		return
	}
	for k, i := range idx {
		if int(i) < len(fp.have) {
			out[k] = fp.have[i] || (arriving && fp.arriving(int(i)))
		}
	}
}
