package p2p

import "github.com/ipfs/go-cid"

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
