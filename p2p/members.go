package p2p

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
)

// Membership gossip: every member publishes its signed member record on MemberTopic every MemberRefresh and
// when a peer joins the topic; members pull each other's tables on connect. docs/design.md 6.2.
const (
	MemberTopic                      = "/npu-agent/members/1"
	MemberSyncProtocol   protocol.ID = "/npu-agent/members/sync/1.0.0"
	DefaultMemberRefresh             = 30 * time.Second
	MaxMembers                       = 8192
	memberTTLFactor                  = 3
	memberMinInterval                = 2 * time.Second // per member: a newer record sooner than this is not forwarded
	fillTimeout                      = 5 * time.Second
	maxFillDials                     = 4
	defaultMinPeers                  = 8
	// memberJoinDebounce spaces the publishes a topic join asks for: above memberMinInterval, so that no receiver
	// takes the new record for one within its sender's budget (ignored and not forwarded).
	memberJoinDebounce time.Duration = memberMinInterval + time.Second
	// memberJoinPublishes bounds the publishes topic joins ask for: the first that reaches topic peers, and one
	// more after the meshes formed. Every further member learns this one by pulls (its own on connect, and the
	// anti-entropy pulls), so a join does not cost the fleet N receipts of a record it already holds: at 200
	// members the joins of a start-up took 8 publishes per member, each delivered to and verified by all.
	memberJoinPublishes = 2
	// memberPullFirst is the first table pull from a random connected member after start; the interval doubles
	// up to MemberRefresh/6 held between memberPullFirst and memberPullMax (5 s by default) and stays there
	// (push-pull anti-entropy, as memberlist does). A pull is digest-first, so one between members in sync
	// costs 16 bytes per member: frequent pulls repair lost gossip within a few rounds.
	memberPullFirst = time.Second
	memberPullMax   = 5 * time.Second
	// memberDigestTimeout bounds the read of a puller's hash or digest.
	memberDigestTimeout = 10 * time.Second
	// memberRepairAfter and memberRepairPublishes: a puller that knows at least half the members we know but not
	// us, memberRepairAfter after our last publish that had topic peers, shows that our record did not spread
	// (gossipsub lost it while meshes formed, and a pulled record is not forwarded); we publish again, at most
	// memberRepairPublishes times per refresh, and only once the join publishes are done.
	memberRepairAfter     = memberPullMax
	memberRepairPublishes = 2
	// memberRelayAge: a record new to us, taken by a pull and signed longer ago than this, should have reached
	// us by gossip; its gossip was lost on the way, so we publish it once (one per anti-entropy round at most),
	// and the members around us that lack it take it from gossip instead of one pull hop per round.
	memberRelayAge = 2 * memberPullMax
)

type memberEntry struct {
	info     MemberInfo
	env      []byte
	key      uint64    // digestKey(info.ID)
	accepted time.Time // receipt of the last record taken from gossip (the forwarding budget); zero: none
	expires  time.Time // min(signing time, receipt) + TTL
	gossiped bool      // this envelope was taken from gossip, so forwarded
}

type memberResult int

const (
	memberIgnored memberResult = iota
	memberRejected
	memberAdded
	memberRefreshed
	memberForwarded // held already, taken by a pull: forwarded, nothing learnt
)

// memberBook is the membership table: the live member records of other peers, at most MaxMembers.
type memberBook struct {
	self  peer.ID
	psk   pnet.PSK
	allow map[peer.ID]bool // nil: anyone the fleet key admits
	ttl   time.Duration
	max   int

	mu sync.Mutex
	m  map[peer.ID]*memberEntry
	// held has the SHA-256 of every envelope in m: a table pull repeats mostly records already held, which are
	// then ignored without verifying their signature again.
	held map[[32]byte]peer.ID
}

func newMemberBook(self peer.ID, psk pnet.PSK, allow []peer.ID, ttl time.Duration) *memberBook {
	b := &memberBook{self: self, psk: psk, ttl: ttl, max: MaxMembers, m: map[peer.ID]*memberEntry{},
		held: map[[32]byte]peer.ID{}}
	if len(allow) > 0 {
		b.allow = map[peer.ID]bool{}
		for _, p := range allow {
			b.allow[p] = true
		}
	}
	return b
}

// add verifies raw and keeps it if it is a newer record of a member. Forged or unproven records are rejected
// (gossipsub penalises the sender); stale, too frequent, our own or not allowlisted ones are ignored.
func (b *memberBook) add(raw []byte, now time.Time) (MemberInfo, memberResult) {
	return b.take(raw, now, true)
}

// addPulled is add for a record pulled from a peer's table: it does not start the member's forwarding budget
// (a pulled record is not forwarded), so the member's next gossiped record still travels on.
func (b *memberBook) addPulled(raw []byte, now time.Time) (MemberInfo, memberResult) {
	return b.take(raw, now, false)
}

func (b *memberBook) take(raw []byte, now time.Time, gossiped bool) (MemberInfo, memberResult) {
	sum := sha256.Sum256(raw)
	b.mu.Lock()
	_, known := b.held[sum]
	b.mu.Unlock()
	if known {
		return b.forward(raw, sum, now, gossiped)
	}
	info, err := OpenMember(raw)
	if err != nil {
		return info, memberRejected
	}
	if len(b.psk) > 0 && !hmac.Equal(info.Proof, memberProof(b.psk, info.ID)) {
		return info, memberRejected
	}
	if info.ID == b.self || (b.allow != nil && !b.allow[info.ID]) {
		return info, memberIgnored
	}
	signed := seqTime(info.Seq)
	if signed.After(now) {
		signed = now // a record from the future is not newer than the moment it arrived
	}
	expires := signed.Add(b.ttl)
	if !expires.After(now) {
		return info, memberIgnored // a replay of an old record cannot revive a member
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.m[info.ID]
	switch {
	case e == nil && len(b.m) >= b.max:
		return info, memberIgnored
	case e != nil && (info.Seq <= e.info.Seq || (gossiped && now.Sub(e.accepted) < memberMinInterval)):
		return info, memberIgnored
	}
	accepted := now
	if !gossiped {
		accepted = time.Time{}
		if e != nil {
			accepted = e.accepted
		}
	}
	res := memberRefreshed
	if e == nil || !now.Before(e.expires) {
		res = memberAdded
	}
	if e != nil {
		delete(b.held, sha256.Sum256(e.env))
	}
	b.m[info.ID] = &memberEntry{info: info, env: slices.Clone(raw), key: digestKey(info.ID), accepted: accepted,
		expires: expires, gossiped: gossiped}
	b.held[sum] = info.ID
	return info, res
}

// forward decides on a record byte for byte identical to the one held (so already verified): gossip of a record
// first taken by a pull is forwarded once, within the member's budget. Ignoring it would end its gossip at every
// member that pulled it first, and with frequent pulls that is most members around its author.
func (b *memberBook) forward(raw []byte, sum [32]byte, now time.Time, gossiped bool) (MemberInfo, memberResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.m[b.held[sum]]
	if !gossiped || e == nil || e.gossiped || now.Sub(e.accepted) < memberMinInterval || !now.Before(e.expires) {
		return MemberInfo{}, memberIgnored
	}
	e.gossiped, e.accepted = true, now
	return e.info, memberForwarded
}

// digest is the puller's side of a digest-first pull: key → seq of every live record held.
func (b *memberBook) digest(now time.Time) map[uint64]uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := make(map[uint64]uint64, len(b.m)+1)
	for _, e := range b.m {
		if now.Before(e.expires) {
			d[e.key] = e.info.Seq
		}
	}
	return d
}

// tableHash hashes the set of members held (and self, our own digest key), so that two members in sync find
// the same hash: it covers membership, not seqs, which change with every refresh somewhere in the fleet. A
// record older than two refreshes is left out, so a member that missed a refresh differs from one that did not
// and the pull that follows repairs it before the record expires.
func (b *memberBook) tableHash(self uint64, now time.Time) memberHash {
	fresh := b.ttl * 2 / memberTTLFactor
	b.mu.Lock()
	keys := make([]uint64, 0, len(b.m)+1)
	for _, e := range b.m {
		if now.Before(e.expires) && now.Sub(seqTime(e.info.Seq)) < fresh {
			keys = append(keys, e.key)
		}
	}
	b.mu.Unlock()
	return hashMemberKeys(append(keys, self))
}

// missing lists the live envelopes held that the digest d lacks or holds older.
func (b *memberBook) missing(d map[uint64]uint64, now time.Time) [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out [][]byte
	for _, e := range b.m {
		if seq, ok := d[e.key]; now.Before(e.expires) && (!ok || seq < e.info.Seq) {
			out = append(out, e.env)
		}
	}
	return out
}

// expire forgets members whose record was not refreshed within the TTL.
func (b *memberBook) expire(now time.Time) (gone []peer.ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, e := range b.m {
		if !now.Before(e.expires) {
			delete(b.held, sha256.Sum256(e.env))
			delete(b.m, id)
			gone = append(gone, id)
		}
	}
	return gone
}

func (b *memberBook) live(p peer.ID, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.m[p]
	return e != nil && now.Before(e.expires)
}

func (b *memberBook) hostname(p peer.ID, now time.Time) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.m[p]; e != nil && now.Before(e.expires) {
		return e.info.Hostname
	}
	return ""
}

func (b *memberBook) count(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := 0
	for _, e := range b.m {
		if now.Before(e.expires) {
			c++
		}
	}
	return c
}

func (b *memberBook) list(now time.Time) []MemberInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]MemberInfo, 0, len(b.m))
	for _, e := range b.m {
		if now.Before(e.expires) {
			out = append(out, e.info)
		}
	}
	return out
}

func (b *memberBook) envelopes(now time.Time) [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([][]byte, 0, len(b.m))
	for _, e := range b.m {
		if now.Before(e.expires) {
			out = append(out, e.env)
		}
	}
	return out
}

// members is the node's side of membership: its own record, the topic, the sync protocol and the overlay fill.
type members struct {
	n        *Node
	book     *memberBook
	psk      pnet.PSK
	refresh  time.Duration
	minPeers int
	info     MemberInfo // our record's fields; Seq and Addrs are set at each publish
	topic    *pubsub.Topic
	sub      *pubsub.Subscription
	kick     chan struct{}
	// lacked: a puller's digest showed our record did not spread (see memberRepairAfter).
	lacked chan struct{}
	// The publish loop runs on its own context, stopped before the node's pubsub: a publish racing the end of
	// gossipsub's event loop would block forever (go-libp2p-pubsub v0.14.2 Topic.validate).
	ctx    context.Context
	cancel context.CancelFunc
	loopWG sync.WaitGroup

	mu      sync.Mutex
	lastSeq uint64
	selfEnv []byte
	syncing map[peer.ID]bool
	// behind: a pull took records, so the next anti-entropy round comes after memberPullFirst.
	behind chan struct{}
	// relay: a pulled record to publish at the next round (memberRelayAge); relayed counts those published.
	relay   []byte
	relayed int64
	// filling: an overlay fill's dials are running (in their own goroutine: each may take fillTimeout, and
	// the loop's pulls and publishes must not wait for them).
	filling bool
	// held: Config.HoldFill until Node.ReleaseFill.
	held atomic.Bool

	// Counters for the simulation harness: records published and taken, pulls run and those found in sync
	// by the table hash, anti-entropy rounds, records taken by pulls.
	published, received, pulls, pullsInSync, rounds, pulled int64
	// trace is the simulation harness's hook (Node.TraceMembers); nil in the daemon, one atomic load then.
	trace atomic.Pointer[func(MemberEvent)]
}

// MemberVia is how a member record reached a member (MemberEvent).
type MemberVia uint8

const (
	ViaGossip MemberVia = iota + 1 // gossip published by the record's member
	ViaRelay                       // gossip published by another member that had pulled it (memberRelayAge)
	ViaPull                        // a table pull
)

func (v MemberVia) String() string {
	switch v {
	case ViaGossip:
		return "gossip"
	case ViaRelay:
		return "relay"
	case ViaPull:
		return "pull"
	}
	return fmt.Sprintf("via(%d)", uint8(v))
}

// MemberEvent is what Node.TraceMembers reports: a member record taken as new (Owner set), or the start of an
// anti-entropy round (Round).
type MemberEvent struct {
	Round bool
	Owner peer.ID   // the record's member
	Seq   uint64    // the record's seq
	From  peer.ID   // the peer it came from: gossipsub's ReceivedFrom (the last hop), or the peer pulled
	Via   MemberVia // gossip, relay or pull
	Added bool      // the first live record of Owner here, else a newer seq of a member held
}

// TraceMembers calls fn (from the node's goroutines, concurrently) for every member record the node takes as
// new and every anti-entropy round it starts, so the simulation harness can rebuild each record's path
// (internal/fleetsim: hops per record). Tests and the harness only; nil stops it.
func (n *Node) TraceMembers(fn func(MemberEvent)) {
	if n.members == nil {
		return
	}
	if fn == nil {
		n.members.trace.Store(nil)
		return
	}
	n.members.trace.Store(&fn)
}

// ReleaseFill lets a fill held by Config.HoldFill run, and starts a round now (at most maxFillDials dials; the
// next come at the anti-entropy ticks, or at the next call). Tests and the harness only.
func (n *Node) ReleaseFill() {
	m := n.members
	if m == nil || m.ctx.Err() != nil {
		return
	}
	m.held.Store(false)
	m.startFill()
}

func (m *members) traced(ev MemberEvent) {
	if fn := m.trace.Load(); fn != nil {
		(*fn)(ev)
	}
}

func (n *Node) startMembers(cfg Config) error {
	refresh := cfg.MemberRefresh
	if refresh <= 0 {
		refresh = DefaultMemberRefresh
	}
	minPeers := minPeers(cfg)
	m := &members{
		n: n, psk: cfg.FleetKey, refresh: refresh, minPeers: minPeers, kick: make(chan struct{}, 1),
		lacked: make(chan struct{}, 1), behind: make(chan struct{}, 1),
		book:    newMemberBook(n.h.ID(), cfg.FleetKey, cfg.Allowlist, memberTTLFactor*refresh),
		info:    MemberInfo{ID: n.h.ID(), Hostname: cfg.Hostname, Class: cfg.Class, Tags: cfg.Tags, Version: cfg.Version},
		syncing: map[peer.ID]bool{},
	}
	m.held.Store(cfg.HoldFill)
	m.info.Proof = memberProof(cfg.FleetKey, n.h.ID())
	if err := checkMemberFields(m.info); err != nil {
		return fmt.Errorf("p2p: config: %w", err)
	}
	n.members = m
	n.h.SetStreamHandler(MemberSyncProtocol, m.serveSync)
	n.h.SetStreamHandler(MemberDigestProtocol, m.serveDigest)
	n.h.SetStreamHandler(MemberHashProtocol, m.serveHash)
	if err := n.ps.RegisterTopicValidator(MemberTopic, m.validate); err != nil {
		return fmt.Errorf("p2p: member validator: %w", err)
	}
	var err error
	if m.topic, err = n.ps.Join(MemberTopic); err != nil {
		return fmt.Errorf("p2p: join %s: %w", MemberTopic, err)
	}
	if m.sub, err = m.topic.Subscribe(); err != nil {
		return fmt.Errorf("p2p: subscribe %s: %w", MemberTopic, err)
	}
	evh, err := m.topic.EventHandler()
	if err != nil {
		return fmt.Errorf("p2p: member topic events: %w", err)
	}
	n.wg.Go(func() {
		for {
			if _, err := m.sub.Next(n.ctx); err != nil {
				return // the validator did the work; this keeps us in the topic's mesh
			}
		}
	})
	n.wg.Go(func() {
		defer evh.Cancel()
		for {
			ev, err := evh.NextPeerEvent(n.ctx)
			if err != nil {
				return
			}
			if ev.Type == pubsub.PeerJoin {
				select { // a new topic peer: publish soon, so it and its side of the overlay learn us
				case m.kick <- struct{}{}:
				default:
				}
			}
		}
	})
	m.ctx, m.cancel = context.WithCancel(n.ctx)
	m.loopWG.Go(m.loop)
	return nil
}

// minPeers is Config.MinPeers with its default.
func minPeers(cfg Config) int {
	if cfg.MinPeers == 0 {
		return defaultMinPeers
	}
	return cfg.MinPeers
}

// stop ends the publish loop and waits for it; Close calls it before it stops gossipsub.
func (m *members) stop() {
	m.cancel()
	m.loopWG.Wait()
}

func (m *members) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	if len(msg.Data) > MaxMemberEnvelope {
		return pubsub.ValidationReject
	}
	if msg.ReceivedFrom == m.n.h.ID() {
		return pubsub.ValidationAccept // our own record, published by loop
	}
	info, res := m.book.add(msg.Data, time.Now())
	switch res {
	case memberRejected:
		m.n.log.Debug("rejected member record", "from", from)
		return pubsub.ValidationReject
	case memberAdded, memberRefreshed:
		m.learnt(info, res)
		if m.trace.Load() != nil {
			via := ViaGossip
			if msg.GetFrom() != info.ID {
				via = ViaRelay
			}
			m.traced(MemberEvent{Owner: info.ID, Seq: info.Seq, From: msg.ReceivedFrom, Via: via, Added: res == memberAdded})
		}
		return pubsub.ValidationAccept
	case memberForwarded:
		return pubsub.ValidationAccept
	}
	if info.ID != "" {
		m.n.log.Debug("member record ignored", "from", from, "peer", info.ID, "seq", info.Seq)
	}
	return pubsub.ValidationIgnore
}

// learnt puts a member's usable addresses in the peerstore for as long as its record lives, so a fetch or the
// overlay fill can dial it.
func (m *members) learnt(info MemberInfo, res memberResult) {
	m.mu.Lock()
	m.received++
	m.mu.Unlock()
	if addrs := filterAddrs(info.Addrs, m.n.allowLoopback); len(addrs) > 0 {
		m.n.h.Peerstore().AddAddrs(info.ID, addrs, m.book.ttl)
	}
	if res == memberAdded {
		m.n.log.Debug("member joined", "peer", info.ID, "hostname", info.Hostname)
	}
}

// own returns our record, signed with a new seq.
func (m *members) own() ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	info := m.info
	info.Seq = max(m.lastSeq+1, uint64(time.Now().UnixNano()))
	info.Addrs = m.n.h.Addrs()
	if len(info.Addrs) > maxMemberAddrs {
		info.Addrs = info.Addrs[:maxMemberAddrs]
	}
	env, err := SealMember(info, m.n.h.Peerstore().PrivKey(m.n.h.ID()))
	if err != nil {
		return nil, err
	}
	m.lastSeq, m.selfEnv = info.Seq, env
	return env, nil
}

func (m *members) ownSeq() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastSeq
}

func (m *members) publish() {
	env, err := m.own()
	if err == nil {
		err = m.topic.Publish(m.ctx, env)
	}
	if err != nil {
		if m.ctx.Err() == nil {
			m.n.log.Debug("member record not published", "err", err)
		}
		return
	}
	m.mu.Lock()
	m.published++
	m.mu.Unlock()
	m.n.log.Debug("member record published", "topic_peers", len(m.topic.ListPeers()), "conns", len(m.n.h.Network().Peers()))
}

// loop publishes our record every refresh (and soon after a peer joins the topic, at most once a second),
// forgets members past their TTL, and keeps at least minPeers connections by dialling random members.
func (m *members) loop() {
	// lastPub is the last publish that had topic peers to go to; a join asks for a publish at most every
	// memberJoinDebounce, deferred (pending) rather than dropped, so that a record published while meshes were
	// still forming is followed by one they carry.
	var lastPub time.Time
	joinPubs := 0 // publishes that had topic peers to go to
	repairs := 0  // publishes since the last refresh because a puller lacked our record
	publish := func() (reached bool) {
		if reached = len(m.topic.ListPeers()) > 0; reached {
			lastPub = time.Now()
			joinPubs++
		}
		m.publish()
		return reached
	}
	publish()
	// The first refresh comes at a random point of the period, then one every period (memberlist staggers its
	// timers alike): members started together (a site powered on, a fleet-wide restart) otherwise republish in
	// the same instant every refresh, and every member takes N records at once. In fleetsim that burst stalled
	// the process for over a second and a flight that started in it elected 24 + 22 compilers (benchmarks.md).
	refresh := time.NewTimer(refreshStagger(m.refresh))
	defer refresh.Stop()
	tick := time.NewTicker(max(m.refresh/10, 100*time.Millisecond))
	defer tick.Stop()
	pullEvery := memberPullFirst
	pull := time.NewTimer(pullEvery)
	defer pull.Stop()
	pending := time.NewTimer(time.Hour)
	pending.Stop()
	defer pending.Stop()
	pendingSet := false
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-pull.C:
			m.mu.Lock()
			m.rounds++
			m.mu.Unlock()
			m.traced(MemberEvent{Round: true})
			// Records gossiped while meshes were forming, or dropped under load, may not have reached us: pull
			// what a random peer holds and we lack (1, 2, 4 s after start, then every 5 s at most).
			if ps := m.n.h.Network().Peers(); len(ps) > 0 {
				m.syncWith(ps[rand.IntN(len(ps))])
			}
			pullEvery = min(2*pullEvery, min(max(m.refresh/6, memberPullFirst), memberPullMax))
			pull.Reset(pullEvery)
			m.mu.Lock()
			env := m.relay
			m.relay = nil
			if env != nil {
				m.relayed++
			}
			m.mu.Unlock()
			if env != nil {
				if err := m.topic.Publish(m.ctx, env); err != nil && m.ctx.Err() == nil {
					m.n.log.Debug("member record not relayed", "err", err)
				}
			}
		case <-m.behind:
			// A member that is behind (a pull took records: gossip lost some on their way here) pulls again
			// after memberPullFirst, so it catches up in seconds instead of 5 s per round.
			pull.Reset(memberPullFirst)
		case <-refresh.C:
			refresh.Reset(m.refresh)
			repairs = 0
			publish()
		case <-m.lacked:
			if lastPub.IsZero() || pendingSet || repairs >= memberRepairPublishes || time.Since(lastPub) < memberRepairAfter {
				continue
			}
			repairs++
			m.n.log.Info("member record published again: a peer's pull showed it did not spread",
				"since_last_publish", time.Since(lastPub).Round(time.Millisecond), "topic_peers", len(m.topic.ListPeers()))
			publish()
		case <-m.kick:
			if joinPubs >= memberJoinPublishes {
				continue
			}
			if wait := memberJoinDebounce - time.Since(lastPub); wait <= 0 {
				publish()
				// The follow-up comes whether or not another peer joins: when every topic peer joined at once
				// (one kick), the only publish went out while their streams and meshes were being set up, and
				// gossipsub loses such messages: the record then reached nobody past them.
				if joinPubs < memberJoinPublishes && !pendingSet {
					pendingSet = true
					pending.Reset(memberJoinDebounce)
				}
			} else if !pendingSet {
				pendingSet = true
				pending.Reset(wait)
			}
		case <-pending.C:
			pendingSet = false
			// A join's event can come before gossipsub lists the peer in the topic: that publish reached
			// nobody and did not count, so the follow-up is followed by one more until two reached topic peers.
			if joinPubs < memberJoinPublishes && publish() && joinPubs < memberJoinPublishes {
				pendingSet = true
				pending.Reset(memberJoinDebounce)
			}
		case <-tick.C:
			m.book.expire(time.Now())
			m.startFill()
		}
	}
}

// refreshStagger is the delay of a member's first refresh: uniform in (0, refresh].
func refreshStagger(refresh time.Duration) time.Duration {
	return time.Duration(rand.Int64N(int64(refresh))) + 1
}

// startFill runs fill in its own goroutine unless one is running. Under load a dial can take the whole
// fillTimeout, and four of them in the loop held back its pulls and publishes for 20 s (100 daemons on 2 cores:
// a member's record reached half the fleet in 15 s).
func (m *members) startFill() {
	m.mu.Lock()
	if m.filling {
		m.mu.Unlock()
		return
	}
	m.filling = true
	m.mu.Unlock()
	m.loopWG.Go(func() {
		defer func() {
			m.mu.Lock()
			m.filling = false
			m.mu.Unlock()
		}()
		m.fill()
	})
}

// fill dials random live members while fewer than minPeers others than the bootstrap peers are connected (at
// most maxFillDials per round), so the overlay grows from a bootstrap list into a random graph of small diameter;
// once it has that many, the bootstrap peers are retired (bootstrap). The connection manager trims what goes past
// its high water mark.
func (m *members) fill() {
	n := m.n
	if m.minPeers < 0 || m.held.Load() {
		return
	}
	peers := n.h.Network().Peers()
	if len(peers) < max(1, m.minPeers/2) {
		n.boot.restore(n.h) // cut off from the overlay: join again through the bootstrap list
	}
	others := 0
	for _, p := range peers {
		if !n.boot.holds(p) {
			others++
		}
	}
	need := m.minPeers - others
	if need <= 0 {
		n.boot.retire(n.h, n.log)
		return
	}
	cands := m.book.list(time.Now())
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	dials := 0
	for _, c := range cands {
		if dials >= min(need, maxFillDials) || m.ctx.Err() != nil {
			return
		}
		if n.h.Network().Connectedness(c.ID) == network.Connected {
			continue
		}
		dials++
		ctx, cancel := context.WithTimeout(m.ctx, fillTimeout)
		err := n.h.Connect(ctx, peer.AddrInfo{ID: c.ID})
		cancel()
		if err != nil {
			n.log.Debug("member unreachable", "peer", c.ID, "err", err)
		}
	}
}

// bootstrap is the node's static peers as the overlay fill sees them: a bootstrap list is for joining. Lists of
// the few members started before make a ring, and gossipsub grafts its first connections, so while static peers
// stay connected the meshes are that ring plus a chord or two (fleetsim at 1,000 members: 40-45 hops per record
// over connections of diameter 11). So static peers do not count towards the fill's MinPeers, and once the fill
// has MinPeers others they are retired: their connections are closed (unless a transfer protects them) and they
// are not redialled, leaving the meshes to the fill's random connections (6.2). Retired, they are ordinary
// members; when fewer than MinPeers/2 peers are connected they are bootstrap peers again (protected, redialled).
type bootstrap struct {
	ids     map[peer.ID]bool
	retired atomic.Bool
	redial  chan struct{} // restored: discovery dials the static peers now, not at its next round
}

func newBootstrap(static []ma.Multiaddr) *bootstrap {
	b := &bootstrap{ids: map[peer.ID]bool{}, redial: make(chan struct{}, 1)}
	for _, a := range static {
		if ai, err := peer.AddrInfoFromP2pAddr(a); err == nil {
			b.ids[ai.ID] = true
		}
	}
	return b
}

// holds reports whether p is a bootstrap peer now: static and not retired.
func (b *bootstrap) holds(p peer.ID) bool { return b.ids[p] && !b.retired.Load() }

// retire closes the connections to the static peers and stops their redial; a connection that carries chunk
// streams (a transfer, either way) stays open.
func (b *bootstrap) retire(h host.Host, log *slog.Logger) {
	if len(b.ids) == 0 || !b.retired.CompareAndSwap(false, true) {
		return
	}
	closed := 0
	for id := range b.ids {
		h.ConnManager().Unprotect(id, staticProtectTag)
		if h.Network().Connectedness(id) != network.Connected || carriesChunks(h, id) {
			continue
		}
		if err := h.Network().ClosePeer(id); err == nil {
			closed++
		}
	}
	log.Info("bootstrap peers retired: the overlay fill has enough members", "closed", closed, "peers", len(h.Network().Peers()))
}

func carriesChunks(h host.Host, p peer.ID) bool {
	for _, c := range h.Network().ConnsToPeer(p) {
		for _, st := range c.GetStreams() {
			if st.Protocol() == ChunkProtocol {
				return true
			}
		}
	}
	return false
}

// restore makes the static peers bootstrap peers again: protected, and redialled by discovery.
func (b *bootstrap) restore(h host.Host) {
	if !b.retired.CompareAndSwap(true, false) {
		return
	}
	for id := range b.ids {
		h.ConnManager().Protect(id, staticProtectTag)
	}
	select {
	case b.redial <- struct{}{}:
	default:
	}
}

// serveSync answers a whole-table pull (members before the digest) with our record and every live record held.
func (m *members) serveSync(st network.Stream) {
	m.mu.Lock()
	self := m.selfEnv
	m.mu.Unlock()
	docs := m.book.envelopes(time.Now())
	if self != nil {
		docs = append(docs, self)
	}
	serveEntries(st, docs)
}

// serveDigest answers a digest-first pull: the puller's digest (at most maxMemberDigest bytes within
// memberDigestTimeout), then our record and the live records held that the digest lacks or holds older.
func (m *members) serveDigest(st network.Stream) {
	st.SetReadDeadline(time.Now().Add(memberDigestTimeout))
	m.answerDigest(st)
}

// serveHash answers a hash-first pull: the puller's table hash (memberHashMsg bytes within
// memberDigestTimeout); "same" if ours is equal, else "differ" and the digest exchange of serveDigest, on the
// same stream and within the same deadline.
func (m *members) serveHash(st network.Stream) {
	st.SetDeadline(time.Now().Add(memberDigestTimeout))
	h, err := readMemberHash(st)
	if err != nil {
		m.n.log.Debug("bad member table hash", "peer", st.Conn().RemotePeer(), "err", err)
		st.Reset()
		return
	}
	if h == m.book.tableHash(digestKey(m.n.h.ID()), time.Now()) {
		st.Write([]byte{memberHashSame})
		st.Close()
		return
	}
	if _, err := st.Write([]byte{memberHashDiffer}); err != nil {
		st.Reset()
		return
	}
	m.answerDigest(st)
}

// answerDigest reads a puller's digest and writes what it lacks (see serveDigest).
func (m *members) answerDigest(st network.Stream) {
	d, err := readMemberDigest(st)
	if err != nil {
		m.n.log.Debug("bad member digest", "peer", st.Conn().RemotePeer(), "err", err)
		st.Reset()
		return
	}
	now := time.Now()
	docs := m.book.missing(d, now)
	m.mu.Lock()
	self, seq := m.selfEnv, m.lastSeq
	m.mu.Unlock()
	have, ok := d[digestKey(m.n.h.ID())]
	if self != nil && (!ok || have < seq) {
		docs = append(docs, self)
	}
	if !ok && 2*len(d) >= m.book.count(now) {
		select { // the puller knows most members but not us: our record did not spread
		case m.lacked <- struct{}{}:
		default:
		}
	}
	serveEntries(st, docs)
}

// syncWith pulls p's membership table (at most MaxMembers+1 records of at most MaxMemberEnvelope bytes, within
// syncTimeout) unless a pull from p is running.
func (m *members) syncWith(p peer.ID) {
	n := m.n
	m.mu.Lock()
	if m.syncing[p] {
		m.mu.Unlock()
		return
	}
	m.syncing[p] = true
	m.mu.Unlock()
	n.mu.Lock()
	closed := n.closed
	if !closed {
		n.wg.Add(1)
	}
	n.mu.Unlock()
	if closed {
		return
	}
	go func() {
		defer n.wg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.syncing, p)
			m.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(n.ctx, syncTimeout)
		defer cancel()
		st, err := n.h.NewStream(network.WithNoDial(ctx, "member pull"), p, MemberHashProtocol, MemberDigestProtocol, MemberSyncProtocol)
		if err != nil {
			n.log.Debug("member sync failed", "peer", p, "err", err)
			return
		}
		m.mu.Lock()
		m.pulls++
		m.mu.Unlock()
		if st.Protocol() == MemberHashProtocol {
			same, err := m.askHash(st)
			if err != nil {
				n.log.Debug("member sync failed", "peer", p, "err", err)
				st.Reset()
				return
			}
			if same {
				m.mu.Lock()
				m.pullsInSync++
				m.mu.Unlock()
				st.Close()
				return
			}
		}
		if st.Protocol() != MemberSyncProtocol { // else a member before the digest: its whole table
			d := m.book.digest(time.Now())
			d[digestKey(n.h.ID())] = m.ownSeq()
			st.SetWriteDeadline(time.Now().Add(memberDigestTimeout))
			if _, err := st.Write(encodeMemberDigest(d)); err != nil {
				st.Reset()
				return
			}
		}
		added, err := pullEntries(ctx, st, MaxMemberEnvelope, MaxMembers+1, "member records", func(raw []byte) bool {
			info, res := m.book.addPulled(raw, time.Now())
			if res == memberAdded || res == memberRefreshed {
				m.learnt(info, res)
				m.traced(MemberEvent{Owner: info.ID, Seq: info.Seq, From: p, Via: ViaPull, Added: res == memberAdded})
				m.mu.Lock()
				m.pulled++
				if res == memberAdded && m.relay == nil && time.Since(seqTime(info.Seq)) > memberRelayAge {
					m.relay = slices.Clone(raw)
				}
				m.mu.Unlock()
				return true
			}
			return false
		})
		if err != nil {
			n.log.Debug("member sync failed", "peer", p, "err", err)
		}
		if added > 0 {
			select {
			case m.behind <- struct{}{}:
			default:
			}
		}
		n.log.Debug("member pull", "peer", p, "protocol", st.Protocol(), "added", added)
	}()
}

// askHash sends our table hash and reads the answerer's verdict: true if its table is the same.
func (m *members) askHash(st network.Stream) (bool, error) {
	st.SetDeadline(time.Now().Add(memberDigestTimeout))
	h := m.book.tableHash(digestKey(m.n.h.ID()), time.Now())
	if _, err := st.Write(encodeMemberHash(h)); err != nil {
		return false, err
	}
	var v [1]byte
	if _, err := io.ReadFull(st, v[:]); err != nil {
		return false, noEOF(err)
	}
	switch v[0] {
	case memberHashSame:
		return true, nil
	case memberHashDiffer:
		return false, nil
	}
	return false, fmt.Errorf("%w: verdict %d", errBadHash, v[0])
}

// Members returns the live members this node knows, itself first.
func (n *Node) Members() []MemberInfo {
	self := MemberInfo{ID: n.h.ID(), Addrs: n.h.Addrs()}
	if n.members == nil {
		return []MemberInfo{self}
	}
	self.Hostname, self.Class, self.Tags = n.members.info.Hostname, n.members.info.Class, n.members.info.Tags
	self.Version = n.members.info.Version
	return append([]MemberInfo{self}, n.members.book.list(time.Now())...)
}

// MemberHostname is the hostname p's live member record announces ("" when none): one lookup, no copy of the
// table.
func (n *Node) MemberHostname(p peer.ID) string {
	if n.members == nil {
		return ""
	}
	if p == n.h.ID() {
		return n.members.info.Hostname
	}
	return n.members.book.hostname(p, time.Now())
}

// MemberCount is len(Members()) without copying the table.
func (n *Node) MemberCount() int {
	if n.members == nil {
		return 1
	}
	return 1 + n.members.book.count(time.Now())
}

// MemberStats are the membership counters of the simulation harness.
type MemberStats struct {
	Published, Received int64 // member records this node published, new ones it took (gossip or pull)
	Pulls, PullsInSync  int64 // table pulls it ran, and those the table hash found in sync
	Rounds              int64 // anti-entropy rounds (a pull from a random peer each)
	Pulled              int64 // of Received, those taken by pulls
	Relayed             int64 // pulled records it published because their gossip had not come (memberRelayAge)
}

// MemberStats returns the node's membership counters.
func (n *Node) MemberStats() MemberStats {
	if n.members == nil {
		return MemberStats{}
	}
	n.members.mu.Lock()
	defer n.members.mu.Unlock()
	m := n.members
	return MemberStats{m.published, m.received, m.pulls, m.pullsInSync, m.rounds, m.pulled, m.relayed}
}
