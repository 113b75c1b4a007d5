package p2p

import (
	"encoding/binary"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Scatter from the seed (docs/design.md 6.8, "seed scatter"): the chunks that only a seed-like peer holds are
// split among the receivers fetching the blob by rendezvous hashing, the same split on every receiver since
// each sees the same set of fetchers. Each receiver asks the seed first for its own share, front to back, and the
// others get those chunks from it: the seed's uplink sends each chunk about once (Mutualcast's scatter, with the
// forward done by the other receivers' pulls). A receiver whose share is requested takes the unowned chunks
// nobody holds yet from the back, so a faster receiver takes a larger share and the shares of slow or departed
// receivers are covered.

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
	self := string(t.self)
	own := make([]bool, len(t.have))
	blob := t.blob.Bytes()
	for i := range own {
		var best uint64
		var owner string
		for _, id := range ids {
			if w := ownerWeight(blob, i, peer.ID(id)); owner == "" || w > best {
				best, owner = w, id
			}
		}
		own[i] = owner == self
	}
	t.own, t.ownKey = own, key
	return own
}

// ownerWeight is p's rendezvous weight for chunk i of blob (FNV-1a 64 over blob, index, peer ID).
func ownerWeight(blob []byte, i int, p peer.ID) uint64 {
	h := fnv.New64a()
	h.Write(blob)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(i))
	h.Write(b[:])
	h.Write([]byte(p))
	return h.Sum64()
}

// pickFromSeed chooses the chunk to ask seed-like fp for: the first chunk of this node's share that only fp
// holds and no request is fetching, else the last such chunk of any share. false: every chunk that only fp holds
// is being fetched (the caller falls back to the rarest-first choice).
func (t *transfer) pickFromSeed(fp *fpeer) (int, bool) {
	own := t.owners()
	n := len(t.have)
	only := func(i int) bool { return !t.have[i] && t.assigned[i] == 0 && fp.have[i] && t.avail[i] <= 1 }
	for i := t.low; i < n; i++ {
		if own[i] && only(i) {
			return i, true
		}
	}
	for i := n - 1; i >= t.low; i-- {
		if only(i) {
			return i, true
		}
	}
	return 0, false
}
