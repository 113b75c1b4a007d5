package flight

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// weight is the rendezvous (highest-random-weight) hash of a peer for a key: every peer computes the same weight
// for the same (key, peer), and for different keys the winners spread evenly over the peers.
func weight(k Key, p peer.ID) [32]byte {
	h := sha256.New()
	h.Write([]byte("npu-agent/flight/hrw/1\x00"))
	for _, s := range [...]string{k.ModelID, k.ProfileID, k.Class} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	h.Write([]byte(p))
	var w [32]byte
	h.Sum(w[:0])
	return w
}

// before reports whether candidate a (rank ra) is preferred to b (rank rb) as the compiler of k: lower rank
// first, then higher rendezvous weight, then the smaller peer ID (only if the hashes collide).
func before(k Key, a peer.ID, ra uint16, b peer.ID, rb uint16) bool {
	if ra != rb {
		return ra < rb
	}
	wa, wb := weight(k, a), weight(k, b)
	if c := bytes.Compare(wa[:], wb[:]); c != 0 {
		return c > 0
	}
	return a < b
}

// claimBeats reports whether claim (pa, ra, ea) wins over claim (pb, rb, eb): the higher epoch, then the
// preferred candidate. It is a strict total order, so of two racing claimants exactly one yields.
func claimBeats(k Key, pa peer.ID, ra uint16, ea uint64, pb peer.ID, rb uint16, eb uint64) bool {
	if ea != eb {
		return ea > eb
	}
	return before(k, pa, ra, pb, rb)
}

// heldBeats reports whether held lease (pa, ra, ea) wins over held lease (pb, rb, eb) when both holders compile:
// the lower epoch (the earlier claim: a holder that claimed later did not hear the other in time), then the
// preferred candidate. It is a strict total order, so of concurrent holders exactly one keeps compiling.
func heldBeats(k Key, pa peer.ID, ra uint16, ea uint64, pb peer.ID, rb uint16, eb uint64) bool {
	if ea != eb {
		return ea < eb
	}
	return before(k, pa, ra, pb, rb)
}

// backoff is how long after a round's start peer p waits before it publishes its WANT for k: an exponential
// suppression timer (Nonnenmacher and Biersack) drawn from p's rendezvous weight, so the preferred candidate speaks
// first. With x = 1 - weight/2^256 (uniform in (0, 1], smallest for the highest weight) it is
// spread × max(0, 1 + ln x / ln maxPeers): among n candidates the first speaks at about spread × (1 - ln n /
// ln maxPeers), and those that speak within a delivery delay d after it number about maxPeers^(d/spread),
// whatever n is.
func backoff(k Key, p peer.ID, spread time.Duration) time.Duration {
	w := weight(k, p)
	x := 1 - float64(binary.BigEndian.Uint64(w[:8]))/(1<<64)
	if x <= 0 {
		return 0
	}
	return time.Duration(max(0, 1+math.Log(x)/math.Log(maxPeers)) * float64(spread))
}
