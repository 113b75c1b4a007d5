package p2p

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	peertest "github.com/libp2p/go-libp2p/core/test"
	"github.com/libp2p/zeroconf/v2"
)

// TestBrowseWait: the mDNS query schedule's phases (design 6.3): fast while joining or cut off, then steady,
// growing with the members known so the LAN sends about 4 queries a minute in total.
func TestBrowseWait(t *testing.T) {
	t.Parallel()
	const s = time.Second
	cases := []struct {
		name     string
		st       browseState
		fast     int
		lo, hi   time.Duration // over u in [0, 1)
		wantFast bool
	}{
		{"start, first wait", browseState{sinceStart: 0, connected: 0, dialBelow: 4, members: 1}, 0, 3 * s, 5 * s, true},
		{"start, doubling", browseState{sinceStart: 20 * s, connected: 2, dialBelow: 4, members: 3}, 2, 12 * s, 20 * s, true},
		{"start, capped", browseState{sinceStart: 100 * s, connected: 1, dialBelow: 4, members: 2}, 9, 45 * s, 75 * s, true},
		{"start, enough peers", browseState{sinceStart: 10 * s, connected: 4, dialBelow: 4, members: 4}, 1, 30 * s, 90 * s, false},
		{"after start, few peers", browseState{sinceStart: 3 * time.Minute, connected: 2, dialBelow: 4, members: 3}, 0, 30 * s, 90 * s, false},
		{"cut off", browseState{sinceStart: time.Hour, connected: 0, dialBelow: 4, members: 200}, 0, 3 * s, 5 * s, true},
		{"cut off, for long", browseState{sinceStart: time.Hour, connected: 0, dialBelow: 4, members: 200}, 50, 45 * s, 75 * s, true},
		{"steady, small LAN", browseState{sinceStart: time.Hour, connected: 3, dialBelow: 4, members: 4}, 0, 30 * s, 90 * s, false},
		{"steady, 24 members", browseState{sinceStart: time.Hour, connected: 8, dialBelow: 4, members: 24}, 0, 180 * s, 540 * s, false},
		{"steady, 1000 members", browseState{sinceStart: time.Hour, connected: 8, dialBelow: 4, members: 1000}, 0, 7500 * s, 22500 * s, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, u := range []float64{0, 0.25, 0.5, 0.999999} {
				w, fast := browseWait(c.st, c.fast, u)
				if fast != c.wantFast || w < c.lo || w > c.hi {
					t.Errorf("u=%v: %v fast=%v, want [%v, %v] fast=%v", u, w, fast, c.lo, c.hi, c.wantFast)
				}
			}
		})
	}
}

// TestBrowseRateLAN: in steady state the whole LAN's query rate stays a few a minute whatever its size, so a
// host receives O(N) answers a minute (each query answered by every host), not O(N^2).
func TestBrowseRateLAN(t *testing.T) {
	t.Parallel()
	for _, n := range []int{5, 24, 200, 1000, 5000} {
		st := browseState{sinceStart: time.Hour, connected: 8, dialBelow: 4, members: n}
		w, _ := browseWait(st, 0, 0.5) // the mean
		perMin := float64(n) * float64(time.Minute) / float64(w)
		if perMin > 5 {
			t.Errorf("%d members: %.1f queries a minute on the LAN, want at most 5", n, perMin)
		}
	}
}

// TestThreatMDNSAnnouncements (design 9.2): any LAN host can answer mDNS. An announcement's TXT records reach
// discovery only as dnsaddr multiaddrs with a peer ID other than this node's; loopback addresses are dropped; a
// flood of announced IDs is remembered (and put in the peerstore) at most maxFoundPeers times.
func TestThreatMDNSAnnouncements(t *testing.T) {
	t.Parallel()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	d := &discovery{h: h, found: map[peer.ID]foundPeer{}, dialBelow: 0} // never dials: addresses go to the peerstore
	l := &lanDiscovery{h: h, found: d.HandlePeerFound}
	good := peertest.RandPeerIDFatal(t)
	for _, txt := range [][]string{
		{"garbage", "dnsaddr=", "dnsaddr=/not/a/multiaddr"},
		{"dnsaddr=/ip4/10.1.2.3/tcp/4801"},                                                     // no peer ID
		{"dnsaddr=/ip4/10.1.2.3/tcp/4801/p2p/" + h.ID().String()},                              // this node
		{"dnsaddr=/ip4/127.0.0.1/tcp/4801/p2p/" + peertest.RandPeerIDFatal(t).String()},        // loopback only
		{"dnsaddr=/ip4/10.1.2.4/tcp/4801/p2p/" + good.String(), "dnsaddr=/ip4/10.1.2.9/tcp/1"}, // one bad address spoils it
		{"garbage", "dnsaddr=/ip4/10.1.2.4/tcp/4801/p2p/" + good.String()},
	} {
		l.entry(&zeroconf.ServiceEntry{Text: txt})
	}
	if len(d.found) != 1 || d.found[good].ai.ID != good {
		t.Fatalf("found %v, want only %s", d.found, good)
	}
	before := len(h.Peerstore().Peers())
	for range maxFoundPeers + 500 {
		l.entry(&zeroconf.ServiceEntry{Text: []string{"dnsaddr=/ip4/10.1.2.5/tcp/4801/p2p/" + peertest.RandPeerIDFatal(t).String()}})
	}
	if len(d.found) != maxFoundPeers {
		t.Errorf("%d announced peers remembered, want the bound %d", len(d.found), maxFoundPeers)
	}
	if added := len(h.Peerstore().Peers()) - before; added > maxFoundPeers {
		t.Errorf("%d peers added to the peerstore by a flood, want at most %d", added, maxFoundPeers)
	}
}

// TestBridgeDials: a member that has its dialBelow peers dials a peer announced on mDNS only if the peer is not
// a known member, with probability bridgeDials / members, deciding once per bridgeWindow per peer, at most
// maxBridging at once, and not while joining (design 6.3): what joins two halves of a LAN that forgot each
// other, and what bounds the dials a stranger's announcements cost.
func TestBridgeDials(t *testing.T) {
	t.Parallel()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	member, stranger := peertest.RandPeerIDFatal(t), peertest.RandPeerIDFatal(t)
	known := func(p peer.ID) bool { return p == member }
	six := func() int { return 6 } // p = 2/6
	now := time.Now()
	long := now.Add(-time.Hour) // discovery's start: past joining
	cases := []struct {
		name       string
		known      func(peer.ID) bool
		id         peer.ID
		bridging   int
		considered time.Time
		start      time.Time // of discovery
		u          float64
		want       bool
		decided    bool // the decision time moved to now
	}{
		{"stranger, draw below 2/6", known, stranger, 0, time.Time{}, long, 0.3, true, true},
		{"stranger, draw above 2/6", known, stranger, 0, time.Time{}, long, 0.34, false, true},
		{"known member", known, member, 0, time.Time{}, long, 0, false, false},
		{"no membership table", nil, stranger, 0, time.Time{}, long, 0, false, false},
		{"decided within the window", known, stranger, 0, now.Add(-bridgeWindow / 2), long, 0, false, false},
		{"decided a window ago", known, stranger, 0, now.Add(-bridgeWindow), long, 0, true, true},
		{"bridging dials at their bound", known, stranger, maxBridging, time.Time{}, long, 0, false, false},
		{"still joining", known, stranger, 0, time.Time{}, now.Add(-joinPhase / 2), 0, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d := &discovery{h: h, known: c.known, members: six, bridging: c.bridging, start: c.start}
			considered := c.considered
			if got := d.bridge(c.id, &considered, now, c.u, bridgeWindow); got != c.want {
				t.Errorf("bridge = %v, want %v", got, c.want)
			}
			if decided := considered.Equal(now); decided != c.decided {
				t.Errorf("decision time %v, want moved to now: %v", considered, c.decided)
			}
		})
	}
}

// A static peer the overlay fill retired is dialled again only as a bridging dial: when the membership table does
// not know it (a fleet joined by static peers alone, after a LAN split, hears no mDNS announcement to bridge on).
// Real hosts on loopback; redial's one round either connects the static peer or does not.
func TestRetiredStaticPeerBridged(t *testing.T) {
	t.Parallel()
	now := time.Now()
	cases := []struct {
		name       string
		retired    bool
		known      bool
		start      time.Time // of discovery
		considered time.Time // the last decision for the static peer
		want       bool
	}{
		{"bootstrap peer, not retired", false, true, now, time.Time{}, true},
		{"retired, forgotten", true, false, now.Add(-time.Hour), time.Time{}, true},
		{"retired, a known member", true, true, now.Add(-time.Hour), time.Time{}, false},
		{"retired, forgotten, decided within the window", true, false, now.Add(-time.Hour), now.Add(-staticBridgeWindow / 2), false},
		{"retired, forgotten, decided a window ago", true, false, now.Add(-time.Hour), now.Add(-staticBridgeWindow), true},
		{"retired, forgotten, still joining", true, false, now.Add(-joinPhase / 2), time.Time{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ai := peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}
			addrs, err := peer.AddrInfoToP2pAddrs(&ai)
			if err != nil {
				t.Fatal(err)
			}
			boot := newBootstrap(addrs[:1])
			boot.retired.Store(c.retired)
			d := &discovery{h: a, log: slog.New(slog.DiscardHandler), static: []peer.AddrInfo{ai}, boot: boot,
				found: map[peer.ID]foundPeer{}, staticConsidered: map[peer.ID]time.Time{b.ID(): c.considered},
				known:   func(p peer.ID) bool { return c.known && p == b.ID() },
				members: func() int { return 1 }, // bridgeDials / 1: every decision dials
				start:   c.start}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d.redial(ctx)
			if got := a.Network().Connectedness(b.ID()) == network.Connected; got != c.want {
				t.Errorf("connected to the static peer: %v, want %v", got, c.want)
			}
			if d.bridging != 0 {
				t.Errorf("%d bridging dials counted after the round", d.bridging)
			}
		})
	}
}
