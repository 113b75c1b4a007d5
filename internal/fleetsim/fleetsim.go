// Package fleetsim runs the real membership, record and fleet single flight code of many fleet members in one
// process: each member is a p2p.Node started with p2p.NewOnHost on a libp2p mocknet host, with a flight
// coordinator on its gossipsub. Hosts are linked only along a short bootstrap list per member plus a few random
// links (what an operator's config and the network allow), never all pairs. It reports the time until every
// member lists every other, the gossip traffic and member records per member, the compiles per class when every
// member wants the same model at once, and the heap per member. docs/benchmarks.md has the figures.
package fleetsim

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/p2p/flight"
)

// Config is one simulation. Zero fields take the defaults noted.
type Config struct {
	Nodes int
	// Bootstrap: each member is linked and connected to this many members started just before it (default 3),
	// the static peers of the sparse fleet; the first members are linked to all earlier ones.
	Bootstrap int
	// ExtraLinks: random further links per member (default 8). A link only makes a connection possible (the
	// mocknet's cable); members dial over them when the overlay fill picks a linked member.
	ExtraLinks int
	// DialAny lets every member dial every other, as on a LAN: a dial between hosts without a link makes one.
	// Without it the overlay fill's random dials mostly fail (a random member is linked with probability about
	// ExtraLinks/Nodes), so the overlay stays close to the bootstrap links: a ring whose diameter grows with N.
	DialAny bool
	// Latency is each link's one-way delay. Mocknet streams lose nothing, as TCP turns a link's losses into delay.
	Latency time.Duration
	// PipeLatency applies Latency to the writes of the streams the members open and accept (delayStream), with
	// the mocknet's links at zero latency: every message arrives Latency after it was written, however many are
	// in flight. The mocknet's latency holds each write until it arrives (about two gossipsub RPCs per Latency
	// on a stream), which at a latency of 100 ms or more makes records queue behind each other. libp2p's own
	// streams (identify) then have no latency.
	PipeLatency bool
	// SteadyLatency, if set with PipeLatency, replaces Latency from full membership on: the overlay forms as
	// with Latency, and the flight, the steady phase and the joins run over links of SteadyLatency. A latency
	// well above this process's scheduling delay makes the first copy of a record the one that came the fewest
	// hops (benchmarks.md, wave 10).
	SteadyLatency time.Duration
	// Loss is the probability that a gossip message is lost on its way to a member (lossyStream: the messages
	// in gossipsub's RPCs are dropped, its control messages and the member pulls are not).
	Loss float64
	// Classes is the number of compatibility classes, assigned round-robin (default 2).
	Classes int
	// MemberRefresh and MinPeers are p2p.Config's (defaults: the node's, 30 s and 8).
	MemberRefresh time.Duration
	MinPeers      int
	// Window and LeaseTTL are the flight's (defaults 1 s and 15 s); CompileTime is one simulated compile
	// (default 2 s).
	Window, LeaseTTL, CompileTime time.Duration
	// Timeout bounds each phase: membership, and the flight (default 5 min).
	Timeout time.Duration
	// Steady, if set, is how long the members run after the flight, to measure what membership costs once
	// every table is complete (the Steady* figures).
	Steady time.Duration
	// Idle, if set, is how long the members run idle after full membership before the flight (FLEETSIM_IDLE): a
	// flight after idle members elected several compilers per class (benchmarks.md "Fleet scale").
	Idle time.Duration
	// LateFill holds the original members' overlay fill (p2p.Config.HoldFill) until full membership, so that
	// its draws come from complete tables (uniform over the fleet) and not from the partial, local ones of the
	// bootstrap; then it releases it and waits lateFillSettle (before Idle and the flight). Until then the
	// overlay is the bootstrap links. An experiment (benchmarks.md, FLEETSIM_LATE_FILL): the daemon has no such
	// switch.
	LateFill bool
	// Joins, if set, is how many members join after the steady phase, one every JoinGap (default 5 s), each
	// bootstrapped like the others (the Join* figures; Steady gives the baseline traffic they are measured
	// against).
	Joins   int
	JoinGap time.Duration
	// Parallel bounds concurrent starts, connects and closes (default 2 × GOMAXPROCS).
	Parallel int
	Seed     uint64
	Log      *slog.Logger // nil: discarded
	// Progress, if set, is called with what was measured so far at the end of each phase ("membership",
	// "flight"), before the members are closed (closing 1,000 nodes takes minutes).
	Progress func(phase string, r Result)
	// Waiting, if set, is called about every 10 s while the members do not all list each other yet: how many do,
	// and the mean number of members listed.
	Waiting func(elapsed time.Duration, complete int, meanListed float64)
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Bootstrap, 3)
	def(&c.ExtraLinks, 8)
	def(&c.Classes, 2)
	def(&c.Parallel, 2*runtime.GOMAXPROCS(0))
	defD(&c.Window, time.Second)
	defD(&c.LeaseTTL, 15*time.Second)
	defD(&c.CompileTime, 2*time.Second)
	defD(&c.Timeout, 5*time.Minute)
	defD(&c.JoinGap, 5*time.Second)
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Result is what one simulation measured. Per-member figures are means over all members.
type Result struct {
	Nodes, Links, Classes int
	// Dialled counts links made when a member dialled a member it was not linked to (Config.DialAny).
	Dialled     int
	Latency     time.Duration
	PipeLatency bool
	// SteadyLatency as Config's; Window the flight's (Config.Window).
	SteadyLatency, Window time.Duration
	Loss                  float64
	// FullMembership: from the first bootstrap connection until every member lists every member.
	FullMembership time.Duration
	// MemberPublished and MemberAccepted are p2p.Node.MemberStats at full membership: records a member
	// published, and new records it took (gossip or pull); MemberPulled those it took by pulls, MemberRelayed
	// pulled records it published because their gossip had not come.
	MemberPublished, MemberAccepted, MemberPulled, MemberRelayed float64
	// Rounds and RoundsMax are the anti-entropy rounds (one pull from a random peer each, 1, 2, 4, then every
	// 5 s) members ran until full membership, mean and most.
	Rounds    float64
	RoundsMax int64
	// Steady figures, over Config.Steady after full membership: member-pull bytes a member read per round
	// (as puller and answerer), the share of pulls the table hash found in sync, gossip bytes a member read per
	// second, and the rounds each member ran.
	SteadyPullBytes, SteadyInSync, SteadyGossipBytes, SteadyRounds float64
	SteadyPublished                                                int64 // member records published in the fleet
	// GossipBytes and SyncBytes are bytes a member read on gossipsub streams and on member table pulls, until
	// full membership; FlightGossipBytes is the gossipsub bytes read during the flight.
	GossipBytes, SyncBytes, FlightGossipBytes float64
	// ConnsMean and ConnsMax count each member's connected peers at full membership.
	ConnsMean float64
	ConnsMax  int
	// HeapPerNode is the live heap after full membership (after a GC) minus before the hosts were made, over
	// Nodes; GoroutinesPerNode likewise.
	HeapPerNode       float64
	GoroutinesPerNode float64
	// Compiles counts compiles started per class when every member asked for the same model at once; Yielded
	// those cancelled because another holder won (flight rule 7); FlightTime until every member had its outcome.
	Compiles   map[string]int
	Yielded    int
	FlightTime time.Duration
	// FlightSent and FlightReceived are the flight messages a member published and received during the flight.
	FlightSent, FlightReceived float64
	// FlightAt is when the flight started, after the members were started; FlightRecords the member records
	// published in the whole fleet during the flight (refreshes that fall into it), and FlightLagMax the longest
	// a 10 ms timer of this process fired late during the flight (the one process's scheduling delay).
	FlightAt      time.Duration
	FlightRecords int64
	FlightLagMax  time.Duration
	// Compilers describes each member that started a compile: when, and the flight messages it had received
	// by then (by type, with the first arrival).
	Compilers []string
	// Timeline has one line per second from full membership to the end of the flight: the process's worst
	// timer lag, the gossip bytes read and member records published in the fleet that second.
	Timeline []string
	// Verifies are the Ed25519 checks a member asked for until full membership (what a real member computes);
	// VerifiesComputed those this process computed for all members (verify.go: one per distinct signature).
	Verifies         float64
	VerifiesComputed int64

	// Hops (hops.go): how each kind of membership event reached the members. Bootstrap: each original member's
	// first record at every other, until full membership. Refreshes: the records original members republished
	// during the steady phase (complete tables). Joins: the first record of each member that joined after it.
	Bootstrap, Refreshes, Joins Spread
	// Overlay is the connection graph at the end of the steady phase (graph.go).
	Overlay Overlay
	// Messages per membership event, per member: BootstrapMsgs the member records a member received on gossip
	// (every copy) until full membership per record published in the fleet, RefreshMsgs the same in the steady
	// phase, JoinMsgs the copies of a joiner's records an original member received per join.
	BootstrapMsgs, RefreshMsgs, JoinMsgs float64
	// Per join, over the joins: JoinLearnt the seconds until the new member listed every member; JoinPullBytes
	// the member-pull bytes an original member read in the join's window (JoinGap, or until every member took
	// the new record) above the steady phase's rate; JoinerBytes what the new member read (its table).
	JoinLearnt                 Dist
	JoinPullBytes, JoinerBytes float64
	// EventsLagMax and EventsLagMean: how late a 10 ms timer of this process fired during the steady phase and
	// the joins, the worst and on average (whether the process kept up, so that rounds there are gossip's).
	EventsLagMax, EventsLagMean time.Duration
	// Lost is the gossip messages Loss dropped per member; Load the machine's 1-minute load average (Linux)
	// at the start, at full membership and at the end.
	Lost float64
	Load [3]float64
}

func (r Result) String() string {
	return fmt.Sprintf("nodes=%d links=%d dialled=%d latency=%s pipe=%t steady_latency=%s window=%s full_membership=%.2fs rounds=%.1f rounds_max=%d "+
		"member_published=%.1f member_accepted=%.1f member_pulled=%.1f member_relayed=%.2f gossip_kib=%.1f sync_kib=%.1f "+
		"gossip_bytes_per_publish=%.0f flight_gossip_kib=%.1f conns_mean=%.1f conns_max=%d heap_kib=%.0f "+
		"goroutines=%.0f compiles=%v yielded=%d flight=%.2fs flight_msgs_sent=%.3f flight_msgs_received=%.2f "+
		"verifies=%.1f verifies_computed=%d steady_pull_bytes_per_round=%.0f steady_in_sync=%.3f "+
		"steady_gossip_bytes_per_s=%.0f steady_rounds=%.1f flight_at=%.1fs flight_records=%d flight_lag_max=%s",
		r.Nodes, r.Links, r.Dialled, r.Latency, r.PipeLatency, r.SteadyLatency, r.Window, r.FullMembership.Seconds(), r.Rounds, r.RoundsMax, r.MemberPublished,
		r.MemberAccepted, r.MemberPulled, r.MemberRelayed, r.GossipBytes/1024, r.SyncBytes/1024, r.GossipPerPublish(),
		r.FlightGossipBytes/1024, r.ConnsMean, r.ConnsMax, r.HeapPerNode/1024, r.GoroutinesPerNode, r.Compiles,
		r.Yielded, r.FlightTime.Seconds(), r.FlightSent, r.FlightReceived, r.Verifies, r.VerifiesComputed,
		r.SteadyPullBytes, r.SteadyInSync, r.SteadyGossipBytes, r.SteadyRounds, r.FlightAt.Seconds(), r.FlightRecords,
		r.FlightLagMax.Round(time.Millisecond)) +
		fmt.Sprintf(" loss=%.3f lost=%.1f msgs_per_event(bootstrap/refresh/join)=%.2f/%.2f/%.2f join_learnt_s=%v "+
			"join_pull_bytes=%.0f joiner_bytes=%.0f events_lag_max=%s events_lag_mean=%s load=%.1f/%.1f/%.1f"+
			"\n  bootstrap: %v\n  refreshes: %v\n  joins: %v\n  overlay: %v",
			r.Loss, r.Lost, r.BootstrapMsgs, r.RefreshMsgs, r.JoinMsgs, r.JoinLearnt, r.JoinPullBytes, r.JoinerBytes,
			r.EventsLagMax.Round(time.Millisecond), r.EventsLagMean.Round(time.Microsecond), r.Load[0], r.Load[1],
			r.Load[2], r.Bootstrap, r.Refreshes, r.Joins, r.Overlay)
}

// GossipPerPublish is the gossip bytes a member read until full membership per member record published in the
// whole fleet: a member's cost per membership event, which gossip keeps independent of N (each member receives
// each record about once, plus gossipsub's duplicates along its mesh of bounded degree).
func (r Result) GossipPerPublish() float64 {
	if r.MemberPublished == 0 || r.Nodes == 0 {
		return 0
	}
	return r.GossipBytes / (r.MemberPublished * float64(r.Nodes))
}

type member struct {
	id      peer.ID
	host    *countingHost
	node    *p2p.Node
	tr      *flight.PubSubTransport
	coord   *flight.Coordinator
	class   string
	traffic traffic
}

// ErrTimeout is returned when a phase does not finish within Config.Timeout.
var ErrTimeout = errors.New("fleetsim: phase did not finish in time")

// Run runs one simulation and closes everything it started before it returns.
// lateFillSettle is how long Config.LateFill waits after releasing the fills: a fill round dials at most 4
// members and its ticks are MemberRefresh/10 apart (30 s at the 1,000 benchmark's 5 min), so the harness starts
// rounds itself, lateFillRounds of them, for the 8 fill connections and then the bootstrap peers' retirement.
const (
	lateFillSettle = 30 * time.Second
	lateFillRounds = 3
)

// releaseFills releases every member's held fill (Config.LateFill) and starts a fill round every
// lateFillSettle/lateFillRounds (a call while a round runs does nothing), then waits out lateFillSettle.
func releaseFills(ctx context.Context, ms []*member) error {
	tick := time.NewTicker(lateFillSettle / lateFillRounds)
	defer tick.Stop()
	for range lateFillRounds {
		for _, m := range ms {
			m.node.ReleaseFill()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.withDefaults()
	res := Result{Nodes: cfg.Nodes, Classes: cfg.Classes, Latency: cfg.Latency, PipeLatency: cfg.PipeLatency, SteadyLatency: cfg.SteadyLatency, Window: cfg.Window, Loss: cfg.Loss, Compiles: map[string]int{}}
	res.Load[0] = loadAvg()
	if cfg.Nodes < 2 {
		return res, fmt.Errorf("fleetsim: %d nodes", cfg.Nodes)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	dir, err := os.MkdirTemp("", "fleetsim-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	psk := make(pnet.PSK, 32)
	for i := range psk {
		psk[i] = byte(rng.IntN(256))
	}

	heap0, gor0 := heapNow()
	calls0, done0 := verifyCalls.Load(), verifyDone.Load()
	mn := mocknet.New()
	defer mn.Close()
	if !cfg.PipeLatency {
		mn.SetLinkDefaults(mocknet.LinkOptions{Latency: cfg.Latency})
	}
	// The members, then the Joins that come later: keys and links of the first ones come from the seed in the
	// same order whether or not members join.
	all := make([]*member, cfg.Nodes+cfg.Joins)
	ms := all[:cfg.Nodes]
	run := &runInfo{joiners: map[string]bool{}}
	run.delay.Store(int64(cfg.Latency))
	var linkMu sync.Mutex
	var dialled atomic.Int64
	var edges [][2]int
	linked := map[[2]int]bool{}
	link := func(i, j int) error {
		if i == j {
			return nil
		}
		k := [2]int{min(i, j), max(i, j)}
		if linked[k] {
			return nil
		}
		linked[k] = true
		_, err := mn.LinkPeers(all[i].id, all[j].id)
		return err
	}
	for _, part := range [][2]int{{0, cfg.Nodes}, {cfg.Nodes, len(all)}} {
		for i := part[0]; i < part[1]; i++ {
			sk, _, err := crypto.GenerateEd25519Key(rngReader{rng})
			if err != nil {
				return res, err
			}
			ip := make(net.IP, net.IPv6len)
			ip[0], ip[1] = 0x01, 0x00 // 100::/64, the mocknet's blackhole prefix: a usable, non-loopback address
			ip[12], ip[13], ip[14], ip[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
			addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip6/%s/tcp/4242", ip))
			if err != nil {
				return res, err
			}
			h, err := mn.AddPeer(sk, addr)
			if err != nil {
				return res, err
			}
			all[i] = &member{id: h.ID(), class: fmt.Sprintf("class-%c", 'a'+i%cfg.Classes)}
			all[i].host = &countingHost{Host: h, t: &all[i].traffic, loss: cfg.Loss, run: run, pipe: cfg.PipeLatency}
		}
		for i := part[0]; i < part[1]; i++ {
			for j := max(0, i-cfg.Bootstrap); j < i; j++ {
				if err := link(i, j); err != nil {
					return res, err
				}
				edges = append(edges, [2]int{i, j})
			}
			for range cfg.ExtraLinks / 2 { // each random link serves both ends: ExtraLinks per member on average
				if err := link(i, rng.IntN(cfg.Nodes)); err != nil {
					return res, err
				}
			}
		}
	}
	res.Links = len(linked)
	if cfg.DialAny {
		run.link = func(a, b peer.ID) error {
			linkMu.Lock()
			defer linkMu.Unlock()
			if len(mn.LinksBetweenPeers(a, b)) > 0 {
				return nil
			}
			dialled.Add(1)
			_, err := mn.LinkPeers(a, b)
			return err
		}
	}
	// Each member's bootstrap links are its static peers too (p2p.Config.StaticPeers), so that its overlay fill
	// knows them and retires them (design 6.2); the node's dials of them at start fail (runInfo.open).
	static := make([][]ma.Multiaddr, len(all))
	for _, e := range edges {
		to := all[e[1]].host
		static[e[0]] = append(static[e[0]], to.Addrs()[0].Encapsulate(ma.StringCast("/p2p/"+to.ID().String())))
	}
	var joinEdges [][2]int // the joiners' bootstrap links, connected when each joins
	for len(edges) > 0 && edges[len(edges)-1][0] >= cfg.Nodes {
		joinEdges = append(joinEdges, edges[len(edges)-1])
		edges = edges[:len(edges)-1]
	}
	ids := make([]peer.ID, len(all))
	for i, m := range all {
		ids[i] = m.id
		if i >= cfg.Nodes {
			run.joiners[string(m.id)] = true
		}
	}

	// Start every member (as daemons would, before they dial their static peers).
	// Times since tStart are read on the wall clock (Round(0) drops the monotonic reading): a record's seq is
	// its wall-clock signing time, which the hops compare with them, and a step of the clock (one of about 20 s
	// in wave 10's 1,000-member run) must move both alike.
	tStart := time.Now().Round(0)
	tr := newTracer(tStart, ids, cfg.Nodes)
	defer closeAll(all, max(cfg.Parallel, 64))
	startNode := func(i int) error {
		m := all[i]
		pc := p2p.Config{DataDir: filepath.Join(dir, fmt.Sprint(i)), FleetKey: psk, Class: m.class,
			Hostname: fmt.Sprintf("sim%d", i), MemberRefresh: cfg.MemberRefresh, MinPeers: cfg.MinPeers,
			StaticPeers: static[i], HoldFill: cfg.LateFill && i < cfg.Nodes}
		if err := os.Mkdir(pc.DataDir, 0o755); err != nil {
			return err
		}
		n, err := p2p.NewOnHost(ctx, pc, m.host, emptyStore{}, cfg.Log)
		if err != nil {
			return err
		}
		n.TraceMembers(tr.hook(int32(i))) // before any connection: the node has no peer to take records from yet
		m.node = n
		return nil
	}
	err = parallel(ctx, len(ms), cfg.Parallel, func(i int) error {
		if err := startNode(i); err != nil {
			return err
		}
		m := ms[i]
		n := m.node
		var err error
		if m.tr, err = flight.NewPubSubTransport(n.PubSub(), n.ID()); err != nil {
			return err
		}
		m.coord, err = flight.New(countingTransport{Transport: m.tr, t: &m.traffic}, flight.Config{Window: cfg.Window, LeaseTTL: cfg.LeaseTTL,
			Deadline: 10 * cfg.Timeout, Logger: cfg.Log})
		return err
	})
	if err != nil {
		return res, fmt.Errorf("fleetsim: start: %w", err)
	}
	runCtx, stopCoords := context.WithCancel(context.Background())
	var coordWG sync.WaitGroup
	defer func() { stopCoords(); coordWG.Wait() }()
	for _, m := range ms {
		coordWG.Go(func() { _ = m.coord.Run(runCtx) })
	}

	// Membership: connect the bootstrap pairs, then wait until every member lists every member.
	t0 := time.Now()
	run.open.Store(true)
	err = parallel(ctx, len(edges), cfg.Parallel, func(k int) error {
		_, err := mn.ConnectPeers(ms[edges[k][0]].id, ms[edges[k][1]].id)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("fleetsim: connect: %w", err)
	}
	lastWaiting := t0
	if err := waitUntil(ctx, cfg.Timeout, 250*time.Millisecond, func() bool {
		if cfg.Waiting != nil && time.Since(lastWaiting) >= 10*time.Second {
			lastWaiting = time.Now()
			complete, listed := 0, 0
			for _, m := range ms {
				l := m.node.MemberCount()
				listed += l
				if l == cfg.Nodes {
					complete++
				}
			}
			cfg.Waiting(time.Since(t0), complete, float64(listed)/float64(cfg.Nodes))
		}
		for _, m := range ms {
			if m.node.MemberCount() < cfg.Nodes {
				return false
			}
		}
		return true
	}); err != nil {
		short := 0
		for _, m := range ms {
			if m.node.MemberCount() < cfg.Nodes {
				short++
			}
		}
		return res, fmt.Errorf("%w: membership: %d of %d members do not list all", err, short, cfg.Nodes)
	}
	res.FullMembership = time.Since(t0)
	if cfg.PipeLatency && cfg.SteadyLatency > 0 {
		run.delay.Store(int64(cfg.SteadyLatency))
	}
	res.Dialled = int(dialled.Load())
	res.Load[1] = loadAvg()
	var published, msgs int64
	for _, m := range ms {
		published += m.node.MemberStats().Published
		msgs += m.traffic.memberMsgs.Load()
	}
	if published > 0 {
		res.BootstrapMsgs = float64(msgs) / float64(cfg.Nodes) / float64(published)
	}
	res.Verifies = float64(verifyCalls.Load()-calls0) / float64(cfg.Nodes)
	res.VerifiesComputed = verifyDone.Load() - done0
	for _, m := range ms {
		st := m.node.MemberStats()
		res.MemberPublished += float64(st.Published)
		res.MemberAccepted += float64(st.Received)
		res.MemberPulled += float64(st.Pulled)
		res.MemberRelayed += float64(st.Relayed)
		res.Rounds += float64(st.Rounds)
		res.RoundsMax = max(res.RoundsMax, st.Rounds)
		res.GossipBytes += float64(m.traffic.gossip.Load())
		res.SyncBytes += float64(m.traffic.memberSync.Load())
		c := len(m.host.Network().Peers())
		res.ConnsMean += float64(c)
		res.ConnsMax = max(res.ConnsMax, c)
	}
	heap1, gor1 := heapNow()
	res.HeapPerNode = float64(int64(heap1)-int64(heap0)) / float64(cfg.Nodes)
	res.GoroutinesPerNode = float64(gor1-gor0) / float64(cfg.Nodes)
	for _, v := range []*float64{&res.MemberPublished, &res.MemberAccepted, &res.MemberPulled, &res.MemberRelayed,
		&res.Rounds, &res.GossipBytes, &res.SyncBytes, &res.ConnsMean} {
		*v /= float64(cfg.Nodes) // sums → means per member
	}
	if cfg.Progress != nil {
		cfg.Progress("membership", res)
	}

	if cfg.LateFill {
		if err := releaseFills(ctx, ms); err != nil {
			return res, err
		}
	}

	var flightStart atomic.Int64
	tlStop, tlDone := make(chan struct{}), make(chan []string, 1)
	stopTimeline := sync.OnceFunc(func() { close(tlStop) })
	defer stopTimeline()
	go func() { tlDone <- timeline(ms, tStart, &flightStart, tlStop) }()
	if cfg.Idle > 0 {
		t := time.NewTimer(cfg.Idle)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, ctx.Err()
		case <-t.C:
		}
	}
	var gossip0, records0 int64
	for _, m := range ms {
		gossip0 += m.traffic.gossip.Load()
		records0 += m.node.MemberStats().Published
	}
	lagDone := make(chan time.Duration, 1)
	lagStop := make(chan struct{})
	go func() { lagDone <- maxLag(lagStop) }()

	// The flight: every member asks for the same model at once; compiles are counted per class.
	var mu sync.Mutex
	var yielded atomic.Int64
	t1 := time.Now()
	res.FlightAt = t1.Sub(tStart)
	flightStart.Store(int64(res.FlightAt))
	for _, m := range ms {
		m.traffic.flightStart(t1)
	}
	fctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() {
			key := compile.FlightKey{ModelID: "sim-model", ProfileID: "sim-profile", Class: m.class}
			blob := blobstore.DigestCID(sha256.Sum256([]byte(m.class)))
			out, err := m.coord.Do(fctx, flight.Request{Key: key, Compile: func(ctx context.Context) (cid.Cid, error) {
				mu.Lock()
				res.Compiles[m.class]++
				res.Compilers = append(res.Compilers, fmt.Sprintf("%s %s: %s", m.class, m.id, m.traffic.seen(time.Now())))
				mu.Unlock()
				t := time.NewTimer(cfg.CompileTime)
				defer t.Stop()
				select {
				case <-t.C:
					return blob, nil
				case <-ctx.Done():
					return cid.Undef, ctx.Err()
				}
			}})
			yielded.Add(int64(out.Yielded))
			errs[i] = err
		})
	}
	wg.Wait()
	res.FlightTime = time.Since(t1)
	res.Yielded = int(yielded.Load())
	close(lagStop)
	res.FlightLagMax = <-lagDone
	stopTimeline()
	res.Timeline = <-tlDone
	var gossip1 int64
	for _, m := range ms {
		gossip1 += m.traffic.gossip.Load()
		res.FlightRecords += m.node.MemberStats().Published
		res.FlightSent += float64(m.traffic.flightSent.Load()) / float64(cfg.Nodes)
		res.FlightReceived += float64(m.traffic.flightRecv.Load()) / float64(cfg.Nodes)
	}
	res.FlightGossipBytes = float64(gossip1-gossip0) / float64(cfg.Nodes)
	res.FlightRecords -= records0
	if cfg.Progress != nil {
		cfg.Progress("flight", res)
	}
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("fleetsim: flight: %w", err)
	}
	// The steady phase comes after the flight (Idle sets the idle time before it): a flight after 15 s of idle
	// members elected 24 + 22 compilers at 200, because it met every member's refresh at once (benchmarks.md).
	// Then the joins; the process's timer lag is watched through both.
	lagStop = make(chan struct{})
	lagStats := make(chan [2]time.Duration, 1)
	go func() { lagStats <- lagMaxMean(lagStop) }()
	steadyFrom := time.Since(tStart)
	if cfg.Steady > 0 {
		if err := steady(ctx, ms, cfg.Steady, &res); err != nil {
			close(lagStop)
			return res, err
		}
		if cfg.Progress != nil {
			cfg.Progress("steady", res)
		}
	}
	steadyTo := time.Since(tStart)
	bl := map[[2]int32]bool{}
	for _, e := range append(edges, joinEdges...) {
		bl[[2]int32{int32(min(e[0], e[1])), int32(max(e[0], e[1]))}] = true
	}
	boot := func(a, b int32) bool { return bl[[2]int32{min(a, b), max(a, b)}] }
	var fewest func(a, b int32) int
	res.Overlay, fewest = overlay(ms, boot)
	var joinAt []time.Duration
	var joinErr error
	if cfg.Joins > 0 {
		joinAt, joinErr = joins(ctx, cfg, all, joinEdges, startNode, mn, tr, &res)
	}
	close(lagStop)
	lag := <-lagStats
	res.EventsLagMax, res.EventsLagMean = lag[0], lag[1]
	res.Load[2] = loadAvg()
	res.Dialled = int(dialled.Load())
	for _, m := range all {
		res.Lost += float64(m.traffic.lost.Load()) / float64(len(all))
	}

	// The hops: from one snapshot of the trace after the run (sorting it takes seconds at 1,000 members).
	p := tr.paths()
	n := int32(cfg.Nodes)
	res.Bootstrap = p.spread(p.firsts(n, func(o int32) bool { return o < n }, func(int32) time.Duration { return t0.Sub(tStart) }), boot, nil)
	// A refresh signed in the last 2 s of the steady phase may not have spread when it ended (without joins after).
	res.Refreshes = p.spread(p.refreshes(n, tStart, steadyFrom, steadyTo-2*time.Second), boot, fewest)
	res.Joins = p.spread(p.firsts(n, func(o int32) bool { return o >= n }, func(o int32) time.Duration { return joinAt[o-n] }), boot, nil)
	return res, joinErr
}

// joins starts the joining members (all[cfg.Nodes:]) one every JoinGap, each connected to its bootstrap links,
// and sets the Join* figures; it returns when each joined, since the tracer's t0.
func joins(ctx context.Context, cfg Config, all []*member, edges [][2]int, start func(int) error, mn mocknet.Mocknet,
	tr *tracer, res *Result) ([]time.Duration, error) {
	ms := all[:cfg.Nodes]
	n := float64(cfg.Nodes)
	var basePull float64 // per member per second
	if cfg.Steady > 0 {
		basePull = res.SteadyPullBytes * res.SteadyRounds / cfg.Steady.Seconds()
	}
	count := func() (msgs, s int64) {
		for _, m := range ms {
			msgs += m.traffic.joinerMsgs.Load()
			s += m.traffic.memberSync.Load()
		}
		return msgs, s
	}
	var at []time.Duration
	var learnt []float64
	for k := range cfg.Joins {
		i := cfg.Nodes + k
		g0, s0 := count()
		tj := time.Now()
		at = append(at, tj.Sub(tr.t0))
		if err := start(i); err != nil {
			return at, fmt.Errorf("fleetsim: join: %w", err)
		}
		for _, e := range edges {
			if e[0] == i {
				if _, err := mn.ConnectPeers(all[e[0]].id, all[e[1]].id); err != nil {
					return at, fmt.Errorf("fleetsim: join: %w", err)
				}
			}
		}
		j := all[i]
		var listed time.Duration
		err := waitUntil(ctx, cfg.Timeout, 50*time.Millisecond, func() bool {
			if listed == 0 && j.node.MemberCount() >= i+1 {
				listed = time.Since(tj)
			}
			return listed > 0 && tr.added[i].Load() >= int32(cfg.Nodes) && time.Since(tj) >= cfg.JoinGap
		})
		if err != nil {
			return at, fmt.Errorf("%w: join %d: listed by %d of %d members, lists %d", err, k, tr.added[i].Load(),
				cfg.Nodes, j.node.MemberCount())
		}
		window := time.Since(tj).Seconds()
		g1, s1 := count()
		learnt = append(learnt, listed.Seconds())
		res.JoinMsgs += float64(g1-g0) / n / float64(cfg.Joins)
		res.JoinPullBytes += (float64(s1-s0)/n - basePull*window) / float64(cfg.Joins)
		res.JoinerBytes += float64(j.traffic.gossip.Load()+j.traffic.memberSync.Load()) / float64(cfg.Joins)
	}
	res.JoinLearnt = dist(learnt)
	return at, nil
}

// steady lets the members run for d with complete tables and sets the Steady* figures of res.
func steady(ctx context.Context, ms []*member, d time.Duration, res *Result) error {
	type snap struct{ sync, gossip, pulls, inSync, rounds, published, msgs int64 }
	take := func() (s snap) {
		for _, m := range ms {
			st := m.node.MemberStats()
			s.published += st.Published
			s.msgs += m.traffic.memberMsgs.Load()
			s.sync += m.traffic.memberSync.Load()
			s.gossip += m.traffic.gossip.Load()
			s.pulls += st.Pulls
			s.inSync += st.PullsInSync
			s.rounds += st.Rounds
		}
		return s
	}
	a := take()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	b := take()
	n := float64(len(ms))
	res.SteadyRounds = float64(b.rounds-a.rounds) / n
	if res.SteadyRounds > 0 {
		res.SteadyPullBytes = float64(b.sync-a.sync) / n / res.SteadyRounds
	}
	if b.pulls > a.pulls {
		res.SteadyInSync = float64(b.inSync-a.inSync) / float64(b.pulls-a.pulls)
	}
	res.SteadyGossipBytes = float64(b.gossip-a.gossip) / n / d.Seconds()
	res.SteadyPublished = b.published - a.published
	if res.SteadyPublished > 0 {
		res.RefreshMsgs = float64(b.msgs-a.msgs) / n / float64(res.SteadyPublished)
	}
	return nil
}

// timeline samples the fleet every second until stop is closed (Result.Timeline).
func timeline(ms []*member, tStart time.Time, flightAt *atomic.Int64, stop <-chan struct{}) []string {
	var out []string
	sample := func() (g, p int64) {
		for _, m := range ms {
			g += m.traffic.gossip.Load()
			p += m.node.MemberStats().Published
		}
		return g, p
	}
	g0, p0 := sample()
	for {
		lagStop := make(chan struct{})
		lag := make(chan time.Duration)
		go func() { lag <- maxLag(lagStop) }()
		t := time.NewTimer(time.Second)
		select {
		case <-stop:
		case <-t.C:
		}
		t.Stop()
		close(lagStop)
		l := <-lag
		g1, p1 := sample()
		at := time.Since(tStart)
		rel := "idle"
		if f := time.Duration(flightAt.Load()); f > 0 {
			rel = fmt.Sprintf("flight+%.1fs", (at - f).Seconds())
		}
		out = append(out, fmt.Sprintf("t=%.1fs %s lag_max=%s gossip_kib=%.0f records_published=%d", at.Seconds(), rel,
			l.Round(time.Millisecond), float64(g1-g0)/1024, p1-p0))
		g0, p0 = g1, p1
		select {
		case <-stop:
			return out
		default:
		}
	}
}

// maxLag returns the longest a 10 ms timer fired late until stop is closed.
func maxLag(stop <-chan struct{}) time.Duration { return lagMaxMean(stop)[0] }

// lagMaxMean returns the longest and the mean time a 10 ms timer fired late until stop is closed.
func lagMaxMean(stop <-chan struct{}) [2]time.Duration {
	var worst, sum time.Duration
	n := 0
	for {
		t0 := time.Now()
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-stop:
			t.Stop()
			if n == 0 {
				return [2]time.Duration{}
			}
			return [2]time.Duration{worst, sum / time.Duration(n)}
		case <-t.C:
		}
		late := time.Since(t0) - 10*time.Millisecond
		worst, sum, n = max(worst, late), sum+late, n+1
	}
}

func heapNow() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var st runtime.MemStats
	runtime.ReadMemStats(&st)
	return st.HeapAlloc, runtime.NumGoroutine()
}

// waitUntil polls cond every interval until it holds, ctx ends or timeout passes.
func waitUntil(ctx context.Context, timeout, interval time.Duration, cond func() bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	t := time.NewTicker(interval)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return ErrTimeout
		case <-t.C:
		}
	}
	return nil
}

// parallel runs fn(0..n-1) on at most width goroutines and returns the first error; it stops handing out work
// once ctx ends or fn fails.
func parallel(ctx context.Context, n, width int, fn func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range max(1, min(width, n)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(i)
				}
				if err != nil {
					once.Do(func() { first = err })
					failed.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

func closeAll(ms []*member, width int) {
	_ = parallel(context.Background(), len(ms), width, func(i int) error {
		m := ms[i]
		if m == nil || m.node == nil {
			if m != nil {
				_ = m.host.Close()
			}
			return nil
		}
		if m.tr != nil {
			_ = m.tr.Close()
		}
		_ = m.node.Close() // closes the host too
		return nil
	})
}

// rngReader feeds key generation from the simulation's seeded generator, so runs are repeatable.
type rngReader struct{ r *rand.Rand }

func (r rngReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(r.r.Uint32())
	}
	return len(b), nil
}

// emptyStore is a chunk store that holds nothing: the simulation moves records and flight messages, not blobs.
type emptyStore struct{}

func (emptyStore) Has(context.Context, cid.Cid) (bool, error) { return false, nil }
func (emptyStore) Manifest(context.Context, cid.Cid) (*blobstore.Manifest, error) {
	return nil, blobstore.ErrNotFound
}
func (emptyStore) BeginPartial(context.Context, *blobstore.Manifest) error {
	return blobstore.ErrNotFound
}
func (emptyStore) PutChunk(context.Context, cid.Cid, int, []byte) error { return blobstore.ErrNotFound }
func (emptyStore) HaveChunks(context.Context, cid.Cid) ([]bool, error) {
	return nil, blobstore.ErrNotFound
}
func (emptyStore) ServeChunk(context.Context, cid.Cid, int, []byte) ([]byte, error) {
	return nil, blobstore.ErrNotFound
}
func (emptyStore) Commit(context.Context, cid.Cid) error { return blobstore.ErrNotFound }

// loadAvg is the machine's 1-minute load average, or 0 where /proc/loadavg is not there.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscan(string(b), &l)
	return l
}
