package fleetsim

import (
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Overlay describes the connection graph after the steady phase: gossipsub's meshes are subsets of it, so its
// diameter is a lower bound of a mesh's, and the ring distance of its chords (connections that are not bootstrap
// links) says whether the overlay fill's connections are random or drawn near the member.
type Overlay struct {
	Diameter      int     // most hops between two members over connections
	MeanDist      float64 // mean hops between two members
	Chords        int     // connections that are not bootstrap links
	ChordMedian   int     // median ring distance of a chord (|i - j| around the ring of n members)
	ChordsPastTen float64 // share of chords longer than n/10
	DegreeMax     int     // most connections of a member (among members)
}

func (o Overlay) String() string {
	return fmt.Sprintf("diameter=%d mean_dist=%.2f chords=%d chord_ring_dist_median=%d chords_past_n/10=%.2f degree_max=%d",
		o.Diameter, o.MeanDist, o.Chords, o.ChordMedian, o.ChordsPastTen, o.DegreeMax)
}

// overlay measures the connections among ms (members 0..n-1); boot says whether i-j is a bootstrap link. It
// also returns the hops between two members over the connections (-1: not connected), to compare a delivery's
// hops with its shortest path (Spread.DistMean).
func overlay(ms []*member, boot func(a, b int32) bool) (Overlay, func(a, b int32) int) {
	n := len(ms)
	idx := make(map[peer.ID]int, n)
	for i, m := range ms {
		idx[m.id] = i
	}
	adj := make([][]int, n)
	var o Overlay
	var dists []int
	for i, m := range ms {
		for _, p := range m.host.Network().Peers() {
			j, ok := idx[p]
			if !ok {
				continue
			}
			adj[i] = append(adj[i], j)
			if i < j && !boot(int32(i), int32(j)) {
				d := min(j-i, n-(j-i))
				dists = append(dists, d)
				if d > n/10 {
					o.ChordsPastTen++
				}
			}
		}
	}
	for _, a := range adj {
		o.DegreeMax = max(o.DegreeMax, len(a))
	}
	o.Chords = len(dists)
	if len(dists) > 0 {
		slices.Sort(dists)
		o.ChordMedian = dists[len(dists)/2]
		o.ChordsPastTen /= float64(len(dists))
	}
	var sum, pairs float64
	all := make([]int16, n*n) // 2 MB at 1,000 members
	queue := make([]int, 0, n)
	for s := range n {
		dist := all[s*n : (s+1)*n]
		for i := range dist {
			dist[i] = -1
		}
		dist[s] = 0
		queue = append(queue[:0], s)
		for k := 0; k < len(queue); k++ {
			u := queue[k]
			for _, v := range adj[u] {
				if dist[v] < 0 {
					dist[v] = dist[u] + 1
					queue = append(queue, v)
				}
			}
		}
		for _, d := range dist {
			if d > 0 {
				sum += float64(d)
				pairs++
				o.Diameter = max(o.Diameter, int(d))
			}
		}
	}
	if pairs > 0 {
		o.MeanDist = sum / pairs
	}
	return o, func(a, b int32) int {
		if a < 0 || b < 0 || int(a) >= n || int(b) >= n {
			return -1
		}
		return int(all[int(a)*n+int(b)])
	}
}
