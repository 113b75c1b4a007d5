package p2p

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Scatter from the seed (docs/design.md 6.8, "seed scatter"): the chunks that only a seed-like peer holds are
// split among the receivers fetching the blob in equal interleaved shares, the same split on every receiver since
// each sees the same set of fetchers. Each receiver asks the seed first for its own share, front to back, and the
// others get those chunks from it: the seed's uplink sends each chunk about once (Mutualcast's scatter, with the
// forward done by the other receivers' pulls). A receiver whose share is all requested takes other shares'
// chunks that nobody but a full holder has yet, each receiver in its own order of weights so that two of them
// rarely take the same one: a faster receiver takes a larger share, and slow or departed receivers' shares are
// covered. A receiver counts as fetching once it has answered HAVE (not "not found") without holding every chunk.

// owners returns, for each chunk, whether this node owns it among the fetchers: itself and every live peer that
// has answered HAVE for the blob without holding all of it. The result is cached until the fetchers change.
func (t *transfer) owners() []bool {
	ids := []string{string(t.self)}
	for _, p := range t.peers {
		if !p.dropped && p.found && p.held < len(t.have) {
			ids = append(ids, string(p.id))
		}
	}
	slices.Sort(ids)
	key := strings.Join(ids, "\x00")
	if t.ownKey == key && t.own != nil {
		return t.own
	}
	// Balanced shares: the fetchers in the order of their weight for the blob, chunk i to the (i mod P)-th. A
	// share differs from another by at most one chunk, and each owner's chunks are spread over the blob.
	blob := t.blob.Bytes()
	slices.SortFunc(ids, func(a, b string) int {
		if c := cmp.Compare(ownerWeight(blob, -1, peer.ID(a)), ownerWeight(blob, -1, peer.ID(b))); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	me := slices.Index(ids, string(t.self))
	t.shares = len(ids)
	own := make([]bool, len(t.have))
	t.weight = make([]uint64, len(t.have))
	for i := range own {
		own[i] = i%len(ids) == me
		t.weight[i] = ownerWeight(blob, i, t.self)
	}
	t.own, t.ownKey = own, key
	return own
}

// ownerWeight is p's weight for chunk i of blob, or for the blob as a whole with i = -1: FNV-1a 64 over blob,
// index and peer ID, the same on every node.
func ownerWeight(blob []byte, i int, p peer.ID) uint64 {
	h := fnv.New64a()
	h.Write(blob)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(i))
	h.Write(b[:])
	h.Write([]byte(p))
	return h.Sum64()
}

// pickFromSeed chooses the chunk to ask seed-like fp for: the first chunk of this node's share that only peers
// holding the whole blob hold (the seed, receivers done) and no request is fetching, else, of the other shares'
// such chunks, the one with this node's highest weight: receivers done with their own shares then take different
// chunks. false: every such chunk is being fetched; the others are left to the partial holders.
func (t *transfer) pickFromSeed(fp *fpeer) (int, bool) {
	own := t.owners()
	n := len(t.have)
	full := t.fullHolders()
	now := time.Now()
	only := func(i int) bool {
		return !t.have[i] && t.assigned[i] == 0 && fp.serves(i, now) && int(t.avail[i]) <= full
	}
	for i := t.low; i < n; i++ {
		if own[i] && only(i) {
			return i, true
		}
	}
	// Each other share's first chunk is most likely in flight from its owner; a seed that sends each chunk once
	// (swarm_served.go) refuses it then, and this node backs off from it (refuseBackoff). Leaving it to its owner
	// instead stalled the end of a run for seconds when two receivers' views of the fetchers differed (each took
	// the chunk for the other's share's first).
	best := -1
	for i := t.low; i < n; i++ {
		if !own[i] && only(i) && (best < 0 || t.weight[i] > t.weight[best]) {
			best = i
		}
	}
	return best, best >= 0
}

// seedOnlyLeft reports whether some missing chunk is held by no live partial peer (only by full holders, or by
// nobody this node knows of).
func (t *transfer) seedOnlyLeft() bool {
	n := len(t.have)
	full := t.fullHolders()
	for i := t.low; i < n; i++ {
		if !t.have[i] && int(t.avail[i]) <= full {
			return true
		}
	}
	return false
}

// fullHolders counts the live peers holding every chunk; call with t.mu held.
func (t *transfer) fullHolders() int {
	full := 0
	for _, p := range t.peers {
		if !p.dropped && p.held == len(t.have) {
			full++
		}
	}
	return full
}
