package p2p

import (
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

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
	psk := writeKey(t)
	target := startNode(t, "", func(c *Config) {
		c.FleetKey, c.ServeWithoutFleetKey, c.MinPeers = psk, false, -1
	})
	old := hostilePeers(t, 1, hostile.PeerOptions{FleetKey: psk})[0]
	oldRec, err := SealMember(MemberInfo{ID: old.ID(), Seq: uint64(time.Now().UnixNano()), Proof: memberProof(psk, old.ID())},
		old.Host.Peerstore().PrivKey(old.ID()))
	if err != nil {
		t.Fatal(err)
	}
	old.Serve(MemberSyncProtocol, func() []byte { return appendEntry(nil, oldRec) }) // a member before the digest
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := old.Connect(ctx, peer.AddrInfo{ID: target.ID(), Addrs: target.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
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
