package p2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"maps"
	"net"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/npu-agent/npu-agent/internal/hostile"
)

func TestMemberDigestCodec(t *testing.T) {
	t.Parallel()
	d := map[uint64]uint64{3: 30, 1: 10, 1 << 63: 7}
	b := encodeMemberDigest(d)
	got, err := decodeMemberDigest(b)
	if err != nil || !maps.Equal(got, d) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	if got, err := readMemberDigest(bytes.NewReader(b)); err != nil || !maps.Equal(got, d) {
		t.Fatalf("read: %v %v", got, err)
	}
	header := func(n int) []byte {
		return binary.LittleEndian.AppendUint16(append([]byte(memberDigestMagic), memberDigestVersion), uint16(n))
	}
	entry := func(b []byte, k, seq uint64) []byte {
		return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(b, k), seq)
	}
	for name, in := range map[string][]byte{
		"empty":          nil,
		"short header":   b[:5],
		"bad magic":      append([]byte("NPMX"), b[4:]...),
		"bad version":    append(append([]byte(memberDigestMagic), 2), b[5:]...),
		"count too big":  header(MaxMembers + 2),
		"truncated":      b[:len(b)-1],
		"trailing":       append(bytes.Clone(b), 0),
		"duplicate key":  entry(entry(header(2), 5, 1), 5, 2),
		"decreasing key": entry(entry(header(2), 6, 1), 5, 2),
		"count lies":     entry(header(3), 5, 1),
	} {
		if _, err := decodeMemberDigest(in); err == nil {
			t.Errorf("%s: decoded", name)
		}
		if _, err := readMemberDigest(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: read", name)
		}
	}
	if n := len(encodeMemberDigest(map[uint64]uint64{})); n != memberDigestHeader {
		t.Errorf("empty digest is %d bytes", n)
	}
}

func FuzzDecodeMemberDigest(f *testing.F) {
	f.Add(encodeMemberDigest(map[uint64]uint64{1: 2, 3: 4}))
	f.Add(encodeMemberDigest(nil))
	f.Add([]byte("NPMD\x01\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeMemberDigest(b)
		r, rerr := readMemberDigest(bytes.NewReader(b))
		if (err == nil) != (rerr == nil) {
			t.Fatalf("decode %v, read %v", err, rerr)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(encodeMemberDigest(d), b) || !maps.Equal(d, r) {
			t.Fatal("not canonical")
		}
	})
}

// A record first taken by a pull is still forwarded once when its gossip arrives: ignoring it (as before) ended
// the record's gossip at every member that had pulled it first.
func TestMemberGossipAfterPullForwarded(t *testing.T) {
	t.Parallel()
	k, id := memberKey(t)
	raw, err := SealMember(MemberInfo{ID: id, Seq: uint64(time.Now().UnixNano())}, k)
	if err != nil {
		t.Fatal(err)
	}
	_, self := memberKey(t)
	b := newMemberBook(self, nil, nil, time.Minute)
	now := time.Now()
	if _, res := b.addPulled(raw, now); res != memberAdded {
		t.Fatalf("pull: %v", res)
	}
	if _, res := b.add(raw, now); res != memberForwarded {
		t.Fatalf("gossip after the pull: %v, want forwarded", res)
	}
	if _, res := b.add(raw, now.Add(time.Minute/2)); res != memberIgnored {
		t.Fatalf("second gossip of the same record: %v, want ignored", res)
	}
}

// TestMemberDigestPull: a node pulls digest-first, answers pullers of both versions, and still pulls from a member
// from before the digest (whole table); a malformed digest gets a reset and nothing else.
func TestMemberDigestPull(t *testing.T) {
	t.Parallel()
	// A refresh an hour away: the target's own record must keep the seq read below until the in-sync pull (the
	// first refresh comes at a random point of the period, 30 s by default, and can fall between the two).
	psk, target := keyedNode(t, -1, func(c *Config) { c.MemberRefresh = time.Hour })
	old := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk})[0]
	oldRec := provenRecord(t, psk, old.Host.Peerstore().PrivKey(old.ID()), 0)
	old.Serve(MemberSyncProtocol, func() []byte { return appendEntry(nil, oldRec) }) // a member before the digest
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	connectTo(ctx, t, old, target)
	eventually(t, "old member's record pulled", func() bool { return target.Member(old.ID()) && len(target.Members()) == 2 })

	pull := func(proto protocol.ID, req []byte) ([][]byte, error) {
		st, err := old.Host.NewStream(ctx, target.ID(), proto)
		if err != nil {
			return nil, err
		}
		defer st.Close()
		if _, err := st.Write(req); err != nil {
			return nil, err
		}
		st.CloseWrite()
		var docs [][]byte
		err = readEntries(st, MaxMemberEnvelope, func(doc []byte) bool {
			docs = append(docs, bytes.Clone(doc))
			return true
		})
		return docs, err
	}
	docs, err := pull(MemberSyncProtocol, nil)
	if err != nil || len(docs) != 2 {
		t.Fatalf("whole-table pull: %d records, %v; want the old member's and the target's", len(docs), err)
	}
	var own MemberInfo
	for _, d := range docs {
		if m, err := OpenMember(d); err == nil && m.ID == target.ID() {
			own = m
		}
	}
	if own.ID == "" {
		t.Fatal("the target's own record is not in its table")
	}
	if docs, err := pull(MemberDigestProtocol, encodeMemberDigest(nil)); err != nil || len(docs) != 2 {
		t.Errorf("empty digest: %d records, %v; want 2", len(docs), err)
	}
	inSync := encodeMemberDigest(map[uint64]uint64{digestKey(target.ID()): own.Seq, digestKey(old.ID()): ^uint64(0)})
	if docs, err := pull(MemberDigestProtocol, inSync); err != nil || len(docs) != 0 {
		t.Errorf("digest in sync: %d records, %v; want none", len(docs), err)
	}
	stale := encodeMemberDigest(map[uint64]uint64{digestKey(target.ID()): own.Seq - 1, digestKey(old.ID()): ^uint64(0)})
	if docs, err := pull(MemberDigestProtocol, stale); err != nil || len(docs) != 1 {
		t.Errorf("digest with the target's older record: %d records, %v; want 1", len(docs), err)
	}
	// Threat 9.2 "member digest": a lying count, garbage or trailing bytes get a reset, never records.
	for name, req := range map[string][]byte{
		"count above the table bound": binary.LittleEndian.AppendUint16([]byte("NPMD\x01"), MaxMembers+2),
		"fewer entries than counted":  append(binary.LittleEndian.AppendUint16([]byte("NPMD\x01"), 100), make([]byte, 160)...),
		"garbage":                     bytes.Repeat([]byte{0xff}, 64),
		"trailing byte":               append(encodeMemberDigest(nil), 0),
	} {
		docs, err := pull(MemberDigestProtocol, req)
		if len(docs) != 0 || err == nil { // readEntries returns nil only at a clean end
			t.Errorf("%s: %d records, err %v; want a reset", name, len(docs), err)
		}
	}
}

func TestMemberHashCodec(t *testing.T) {
	t.Parallel()
	h := hashMemberKeys([]uint64{3, 1, 2})
	if h != hashMemberKeys([]uint64{2, 3, 1}) {
		t.Error("the hash depends on the keys' order")
	}
	if h == hashMemberKeys([]uint64{1, 2}) {
		t.Error("a member fewer, same hash")
	}
	b := encodeMemberHash(h)
	if got, err := decodeMemberHash(b); err != nil || got != h {
		t.Fatalf("round trip: %x %v", got, err)
	}
	if got, err := readMemberHash(bytes.NewReader(b)); err != nil || got != h {
		t.Fatalf("read: %x %v", got, err)
	}
	for name, in := range map[string][]byte{
		"empty":       nil,
		"short":       b[:len(b)-1],
		"bad magic":   append([]byte("NPMX"), b[4:]...),
		"bad version": append(append([]byte(memberHashMagic), 2), b[5:]...),
	} {
		if _, err := decodeMemberHash(in); err == nil {
			t.Errorf("%s: decoded", name)
		}
		if _, err := readMemberHash(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: read", name)
		}
	}
	if _, err := decodeMemberHash(append(bytes.Clone(b), 0)); err == nil {
		t.Error("trailing byte decoded")
	}
}

func FuzzDecodeMemberHash(f *testing.F) {
	f.Add(encodeMemberHash(hashMemberKeys([]uint64{1, 2})))
	f.Add([]byte("NPMH\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeMemberHash(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeMemberHash(h), b) {
			t.Fatal("not canonical")
		}
	})
}

// The table hash covers who is a member, not seqs (a refresh elsewhere does not make two tables differ), and
// leaves out records older than two refreshes, so a member that missed refreshes pulls them before they expire.
func TestMemberTableHash(t *testing.T) {
	t.Parallel()
	_, self := memberKey(t)
	ttl := 3 * time.Minute // refresh 1 min
	now := time.Now()
	seal := func(k crypto.PrivKey, id peer.ID, at time.Time) []byte {
		raw, err := SealMember(MemberInfo{ID: id, Seq: uint64(at.UnixNano())}, k)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	ka, a := memberKey(t)
	kb, b := memberKey(t)
	x, y := newMemberBook(self, nil, nil, ttl), newMemberBook(self, nil, nil, ttl)
	x.addPulled(seal(ka, a, now.Add(-time.Second)), now)
	x.addPulled(seal(kb, b, now.Add(-70*time.Second)), now)
	y.addPulled(seal(kb, b, now.Add(-10*time.Second)), now)
	y.addPulled(seal(ka, a, now.Add(-30*time.Second)), now)
	sk := digestKey(self)
	if x.tableHash(sk, now) != y.tableHash(sk, now) {
		t.Fatal("same members with other seqs hash differently")
	}
	want := hashMemberKeys([]uint64{sk, digestKey(a), digestKey(b)})
	if got := x.tableHash(sk, now); got != want {
		t.Fatalf("hash %x, want %x", got, want)
	}
	// b's record in x is 70 s old: past two refreshes 60 s later, it drops out of x's hash only.
	later := now.Add(55 * time.Second)
	if x.tableHash(sk, later) == y.tableHash(sk, later) {
		t.Error("a record past two refreshes still hashes as in sync")
	}
	if x.tableHash(sk, later) != hashMemberKeys([]uint64{sk, digestKey(a)}) {
		t.Error("the stale record was not left out")
	}
}

// TestMemberHashPull: a node answers a hash-first pull with "same" for an equal table and with the digest exchange
// otherwise; a malformed hash gets a reset (threat 9.2 "member table hash").
func TestMemberHashPull(t *testing.T) {
	t.Parallel()
	psk, target := keyedNode(t, -1)
	old := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk})[0]
	oldRec := provenRecord(t, psk, old.Host.Peerstore().PrivKey(old.ID()), 0)
	old.Serve(MemberSyncProtocol, func() []byte { return appendEntry(nil, oldRec) })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	connectTo(ctx, t, old, target)
	eventually(t, "old member's record pulled", func() bool { return target.Member(old.ID()) && len(target.Members()) == 2 })

	// ask sends req, then (if digest is set) the digest after the verdict; it returns the whole answer.
	ask := func(req, digest []byte) ([]byte, error) {
		st, err := old.Host.NewStream(ctx, target.ID(), MemberHashProtocol)
		if err != nil {
			return nil, err
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := st.Write(req); err != nil {
			return nil, err
		}
		if digest == nil {
			st.CloseWrite()
			return io.ReadAll(st)
		}
		var v [1]byte
		if _, err := io.ReadFull(st, v[:]); err != nil {
			return nil, err
		}
		st.Write(digest)
		st.CloseWrite()
		rest, err := io.ReadAll(st)
		return append(v[:], rest...), err
	}
	same := encodeMemberHash(hashMemberKeys([]uint64{digestKey(target.ID()), digestKey(old.ID())}))
	if got, err := ask(same, nil); err != nil || !bytes.Equal(got, []byte{memberHashSame}) {
		t.Errorf("equal table: answer %x, %v; want only \"same\"", got, err)
	}
	differ := encodeMemberHash(hashMemberKeys([]uint64{digestKey(old.ID())}))
	got, err := ask(differ, encodeMemberDigest(map[uint64]uint64{digestKey(old.ID()): ^uint64(0)}))
	if err != nil || len(got) == 0 || got[0] != memberHashDiffer {
		t.Fatalf("other table: answer %x, %v; want \"differ\" and records", got, err)
	}
	var docs int
	if err := readEntries(bytes.NewReader(got[1:]), MaxMemberEnvelope, func([]byte) bool { docs++; return true }); err != nil || docs != 1 {
		t.Errorf("other table: %d records, %v; want the target's own", docs, err)
	}
	for name, req := range map[string][]byte{
		"bad magic":   append([]byte("NPMX"), same[4:]...),
		"bad version": append(append([]byte(memberHashMagic), 9), same[5:]...),
		"short":       same[:10],
	} {
		if got, err := ask(req, nil); len(got) != 0 || err == nil {
			t.Errorf("%s: answer %x, err %v; want a reset", name, got, err)
		}
	}
}

// A peer answering a hash-first pull with an unknown verdict is not read further: nothing it sends after it is
// taken (threat 9.2 "member table hash").
func TestMemberHashBadVerdict(t *testing.T) {
	t.Parallel()
	psk, target := keyedNode(t, -1)
	bad := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk})[0]
	rec := provenRecord(t, psk, bad.Host.Peerstore().PrivKey(bad.ID()), 0)
	bad.Serve(MemberHashProtocol, func() []byte { return appendEntry([]byte{7}, rec) })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	connectTo(ctx, t, bad, target)
	eventually(t, "two pulls", func() bool { return target.MemberStats().Pulls >= 2 })
	if len(target.Members()) != 1 {
		t.Errorf("members %d: a record sent after a bad verdict was taken", len(target.Members()))
	}
}

// A member whose record a puller lacks, although the puller knows most members, publishes it again (at most twice
// per refresh, not sooner than 5 s after its last publish): its gossip was lost, and pulls alone spread a record
// through 100 members in about 30 s.
func TestMemberRepairPublish(t *testing.T) {
	t.Parallel()
	// A refresh an hour away: the first refresh comes at a random point of the period (30 s by default) and
	// would count as a publish in the windows below (CI saw it once).
	psk := writeKey(t)
	target := startNode(t, "", func(c *Config) {
		c.FleetKey, c.ServeWithoutFleetKey, c.MinPeers, c.MemberRefresh = psk, false, -1, time.Hour
	})
	h := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk, PubSub: true})[0]
	if _, err := h.Topic(MemberTopic); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	connectTo(ctx, t, h, target)
	pull := func(d map[uint64]uint64) {
		st, err := h.Host.NewStream(ctx, target.ID(), MemberDigestProtocol)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.Write(encodeMemberDigest(d))
		st.CloseWrite()
		io.Copy(io.Discard, st)
	}
	eventually(t, "the join publishes", func() bool { return target.MemberStats().Published >= 3 })
	pub := target.MemberStats().Published
	knows := map[uint64]uint64{digestKey(target.ID()): 1}
	for range 5 { // within 5 s of the last publish, and a puller that knows us: no publish
		pull(knows)
	}
	pull(nil)
	time.Sleep(500 * time.Millisecond)
	if got := target.MemberStats().Published; got != pub {
		t.Fatalf("published %d, want %d: a pull asked for a publish too soon or from a puller that knew us", got, pub)
	}
	deadline := time.Now().Add(10 * time.Second)
	for target.MemberStats().Published == pub {
		if time.Now().After(deadline) {
			t.Fatal("no publish after pulls that lacked our record")
		}
		pull(nil)
		time.Sleep(200 * time.Millisecond)
	}
	pub = target.MemberStats().Published
	for range 5 {
		pull(nil)
	}
	time.Sleep(500 * time.Millisecond)
	if got := target.MemberStats().Published; got != pub {
		t.Errorf("published %d right after a repair publish, want %d", got, pub)
	}
}

// The overlay fill's dials do not hold back the member loop: with four members whose addresses accept TCP and
// then say nothing (each dial lasts the whole fill timeout), the anti-entropy rounds still run on time. In the
// loop, the dials held back pulls and join publishes for up to 20 s (100 daemons under load).
func TestMemberFillDoesNotBlockRounds(t *testing.T) {
	t.Parallel()
	psk, target := keyedNode(t, 8)
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mute.Close() })
	go func() {
		var held []net.Conn // accepted and never answered, so a dial waits for its timeout
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	addr, err := manet.FromNetAddr(mute.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var table []byte
	for range 4 {
		k, _ := memberKey(t)
		table = appendEntry(table, provenRecord(t, psk, k, 0, addr))
	}
	h := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk})[0]
	h.Serve(MemberSyncProtocol, func() []byte { return table }) // a member before the digest: its whole table
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	connectTo(ctx, t, h, target)
	eventually(t, "the mute members listed", func() bool { return len(target.Members()) == 5 })
	r0 := target.MemberStats().Rounds
	time.Sleep(12 * time.Second) // the fill starts every 3 s and each of its dials lasts 5 s
	// In the loop (before), the fill's first four dials took 20 s from 3 s on: 2 rounds; now 3-4 (1, 3, 7, 12 s).
	if r := target.MemberStats().Rounds - r0; r < 3 {
		t.Errorf("%d anti-entropy rounds in 12 s while the fill dialled mute members, want at least 3", r)
	}
}

// A record new to a member, taken by a pull and signed more than 10 s before, had its gossip lost on the way: the
// member publishes it once, so the members around it take it from gossip instead of one pull hop per round. A
// fresh record taken by a pull is not published (its gossip may still come).
func TestMemberPulledRecordRelayed(t *testing.T) {
	t.Parallel()
	psk, target := keyedNode(t, -1)
	seal := func(age time.Duration) []byte {
		k, _ := memberKey(t)
		return provenRecord(t, psk, k, age)
	}
	old, fresh := seal(20*time.Second), seal(0)
	h := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk, PubSub: true})[0]
	var mu sync.Mutex
	seen := map[string]int{} // records the target published, by content
	err := h.PubSub.RegisterTopicValidator(MemberTopic, func(_ context.Context, from peer.ID, msg *pubsub.Message) bool {
		if msg.GetFrom() == target.ID() {
			mu.Lock()
			seen[string(msg.Data)]++
			mu.Unlock()
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Topic(MemberTopic); err != nil {
		t.Fatal(err)
	}
	h.Serve(MemberSyncProtocol, func() []byte { return appendEntry(appendEntry(nil, old), fresh) })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	connectTo(ctx, t, h, target)
	eventually(t, "the old record relayed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[string(old)] > 0
	})
	time.Sleep(2 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	if seen[string(old)] != 1 || seen[string(fresh)] != 0 {
		t.Errorf("relayed the old record %d times (want 1), the fresh one %d times (want 0)", seen[string(old)], seen[string(fresh)])
	}
	if r := target.MemberStats().Relayed; r != 1 {
		t.Errorf("Relayed = %d, want 1", r)
	}
}

// keyedNode starts a node with a fleet key and minPeers (-1: no overlay fill), then mods applied to its config.
func keyedNode(t *testing.T, minPeers int, mods ...func(*Config)) (pnet.PSK, *testNode) {
	t.Helper()
	psk := writeKey(t)
	return psk, startNode(t, "", func(c *Config) {
		c.FleetKey, c.ServeWithoutFleetKey, c.MinPeers = psk, false, minPeers
		for _, mod := range mods {
			mod(c)
		}
	})
}

// provenRecord is a member record of k's peer signed age ago, with the fleet key's proof.
func provenRecord(t *testing.T, psk pnet.PSK, k crypto.PrivKey, age time.Duration, addrs ...ma.Multiaddr) []byte {
	t.Helper()
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := SealMember(MemberInfo{ID: id, Seq: uint64(time.Now().Add(-age).UnixNano()), Addrs: addrs,
		Proof: memberProof(psk, id)}, k)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// connectTo connects the hostile peer h to target.
func connectTo(ctx context.Context, t *testing.T, h *hostile.Peer, target *testNode) {
	t.Helper()
	if err := h.Connect(ctx, peer.AddrInfo{ID: target.ID(), Addrs: target.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
}

// TestThreatMintedMembersKeepStaticPeers: a member holding the fleet key mints member records of identities whose
// addresses never answer, so that another member's overlay fill finds nobody: only connected members count
// towards MinPeers, so the victim keeps its static peer (its way back into the fleet) however many it is shown.
func TestThreatMintedMembersKeepStaticPeers(t *testing.T) {
	t.Parallel()
	psk, static := keyedNode(t, -1)
	_, victim := keyedNode(t, 3, func(c *Config) {
		c.FleetKey, c.MemberRefresh, c.StaticPeers = psk, time.Second, []ma.Multiaddr{staticAddr(static)}
	})
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead, err := manet.FromNetAddr(closed.Addr())
	if err != nil {
		t.Fatal(err)
	}
	closed.Close() // dials of the minted members are refused at once
	var table []byte
	for range 16 {
		k, _ := memberKey(t)
		table = appendEntry(table, provenRecord(t, psk, k, 0, dead))
	}
	h := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk})[0]
	h.Serve(MemberSyncProtocol, func() []byte { return table })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	connectTo(ctx, t, h, victim)
	eventually(t, "the minted members listed", func() bool { return len(victim.Members()) >= 17 })
	eventually(t, "the static peer connected", func() bool {
		return victim.Host().Network().Connectedness(static.ID()) == network.Connected
	})
	time.Sleep(3 * time.Second) // 30 fill checks, each dialling up to 3 minted members
	if victim.Host().Network().Connectedness(static.ID()) != network.Connected {
		t.Fatal("the static peer was retired while the fill had only the minter connected")
	}
}
