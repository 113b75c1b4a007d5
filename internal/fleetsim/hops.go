package fleetsim

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/p2p"
)

// The hops of a member record: every member reports each record it takes as new and the peer it came from
// (p2p.Node.TraceMembers), so each delivery can be followed back to the record's member: the member is hop 0 and
// a receiver is one hop past the sender's copy. Hops do not depend on how fast this one process runs, where the
// anti-entropy rounds and times of the bootstrap do (it does every member's work: docs/benchmarks.md).

// take is one record a member took as new.
type take struct {
	at                time.Duration // since the tracer's t0
	seq               uint64
	recv, owner, from int32
	via               p2p.MemberVia
	added             bool
}

// tracer collects the members' events.
type tracer struct {
	t0    time.Time         // without a monotonic reading: events are timed on the wall clock, as seqs are (Run)
	index map[peer.ID]int32 // every host of the run, joiners included: read only once members start
	// added counts, per member, the original members (index < originals) that took a first record of it.
	added     []atomic.Int32
	originals int32

	mu      sync.Mutex
	takes   []take
	rounds  [][]time.Duration // per member: when its anti-entropy rounds started
	unknown int               // events naming a peer that is not a member of the run
}

func newTracer(t0 time.Time, ids []peer.ID, originals int) *tracer {
	tr := &tracer{t0: t0.Round(0), index: make(map[peer.ID]int32, len(ids)), added: make([]atomic.Int32, len(ids)),
		originals: int32(originals), rounds: make([][]time.Duration, len(ids))}
	for i, id := range ids {
		tr.index[id] = int32(i)
	}
	return tr
}

// hook is member i's p2p.Node.TraceMembers function.
func (tr *tracer) hook(i int32) func(p2p.MemberEvent) {
	return func(ev p2p.MemberEvent) {
		at := time.Since(tr.t0)
		if ev.Round {
			tr.mu.Lock()
			tr.rounds[i] = append(tr.rounds[i], at)
			tr.mu.Unlock()
			return
		}
		owner, ok := tr.index[ev.Owner]
		from, ok2 := tr.index[ev.From]
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if !ok || !ok2 {
			tr.unknown++
			return
		}
		tr.takes = append(tr.takes, take{at: at, seq: ev.Seq, recv: i, owner: owner, from: from, via: ev.Via, added: ev.Added})
		if ev.Added && i < tr.originals {
			tr.added[owner].Add(1)
		}
	}
}

// Spread is how one kind of membership event reached the members, over its records. Per record: the most hops
// of a delivery (the member reached last by hop count), the most pulls on a delivery's path (a pull waits for
// the receiver's anti-entropy round; a gossip hop takes milliseconds), the most anti-entropy rounds a receiver ran
// from the event until it took the record, and the time until the last target member took it; then their
// distribution over the records.
type Spread struct {
	Records, Complete, Deliveries int
	// Unknown counts deliveries whose path could not be followed back to the record's member (a sender's copy
	// not traced): left out of the hops.
	Unknown                int
	Hops, PullHops, Rounds Dist
	Seconds                Dist // over the complete records only
	HopsDeliveryMean       float64
	ViaGossip, ViaRelay    int // deliveries by how they came
	ViaPull                int
	// OverBootstrap is the share of gossip deliveries that crossed a bootstrap link (sender and receiver on
	// each other's bootstrap list): gossipsub's mesh is made of the first connections, and a mesh that is the
	// bootstrap ring has a diameter that grows with N.
	OverBootstrap float64
	HopsHist      []int // deliveries by hop count
	// DistMean is the mean, over the deliveries, of the fewest hops between the record's member and the receiver
	// over the connections at the end of the steady phase (refreshes only; Overlay); Shortest the share of
	// deliveries that took that few. A first copy that came the long way (the one process late on the short
	// path, or a mesh without the short path's connections) makes HopsDeliveryMean larger than DistMean.
	DistMean, Shortest float64
}

// Dist is a distribution over records.
type Dist struct{ Max, P99, Mean float64 }

func dist(v []float64) Dist {
	if len(v) == 0 {
		return Dist{}
	}
	slices.Sort(v)
	var sum float64
	for _, x := range v {
		sum += x
	}
	return Dist{Max: v[len(v)-1], P99: v[int(math.Ceil(0.99*float64(len(v))))-1], Mean: sum / float64(len(v))}
}

func (d Dist) String() string {
	return fmt.Sprintf("%.4g/%.4g/%.3g", d.Max, d.P99, d.Mean)
}

func (s Spread) String() string {
	return fmt.Sprintf("records=%d complete=%d deliveries=%d unknown=%d hops(max/p99/mean)=%v pull_hops=%v rounds=%v "+
		"seconds=%v hops_per_delivery=%.2f dist_per_delivery=%.2f shortest=%.2f via_gossip=%d via_relay=%d via_pull=%d gossip_over_bootstrap_links=%.2f hops_hist=%v",
		s.Records, s.Complete, s.Deliveries, s.Unknown, s.Hops, s.PullHops, s.Rounds, s.Seconds, s.HopsDeliveryMean,
		s.DistMean, s.Shortest, s.ViaGossip, s.ViaRelay, s.ViaPull, s.OverBootstrap, s.HopsHist)
}

// paths follows deliveries back to the records' members.
type paths struct {
	t      []take // sorted by owner, seq, receiver
	state  []uint8
	hops   []int16
	pulls  []int16
	rounds [][]time.Duration
}

const (
	unseen uint8 = iota
	following
	followed
	lost
)

// paths sorts the takes traced so far and returns them for analysis; the tracer keeps collecting into a fresh
// slice (a snapshot: takes after it are not in it).
func (tr *tracer) paths() *paths {
	tr.mu.Lock()
	t := slices.Clone(tr.takes)
	rounds := make([][]time.Duration, len(tr.rounds))
	for i, r := range tr.rounds {
		rounds[i] = slices.Clone(r)
	}
	tr.mu.Unlock()
	slices.SortFunc(t, func(a, b take) int {
		return cmp.Or(cmp.Compare(a.owner, b.owner), cmp.Compare(a.seq, b.seq), cmp.Compare(a.recv, b.recv),
			cmp.Compare(a.at, b.at))
	})
	return &paths{t: t, state: make([]uint8, len(t)), hops: make([]int16, len(t)), pulls: make([]int16, len(t)), rounds: rounds}
}

// find returns the index of recv's take of (owner, seq), or -1.
func (p *paths) find(owner int32, seq uint64, recv int32) int {
	i, ok := slices.BinarySearchFunc(p.t, take{owner: owner, seq: seq, recv: recv}, func(a, b take) int {
		return cmp.Or(cmp.Compare(a.owner, b.owner), cmp.Compare(a.seq, b.seq), cmp.Compare(a.recv, b.recv))
	})
	if !ok {
		return -1
	}
	return i
}

// follow returns the hops of take i (the record's member is hop 0) and the pulls on its path.
func (p *paths) follow(i int) (hops, pulls int, ok bool) {
	switch p.state[i] {
	case followed:
		return int(p.hops[i]), int(p.pulls[i]), true
	case following, lost:
		return 0, 0, false
	}
	t := p.t[i]
	p.state[i] = following
	ok = true
	if t.from != t.owner {
		if j := p.find(t.owner, t.seq, t.from); j < 0 {
			ok = false
		} else {
			hops, pulls, ok = p.follow(j)
		}
	}
	if !ok {
		p.state[i] = lost
		return 0, 0, false
	}
	hops++
	if t.via == p2p.ViaPull {
		pulls++
	}
	p.state[i], p.hops[i], p.pulls[i] = followed, int16(hops), int16(pulls)
	return hops, pulls, true
}

// roundsBetween counts member m's anti-entropy rounds started in (from, to].
func (p *paths) roundsBetween(m int32, from, to time.Duration) int {
	r := p.rounds[m]
	a, _ := slices.BinarySearch(r, from+1)
	b, _ := slices.BinarySearch(r, to+1)
	return b - a
}

// record is one record followed: the takes of it at its target members, the event's start and how many target
// members it should reach.
type record struct {
	takes []int
	start time.Duration
	need  int
}

// firsts groups, per member whose index passes owner, the first record of it each original member took (its
// join, whichever seq came first); start gives the event's start.
func (p *paths) firsts(originals int32, owner func(int32) bool, start func(int32) time.Duration) []record {
	type key struct{ owner, recv int32 }
	first := map[key]int{}
	for i, t := range p.t {
		if !t.added || t.recv >= originals || !owner(t.owner) {
			continue
		}
		k := key{t.owner, t.recv}
		if j, ok := first[k]; !ok || t.at < p.t[j].at {
			first[k] = i
		}
	}
	by := map[int32]*record{}
	for k, i := range first {
		r := by[k.owner]
		if r == nil {
			need := int(originals)
			if k.owner < originals {
				need--
			}
			r = &record{start: start(k.owner), need: need}
			by[k.owner] = r
		}
		r.takes = append(r.takes, i)
	}
	out := make([]record, 0, len(by))
	for _, r := range by {
		out = append(out, *r)
	}
	return out
}

// refreshes groups the records of original members signed within [from, to) (since t0), each taken by original
// members: the refreshes of a fleet whose members all know each other.
func (p *paths) refreshes(originals int32, t0 time.Time, from, to time.Duration) []record {
	type key struct {
		owner int32
		seq   uint64
	}
	by := map[key]*record{}
	for i, t := range p.t {
		signed := time.Duration(int64(t.seq) - t0.UnixNano())
		if t.owner >= originals || t.recv >= originals || signed < from || signed >= to {
			continue
		}
		k := key{t.owner, t.seq}
		r := by[k]
		if r == nil {
			r = &record{start: signed, need: int(originals) - 1}
			by[k] = r
		}
		r.takes = append(r.takes, i)
	}
	out := make([]record, 0, len(by))
	for _, r := range by {
		out = append(out, *r)
	}
	return out
}

// spread measures records; bootstrap tells whether two members are on each other's bootstrap list; fewest,
// if set, gives the fewest hops between two members (Spread.DistMean).
func (p *paths) spread(records []record, bootstrap func(a, b int32) bool, fewest func(a, b int32) int) Spread {
	var s Spread
	over := 0
	var distSum, distN, shortest int
	var hops, pulls, rounds, secs []float64
	var hopSum int
	for _, r := range records {
		s.Records++
		mh, mp, mr := -1, 0, 0
		var last time.Duration
		for _, i := range r.takes {
			t := p.t[i]
			s.Deliveries++
			switch t.via {
			case p2p.ViaGossip:
				s.ViaGossip++
				if bootstrap(t.from, t.recv) {
					over++
				}
			case p2p.ViaRelay:
				s.ViaRelay++
			case p2p.ViaPull:
				s.ViaPull++
			}
			last = max(last, t.at)
			mr = max(mr, p.roundsBetween(t.recv, r.start, t.at))
			h, pl, ok := p.follow(i)
			if !ok {
				s.Unknown++
				continue
			}
			hopSum += h
			if fewest != nil {
				if d := fewest(t.owner, t.recv); d > 0 {
					distSum, distN = distSum+d, distN+1
					if h == d {
						shortest++
					}
				}
			}
			for len(s.HopsHist) <= h {
				s.HopsHist = append(s.HopsHist, 0)
			}
			s.HopsHist[h]++
			mh, mp = max(mh, h), max(mp, pl)
		}
		if mh >= 0 {
			hops = append(hops, float64(mh))
			pulls = append(pulls, float64(mp))
		}
		rounds = append(rounds, float64(mr))
		if len(r.takes) >= r.need {
			s.Complete++
			secs = append(secs, (last - r.start).Seconds())
		}
	}
	s.Hops, s.PullHops, s.Rounds, s.Seconds = dist(hops), dist(pulls), dist(rounds), dist(secs)
	if s.ViaGossip > 0 {
		s.OverBootstrap = float64(over) / float64(s.ViaGossip)
	}
	if distN > 0 {
		s.DistMean, s.Shortest = float64(distSum)/float64(distN), float64(shortest)/float64(distN)
	}
	if known := s.Deliveries - s.Unknown; known > 0 {
		s.HopsDeliveryMean = float64(hopSum) / float64(known)
	}
	return s
}
