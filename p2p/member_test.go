package p2p

import (
	"bytes"
	"context"
	"crypto/rand"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/internal/hostile"
)

func memberKey(t *testing.T) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

func TestMemberRecordCodec(t *testing.T) {
	k, id := memberKey(t)
	psk := pnet.PSK(bytes.Repeat([]byte{7}, 32))
	m := MemberInfo{ID: id, Seq: uint64(time.Now().UnixNano()), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.1/tcp/4801")},
		Hostname: "npu-07", Class: "class-a", Tags: []string{"lab", "rack-3"}, Proof: memberProof(psk, id)}
	raw, err := SealMember(m, k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenMember(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != id || got.Seq != m.Seq || got.Hostname != m.Hostname || !slices.Equal(got.Tags, m.Tags) ||
		!bytes.Equal(got.Proof, m.Proof) || len(got.Addrs) != 1 || !got.Addrs[0].Equal(m.Addrs[0]) {
		t.Fatalf("round trip: %+v", got)
	}
	payload, err := encodeMember(m)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"trailing byte": append(slices.Clone(payload), 0),
		"truncated":     payload[:len(payload)-3],
		"bad magic":     append([]byte("XXXX"), payload[4:]...),
		"oversized":     make([]byte, MaxMemberEnvelope+1),
	} {
		if _, err := decodeMember(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if _, err := OpenMember(make([]byte, MaxMemberEnvelope+1)); err == nil {
		t.Error("oversized envelope opened")
	}
	other, _ := memberKey(t)
	if _, err := SealMember(m, other); err == nil {
		t.Error("sealed a record for another identity")
	}
	m.Hostname = "bad host"
	if _, err := SealMember(m, k); err == nil {
		t.Error("sealed a hostname with a space")
	}
}

// TestMembershipFromBootstrap starts a line of nodes, each told only about the one before it: every node learns
// every member, connects to more of them than it was told, and forgets a member that stops.
func TestMembershipFromBootstrap(t *testing.T) {
	const n = 8
	psk := writeKey(t)
	nodes := make([]*testNode, n)
	for i := range nodes {
		nodes[i] = startNode(t, "", func(c *Config) {
			c.FleetKey, c.ServeWithoutFleetKey = psk, false
			c.MemberRefresh, c.MinPeers = time.Second, 3
			c.Hostname = "host-" + string(rune('a'+i))
			if i > 0 {
				c.StaticPeers = []ma.Multiaddr{staticAddr(nodes[i-1])}
			}
		})
	}
	all := func(tn *testNode, want int) bool { return len(tn.Members()) == want }
	for i, tn := range nodes {
		eventually(t, "full membership at node "+string(rune('a'+i)), func() bool { return all(tn, n) })
	}
	first, last := nodes[0], nodes[n-1]
	if !first.Member(last.ID()) {
		t.Errorf("first node does not count the last as a member")
	}
	// One member's hostname, as its record announces it (status's jobs name their peers so).
	for _, c := range []struct {
		id   peer.ID
		want string
	}{{last.ID(), "host-" + string(rune('a'+n-1))}, {first.ID(), "host-a"}, {peer.ID("nobody"), ""}} {
		if got := first.MemberHostname(c.id); got != c.want {
			t.Errorf("MemberHostname(%s) = %q, want %q", c.id, got, c.want)
		}
	}
	eventually(t, "overlay filled", func() bool { return len(nodes[0].Host().Network().Peers()) >= 3 })
	last.close()
	for _, tn := range nodes[:n-1] {
		eventually(t, "dead member forgotten", func() bool { return all(tn, n-1) })
	}
}

// TestThreatMemberRecords: a compromised member gossips member records with a wrong proof, in another's name,
// oversized, and floods refreshes of its own: none is kept beyond what the rules allow.
func TestThreatMemberRecords(t *testing.T) {
	psk := writeKey(t)
	target := startNode(t, "", func(c *Config) {
		c.FleetKey, c.ServeWithoutFleetKey, c.MemberRefresh, c.MinPeers = psk, false, time.Second, -1
	})
	bad := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk, PubSub: true})[0]
	if err := bad.Connect(t.Context(), peer.AddrInfo{ID: target.ID(), Addrs: target.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := bad.WaitTopicPeers(ctx, MemberTopic, 1); err != nil {
		t.Fatal(err)
	}
	badKey := bad.Host.Peerstore().PrivKey(bad.ID())
	seal := func(m MemberInfo, k crypto.PrivKey) []byte {
		raw, err := SealMember(m, k)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	now := uint64(time.Now().UnixNano())
	strangerKey, stranger := memberKey(t)
	wrongProof := seal(MemberInfo{ID: stranger, Seq: now, Proof: bytes.Repeat([]byte{1}, 32)}, strangerKey)
	noProof := seal(MemberInfo{ID: stranger, Seq: now + 1}, strangerKey)
	for _, raw := range [][]byte{wrongProof, noProof, make([]byte, MaxMemberEnvelope+1)} {
		if err := bad.Publish(ctx, MemberTopic, raw); err != nil {
			t.Fatal(err)
		}
	}
	// A flood of its own refreshes: at most one per memberMinInterval is taken (and forwarded).
	for i := range 200 {
		raw := seal(MemberInfo{ID: bad.ID(), Seq: now + uint64(i), Proof: memberProof(psk, bad.ID())}, badKey)
		if err := bad.Publish(ctx, MemberTopic, raw); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the member's own record", func() bool { return target.Member(bad.ID()) && len(target.Members()) == 2 })
	time.Sleep(300 * time.Millisecond)
	if received := target.MemberStats().Received; received > 2 {
		t.Errorf("took %d records of one member within %v, want at most 2", received, memberMinInterval)
	}
	if target.Member(stranger) {
		t.Error("a stranger without the fleet key's proof counts as a member")
	}
	for _, m := range target.Members() {
		if m.ID == stranger {
			t.Error("stranger in the membership table")
		}
	}
}

// TestMemberJoinFollowUp: a member whose topic peers all joined at once (one join event) still publishes its
// follow-up record memberJoinDebounce later. Before, it published once, while the new peer's streams were being
// set up, and gossipsub lost that record (here the peer received none in 4 × memberJoinDebounce): the member was
// then learnt only by pulls, about 30 s into a start of 100 daemons (one cause of the slow mode of
// `make test-scale-100`; docs/benchmarks.md).
func TestMemberJoinFollowUp(t *testing.T) {
	t.Parallel()
	psk := writeKey(t)
	target := startNode(t, "", func(c *Config) {
		c.FleetKey, c.ServeWithoutFleetKey, c.MemberRefresh, c.MinPeers = psk, false, time.Minute, -1
	})
	watcher := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk, PubSub: true})[0]
	topic, err := watcher.Topic(MemberTopic)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()
	ctx, cancel := context.WithTimeout(t.Context(), 4*memberJoinDebounce)
	defer cancel()
	if err := watcher.Connect(ctx, peer.AddrInfo{ID: target.ID(), Addrs: target.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	seqs := map[uint64]bool{}
	for len(seqs) < 1 {
		msg, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("no record of the member received after one join (%v)", err)
		}
		if m, err := OpenMember(msg.Data); err == nil && m.ID == target.ID() {
			seqs[m.Seq] = true
		}
	}
}

// Members started together refresh at different times: the first refresh comes at a random point of the period.
// With a refresh one period after start for all (before), no member had refreshed 0.7 of a period after its
// start; now each has with probability 0.7, so none of 8 (0.3^8) does not happen in practice.
func TestMemberRefreshStaggered(t *testing.T) {
	t.Parallel()
	const refresh, n = 4 * time.Second, 8
	psk := writeKey(t)
	nodes := make([]*testNode, n)
	started := make([]time.Time, n)
	for i := range nodes {
		nodes[i] = startNode(t, "", func(c *Config) {
			c.FleetKey, c.ServeWithoutFleetKey, c.MemberRefresh, c.MinPeers = psk, false, refresh, -1
		})
		started[i] = time.Now()
	}
	refreshed := 0
	for i, tn := range nodes {
		time.Sleep(time.Until(started[i].Add(refresh * 7 / 10)))
		// The start publishes once; a node alone has no joins, pulls or repairs that publish again.
		if p := tn.MemberStats().Published; p >= 2 {
			refreshed++
		}
	}
	if refreshed == 0 {
		t.Errorf("none of %d members started together refreshed within 0.7 of the %v refresh", n, refresh)
	}
}

// TestMemberTrace: the simulation's hook reports each record taken as new with the peer it came from and how
// (its member's gossip, another member's relay, a pull), whether it was the member's first record here, and
// every anti-entropy round.
func TestMemberTrace(t *testing.T) {
	t.Parallel()
	psk, target := keyedNode(t, -1)
	var mu sync.Mutex
	var took []MemberEvent
	rounds := 0
	target.TraceMembers(func(ev MemberEvent) {
		mu.Lock()
		defer mu.Unlock()
		if ev.Round {
			rounds++
		} else {
			took = append(took, ev)
		}
	})
	h := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk, PubSub: true})[0]
	strangerKey, stranger := memberKey(t)
	pulledKey, pulled := memberKey(t)
	var answer atomic.Pointer[[]byte] // the pull's answer: nothing until the gossip below was taken
	answer.Store(&[]byte{})
	h.Serve(MemberSyncProtocol, func() []byte { return *answer.Load() })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	connectTo(ctx, t, h, target)
	if err := h.WaitTopicPeers(ctx, MemberTopic, 1); err != nil {
		t.Fatal(err)
	}
	own := provenRecord(t, psk, h.Host.Peerstore().PrivKey(h.ID()), 0)
	relayed := provenRecord(t, psk, strangerKey, time.Second)
	for _, raw := range [][]byte{own, relayed} {
		if err := h.Publish(ctx, MemberTopic, raw); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(took)
	}
	eventually(t, "both gossiped records taken", func() bool { return count() == 2 })
	newer := provenRecord(t, psk, strangerKey, 0)
	table := appendEntry(appendEntry(nil, provenRecord(t, psk, pulledKey, 0)), newer)
	answer.Store(&table)
	eventually(t, "the pulled records taken", func() bool { return count() == 4 })

	mu.Lock()
	defer mu.Unlock()
	want := map[peer.ID][]MemberEvent{
		h.ID():   {{Owner: h.ID(), From: h.ID(), Via: ViaGossip, Added: true}},
		stranger: {{Owner: stranger, From: h.ID(), Via: ViaRelay, Added: true}, {Owner: stranger, From: h.ID(), Via: ViaPull}},
		pulled:   {{Owner: pulled, From: h.ID(), Via: ViaPull, Added: true}},
	}
	got := map[peer.ID][]MemberEvent{}
	for _, ev := range took {
		if ev.Seq == 0 {
			t.Errorf("event without a seq: %+v", ev)
		}
		ev.Seq = 0
		got[ev.Owner] = append(got[ev.Owner], ev)
	}
	for owner, evs := range want {
		if !slices.Equal(got[owner], evs) {
			t.Errorf("owner %s: events %+v, want %+v", owner, got[owner], evs)
		}
	}
	if rounds == 0 {
		t.Error("no anti-entropy round reported")
	}
}

// TestStaticPeersRetired: a member's static peer does not count towards the overlay fill's MinPeers; once the
// fill has that many other members the static connection is closed and not redialled (a bootstrap list is for
// joining; gossipsub's meshes are then made of the fill's random connections), and a member cut off from the
// overlay dials its static peers again.
func TestStaticPeersRetired(t *testing.T) {
	t.Parallel()
	psk := writeKey(t)
	member := func(minPeers int, static ...*testNode) *testNode {
		return startNode(t, "", func(c *Config) {
			c.FleetKey, c.ServeWithoutFleetKey, c.MemberRefresh, c.MinPeers = psk, false, time.Second, minPeers
			for _, s := range static {
				c.StaticPeers = append(c.StaticPeers, staticAddr(s))
			}
		})
	}
	boot, b, c := member(-1), member(-1), member(-1) // they never dial: every connection below is the joiner's
	connect(t, b, boot)
	connect(t, c, boot)
	joiner := member(2, boot)
	connected := func(x, y *testNode) bool { return x.Host().Network().Connectedness(y.ID()) == network.Connected }
	eventually(t, "the joiner learns the members through its static peer", func() bool { return len(joiner.Members()) == 4 })
	eventually(t, "the fill connects two members besides the static peer", func() bool {
		return connected(joiner, b) && connected(joiner, c)
	})
	eventually(t, "the static peer retired", func() bool { return !connected(joiner, boot) })
	time.Sleep(redialInterval + time.Second) // past a redial of static peers
	if connected(joiner, boot) {
		for _, c := range joiner.Host().Network().ConnsToPeer(boot.ID()) {
			t.Logf("conn %v opened %v", c.Stat().Direction, c.Stat().Opened)
		}
		t.Fatal("a retired static peer was dialled again while the fill had MinPeers members")
	}
	b.close()
	c.close()
	eventually(t, "a member cut off from the overlay dials its static peer again", func() bool {
		return connected(joiner, boot)
	})
}

// TestHoldFill: with Config.HoldFill (the simulation harness's late fill) a member neither dials the members it
// learns nor retires its static peer until ReleaseFill; then the fill runs as usual.
func TestHoldFill(t *testing.T) {
	t.Parallel()
	psk := writeKey(t)
	member := func(minPeers int, hold bool, static ...*testNode) *testNode {
		return startNode(t, "", func(c *Config) {
			c.FleetKey, c.ServeWithoutFleetKey, c.MemberRefresh, c.MinPeers, c.HoldFill = psk, false, time.Second, minPeers, hold
			for _, s := range static {
				c.StaticPeers = append(c.StaticPeers, staticAddr(s))
			}
		})
	}
	boot, b, c := member(-1, false), member(-1, false), member(-1, false)
	connect(t, b, boot)
	connect(t, c, boot)
	joiner := member(2, true, boot)
	connected := func(x, y *testNode) bool { return x.Host().Network().Connectedness(y.ID()) == network.Connected }
	eventually(t, "the joiner learns the members through its static peer", func() bool { return len(joiner.Members()) == 4 })
	time.Sleep(2 * time.Second) // past several fill ticks (MemberRefresh/10)
	if connected(joiner, b) || connected(joiner, c) || !connected(joiner, boot) {
		t.Fatal("a held fill dialled a member or retired the static peer")
	}
	joiner.ReleaseFill()
	eventually(t, "the released fill connects two members besides the static peer", func() bool {
		return connected(joiner, b) && connected(joiner, c)
	})
	eventually(t, "the static peer retired", func() bool { return !connected(joiner, boot) })
}
