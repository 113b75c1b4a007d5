package flight

import (
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestBefore(t *testing.T) {
	t.Parallel()
	a, b := testPeerID(t, 1), testPeerID(t, 2)
	hi, lo := a, b // hi has the higher rendezvous weight for testKey
	if wa, wb := weight(testKey, a), weight(testKey, b); string(wa[:]) < string(wb[:]) {
		hi, lo = b, a
	}
	tests := []struct {
		name   string
		x      peer.ID
		rx     uint16
		y      peer.ID
		ry     uint16
		before bool
	}{
		{"lower rank wins over weight", lo, 0, hi, 1, true},
		{"higher rank loses", hi, 1, lo, 0, false},
		{"equal rank: higher weight wins", hi, 3, lo, 3, true},
		{"equal rank: lower weight loses", lo, 3, hi, 3, false},
		{"not before itself", hi, 3, hi, 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := before(testKey, tt.x, tt.rx, tt.y, tt.ry); got != tt.before {
				t.Fatalf("before = %v, want %v", got, tt.before)
			}
		})
	}
}

func TestClaimBeats(t *testing.T) {
	t.Parallel()
	a, b := testPeerID(t, 1), testPeerID(t, 2)
	tests := []struct {
		name string
		pa   peer.ID
		ra   uint16
		ea   uint64
		pb   peer.ID
		rb   uint16
		eb   uint64
		want bool
	}{
		{"higher epoch wins despite rank", a, 9, 2, b, 0, 1, true},
		{"lower epoch loses", a, 0, 1, b, 9, 2, false},
		{"same epoch: lower rank wins", a, 0, 1, b, 1, 1, true},
		{"same epoch: higher rank loses", a, 1, 1, b, 0, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := claimBeats(testKey, tt.pa, tt.ra, tt.ea, tt.pb, tt.rb, tt.eb); got != tt.want {
				t.Fatalf("claimBeats = %v, want %v", got, tt.want)
			}
		})
	}
	// Exactly one of two distinct claims wins, whatever their order.
	if claimBeats(testKey, a, 2, 5, b, 2, 5) == claimBeats(testKey, b, 2, 5, a, 2, 5) {
		t.Fatal("two equal-rank claims of one epoch both win or both lose")
	}
}

// TestWeightSpreadsKeys checks that rendezvous hashing spreads the compiles of many keys over equal-rank peers
// instead of always picking the same one.
func TestWeightSpreadsKeys(t *testing.T) {
	t.Parallel()
	peers := []peer.ID{testPeerID(t, 1), testPeerID(t, 2), testPeerID(t, 3), testPeerID(t, 4)}
	wins := map[peer.ID]int{}
	const keys = 400
	for i := range keys {
		k := Key{ModelID: fmt.Sprintf("model-%d", i), ProfileID: "p", Class: "c"}
		best := peers[0]
		for _, p := range peers[1:] {
			if before(k, p, 0, best, 0) {
				best = p
			}
		}
		wins[best]++
	}
	for _, p := range peers {
		// Each peer expects 100 wins; 50 is more than 5 standard deviations (8.7) away.
		if wins[p] < 50 {
			t.Errorf("peer %s won %d of %d keys: %v", p, wins[p], keys, wins)
		}
	}
}
