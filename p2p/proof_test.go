package p2p

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/internal/hostile"
)

// fleetCA is a test fleet authority.
type fleetCA struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func newCA(t testing.TB) fleetCA {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return fleetCA{pub, priv}
}

func (ca fleetCA) cert(t testing.TB, p peer.ID, nb, na time.Time) []byte {
	t.Helper()
	c, err := IssueCert(ca.priv, p, nb, na)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (ca fleetCA) revoke(t *testing.T, seq uint64, peers ...peer.ID) []byte {
	t.Helper()
	b, err := IssueRevocations(ca.priv, seq, time.Now(), peers)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// member starts a node of ca's fleet with a certificate valid for a day; mod runs last.
func (ca fleetCA) member(t *testing.T, mod func(*Config)) *testNode {
	t.Helper()
	dir := t.TempDir()
	k, err := loadIdentity(filepath.Join(dir, "p2p"), testLog)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert := ca.cert(t, id, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	return startNode(t, dir, func(c *Config) {
		c.ServeWithoutFleetKey = false
		c.Authority, c.MemberCert, c.ProofTimeout = ca.pub, cert, 2*time.Second
		if mod != nil {
			mod(c)
		}
	})
}

func connected(a, b *testNode) bool {
	return a.Host().Network().Connectedness(b.ID()) == network.Connected
}

// Members of one authority connect over TCP and QUIC, serve each other and gossip; the proof is visible.
func TestAuthorityMembers(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	withQUIC := func(c *Config) { c.ListenAddrs = []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")} }
	a := ca.member(t, withQUIC)
	b := ca.member(t, nil)
	if !a.ServesBlobs() {
		t.Error("a member with a certificate does not serve blobs")
	}
	data := randomBlob(t, 2<<20)
	blob := put(t, a, data)
	connect(t, b, a) // over QUIC: a listens on nothing else
	if c := b.Host().Network().ConnsToPeer(a.ID()); len(c) == 0 || !isQUIC(c[0].RemoteMultiaddr()) {
		t.Fatalf("connections %v, want QUIC", c)
	}
	if err := fetch(t, b, blob, a); err != nil {
		t.Fatalf("member fetch: %v", err)
	}
	checkBlob(t, b, blob, data)
	eventually(t, "both proven", func() bool { return a.mb.proven(b.ID()) && b.mb.proven(a.ID()) })
	if !a.Member(b.ID()) || !b.Member(a.ID()) {
		t.Error("proven peers are not members")
	}
	// With both, TCP is dialled first (quicDialDelay).
	c := ca.member(t, func(c *Config) { c.ListenAddrs = append(c.ListenAddrs, ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")) })
	connect(t, b, c)
	if cs := b.Host().Network().ConnsToPeer(c.ID()); len(cs) != 1 || isQUIC(cs[0].RemoteMultiaddr()) {
		t.Errorf("connections %v, want one over TCP", cs)
	}
	if _, err := a.Publish(t.Context(), recordFor(t, a, data, "model-a")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "record reaches the other member", func() bool { return hasRecord(b, "model-a") })
}

// hostileProof is what an unproven peer answers on the proof protocol: nil never answers.
type hostileProof func(t *testing.T, self peer.ID) []byte

func proofAnswer(seq uint64, cert []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, seq)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(cert)))
	return append(b, cert...)
}

// Threat 9.2 "a host without a valid member certificate": an outsider, a member of another authority, a
// certificate expired or not yet valid, one naming another peer, a garbage, oversized or lying proof, and no
// proof at all. None is served a chunk or a record, none is asked for records, its gossip is not taken, and the
// victim closes the connection and refuses the peer for a while.
func TestThreatAuthorityUnproven(t *testing.T) {
	t.Parallel()
	ca, other := newCA(t), newCA(t)
	now := time.Now()
	garbage := make([]byte, 300)
	rand.Read(garbage)
	big := make([]byte, 1<<20)
	for _, tc := range []struct {
		name   string
		answer hostileProof
		silent bool
	}{
		{"outsider", nil, false},
		{"another authority", func(t *testing.T, p peer.ID) []byte {
			return proofAnswer(0, other.cert(t, p, now.Add(-time.Hour), now.Add(time.Hour)))
		}, false},
		{"expired", func(t *testing.T, p peer.ID) []byte {
			return proofAnswer(0, ca.cert(t, p, now.Add(-48*time.Hour), now.Add(-time.Hour)))
		}, false},
		{"not yet valid", func(t *testing.T, p peer.ID) []byte {
			return proofAnswer(0, ca.cert(t, p, now.Add(time.Hour), now.Add(48*time.Hour)))
		}, false},
		{"another peer's certificate", func(t *testing.T, _ peer.ID) []byte {
			_, id := newKey(t)
			return proofAnswer(0, ca.cert(t, id, now.Add(-time.Hour), now.Add(time.Hour)))
		}, false},
		{"garbage", func(*testing.T, peer.ID) []byte { return garbage }, false},
		{"oversized", func(*testing.T, peer.ID) []byte { return big }, false},
		{"length lies", func(t *testing.T, p peer.ID) []byte {
			b := proofAnswer(0, ca.cert(t, p, now.Add(-time.Hour), now.Add(time.Hour)))
			binary.LittleEndian.PutUint16(b[8:], 400)
			return b
		}, false},
		{"never answers", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) { // one at a time: nine badger stores at once weigh on the heap-bound tests
			victim := ca.member(t, nil)
			data := randomBlob(t, 100<<10)
			blob := put(t, victim, data)
			if _, err := victim.Publish(t.Context(), recordFor(t, victim, data, "victim-model")); err != nil {
				t.Fatal(err)
			}
			h := hostilePeers(t, 1, hostile.PeerOptions{PubSub: true})[0]
			if tc.answer != nil {
				ans := tc.answer(t, h.ID())
				h.Serve(ProofProtocol, func() []byte { return ans })
			}
			if tc.silent {
				stop := make(chan struct{})
				t.Cleanup(func() { close(stop) })
				h.Host.SetStreamHandler(ProofProtocol, func(s network.Stream) {
					<-stop // never answers
					s.Reset()
				})
			}
			asked := make(chan struct{}, 16)
			h.Host.SetStreamHandler(RecordSyncProtocol, func(s network.Stream) {
				asked <- struct{}{}
				s.Reset()
			})
			topic, err := h.Topic(RecordTopic)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := h.Connect(t.Context(), peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()}); err != nil {
				t.Fatal(err)
			}
			// Asking while the proof is pending or failed: nothing comes back.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if _, err := getHave(ctx, h.Host, victim.ID(), blob, 1, 4*time.Second); err == nil {
				t.Error("unproven peer asked HAVE")
			}
			if s, err := h.Host.NewStream(ctx, victim.ID(), RecordSyncProtocol); err == nil {
				s.SetReadDeadline(time.Now().Add(4 * time.Second))
				if b, _ := io.ReadAll(s); len(b) > 0 {
					t.Errorf("unproven peer was sent %d bytes of records", len(b))
				}
				s.Reset()
			}
			// Its gossip is not taken.
			forged := sampleRecord(h.ID())
			forged.ModelID, forged.Created = "hostile-model", time.Now()
			sr, err := SealRecord(forged, h.Host.Peerstore().PrivKey(h.ID()))
			if err != nil {
				t.Fatal(err)
			}
			topic.Publish(t.Context(), sr.Envelope)
			eventually(t, "victim closes the connection", func() bool {
				return victim.Host().Network().Connectedness(h.ID()) != network.Connected
			})
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("connection closed after %v, proof timeout is 2 s", d)
			}
			if victim.Member(h.ID()) {
				t.Error("unproven peer counts as a member")
			}
			if n := victim.PeersRefused(); n < 1 {
				t.Errorf("PeersRefused = %d after refusing a peer, want ≥ 1 (npu_agent_peers_refused_total)", n)
			}
			if hasRecord(victim, "hostile-model") {
				t.Error("victim took gossip from an unproven peer")
			}
			select {
			case <-asked:
				t.Error("victim asked an unproven peer for records")
			default:
			}
			// Refused for a while: a new connection does not stay up.
			h.Connect(t.Context(), peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()})
			time.Sleep(200 * time.Millisecond)
			if victim.Host().Network().Connectedness(h.ID()) == network.Connected {
				t.Error("refused peer reconnected at once")
			}
		})
	}
}

// Threat 9.2 "a revoked member": a revocation list adopted by one member (its operator's file) disconnects the
// revoked member at once, reaches connected members by gossip and later members by their first proof, persists,
// never goes back to a lower seq, and keeps the revoked member out everywhere; other members are unaffected.
func TestThreatAuthorityRevocation(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	listFile := filepath.Join(t.TempDir(), "revoked.pem")
	a := ca.member(t, func(c *Config) { c.RevocationsFile = listFile })
	b := ca.member(t, nil) // to be revoked
	c := ca.member(t, nil)
	connect(t, b, a)
	connect(t, c, a)
	connect(t, b, c)
	waitGossip(t, a, c)
	eventually(t, "members proven", func() bool {
		return a.mb.proven(b.ID()) && c.mb.proven(b.ID()) && a.mb.proven(c.ID()) &&
			slices.Contains(c.PubSub().ListPeers(RevocationsTopic), a.ID())
	})

	if err := os.WriteFile(listFile, EncodePEM(ca.revoke(t, 2, b.ID()), false), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.mb.readOpFile(); err != nil { // what the 10 s poll does
		t.Fatal(err)
	}
	eventually(t, "revoked member disconnected from a and, by gossip, from c", func() bool {
		return !connected(a, b) && !connected(c, b) && !connected(b, a) && !connected(b, c)
	})
	if !connected(a, c) {
		t.Error("revocation disconnected an unrevoked member")
	}
	if a.Member(b.ID()) || c.Member(b.ID()) {
		t.Error("revoked peer still a member")
	}
	for _, n := range []*testNode{a, c} {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		b.Host().Connect(ctx, peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()})
		cancel()
	}
	time.Sleep(300 * time.Millisecond)
	if connected(a, b) || connected(c, b) {
		t.Error("revoked member reconnected")
	}
	if _, err := os.Stat(filepath.Join(c.dir, "p2p", RevocationsFile)); err != nil {
		t.Errorf("gossiped list not stored: %v", err)
	}

	// A stale list (lower seq) changes nothing, from a file or a member.
	old, err := DecodeRevocations(ca.revoke(t, 1), ca.pub)
	if err != nil {
		t.Fatal(err)
	}
	if c.mb.adopt(old, "test") || c.mb.rl.Seq != 2 {
		t.Error("a lower seq replaced the list held")
	}

	// A member started later learns the list from its first proof of c.
	d := ca.member(t, nil)
	connect(t, d, c)
	eventually(t, "late member pulls the list", func() bool { return d.mb.refuse(b.ID()) })
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if err := d.Host().Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err == nil {
		t.Error("late member dialled the revoked one")
	}

	// A member started with the operator's file refuses the revoked one from the start, and stores the list.
	e := ca.member(t, func(c *Config) { c.RevocationsFile = listFile })
	ctx2, cancel2 := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel2()
	b.Host().Connect(ctx2, peer.AddrInfo{ID: e.ID(), Addrs: e.Host().Addrs()})
	time.Sleep(200 * time.Millisecond)
	if connected(e, b) || e.Member(b.ID()) {
		t.Error("member started with the list admitted the revoked one")
	}
	if _, err := os.Stat(filepath.Join(e.dir, "p2p", RevocationsFile)); err != nil {
		t.Errorf("operator's list not stored at start: %v", err)
	}

	// A restart keeps the list (stored in the data directory).
	c.close()
	c2 := startNode(t, c.dir, func(cfg *Config) {
		cfg.ServeWithoutFleetKey = false
		cfg.Authority, cfg.MemberCert = ca.pub, c.mb.cert
	})
	if !c2.mb.refuse(b.ID()) {
		t.Error("revocation list lost at restart")
	}
}

// A member whose certificate expires while connected is disconnected by the periodic check.
func TestAuthorityCertExpiresWhileConnected(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	a := ca.member(t, nil)
	b := ca.member(t, nil)
	connect(t, b, a)
	eventually(t, "proven", func() bool { return a.mb.proven(b.ID()) })
	a.mb.mu.Lock()
	a.mb.peers[b.ID()].notAfter = time.Now() // as if the certificate had just expired
	a.mb.mu.Unlock()
	if a.mb.proven(b.ID()) {
		t.Error("expired proof still counts")
	}
	// No stream either way; the 10 s check closes the connection.
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if _, err := a.Host().NewStream(ctx, b.ID(), RecordSyncProtocol); !errors.Is(err, ErrNotMember) {
		t.Errorf("stream to an expired member: %v", err)
	}
}

// The daemon's configuration mistakes are refused at start.
func TestAuthorityConfig(t *testing.T) {
	t.Parallel()
	ca, other := newCA(t), newCA(t)
	_, id := newKey(t)
	good := ca.cert(t, id, time.Now(), time.Now().Add(time.Hour))
	for name, mod := range map[string]func(*Config){
		"fleet key too":          func(c *Config) { c.FleetKey = writeKey(t) },
		"certificate of another": func(c *Config) { c.MemberCert = other.cert(t, id, time.Now(), time.Now().Add(time.Hour)) },
		"no certificate":         func(c *Config) { c.MemberCert = nil },
		"bad revocations file": func(c *Config) {
			c.RevocationsFile = filepath.Join(t.TempDir(), "revoked.pem")
			os.WriteFile(c.RevocationsFile, EncodePEM(other.revoke(t, 1, id), false), 0o644)
		},
		"short authority key": func(c *Config) { c.Authority = c.Authority[:16] },
	} {
		cfg := loopbackConfig(t.TempDir())
		cfg.Authority, cfg.MemberCert = ca.pub, good
		mod(&cfg)
		if n, err := New(t.Context(), cfg, newMemStore(), testLog); err == nil {
			n.Close()
			t.Errorf("%s: node started", name)
		}
	}
}

// Threat 9.2 "connection flood from throwaway identities" with a fleet authority: outsiders cost the victim a
// handshake and one proof read each, then are closed; nothing stays behind and a member still fetches meanwhile.
func TestThreatAuthorityConnectionFlood(t *testing.T) {
	t.Parallel()
	ca := newCA(t)
	victim := ca.member(t, nil)
	member := ca.member(t, nil)
	data := randomBlob(t, 2<<20)
	blob := put(t, victim, data)
	ai := peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()}
	flood := hostilePeers(t, 40, hostile.PeerOptions{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, h := range flood {
			h.Connect(t.Context(), ai)
		}
	}()
	connect(t, member, victim)
	if err := fetch(t, member, blob, victim); err != nil {
		t.Fatalf("member fetch during the flood: %v", err)
	}
	<-done
	eventually(t, "outsiders disconnected", func() bool {
		for _, h := range flood {
			if victim.Host().Network().Connectedness(h.ID()) == network.Connected {
				return false
			}
		}
		return true
	})
	for _, h := range flood {
		h.Close()
	}
	eventually(t, "proof states of the outsiders forgotten", func() bool {
		victim.mb.mu.Lock()
		defer victim.mb.mu.Unlock()
		return len(victim.mb.peers) == 1 // the member's
	})
}
