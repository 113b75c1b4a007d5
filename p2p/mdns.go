package p2p

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/zeroconf/v2"
	ma "github.com/multiformats/go-multiaddr"
)

// lanDiscovery is go-libp2p's mDNS service with our own query schedule (docs/design.md 6.3): the responder is
// always on, but the browser queries often only while joining (at start, or cut off) and otherwise at random
// intervals growing with the fleet, since every query makes every responder of the LAN answer by multicast
// to every host: libp2p's perpetual browse (every 60 s per host) cost each host N^2/60 s responses.
type lanDiscovery struct {
	h       host.Host
	service string
	server  *zeroconf.Server
	found   func(peer.AddrInfo)
	state   func() browseState // connected peers and members known, read after each round
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

const (
	mdnsDomain    = "local"
	dnsaddrPrefix = "dnsaddr="
	// browseRound is how long one query round listens: zeroconf sends its first query at once and the next after
	// 4 s, so a round sends one query; answers come within milliseconds.
	browseRound = 3 * time.Second
	// joinPhase: after start, rounds are fast (fastWait) until the node has dialBelow peers or this has passed.
	joinPhase = 2 * time.Minute
	// fastFirst and fastMax: while joining, waits double from fastFirst up to fastMax (zeroconf's own schedule:
	// 4 s growing 1.5-2.5x up to 60 s), so a host cut off for good costs the LAN what one host cost before.
	fastFirst = 4 * time.Second
	fastMax   = 60 * time.Second
	// steadyMin and steadyPerMember: in steady state a host waits uniform [0.5, 1.5] x max(steadyMin,
	// members x steadyPerMember), so the whole LAN sends about 60 s / steadyPerMember = 4 queries a minute.
	steadyMin       = 60 * time.Second
	steadyPerMember = 15 * time.Second
	// cutOffPoll is how often a steady wait checks whether the node was cut off (no peer connected).
	cutOffPoll = 5 * time.Second
)

// browseState is what the schedule reads: time since start, connected peers, the dial threshold, members known.
type browseState struct {
	sinceStart time.Duration
	connected  int
	dialBelow  int
	members    int
}

// browseWait is the wait before the next query round: fast (the fast-th consecutive fast round, from 0) while
// the node is joining (within joinPhase of start with fewer than dialBelow peers) or cut off (no peer); else
// steady, uniform [0.5, 1.5) x max(steadyMin, members x steadyPerMember). u is uniform in [0, 1).
func browseWait(s browseState, fast int, u float64) (wait time.Duration, isFast bool) {
	if s.connected == 0 || (s.sinceStart < joinPhase && s.connected < s.dialBelow) {
		w := fastMax
		if fast < 4 { // 4, 8, 16, 32 s, then 60 s
			w = min(fastMax, fastFirst<<fast)
		}
		return time.Duration(float64(w) * (0.75 + u/2)), true
	}
	mean := max(steadyMin, time.Duration(s.members)*steadyPerMember)
	return time.Duration(float64(mean) * (0.5 + u)), false
}

// startLANDiscovery registers the responder (TXT dnsaddr records of the host's listen addresses, as libp2p's
// mDNS service does, so the two interoperate) and starts the browse loop.
func startLANDiscovery(h host.Host, service string, found func(peer.AddrInfo), state func() browseState) (*lanDiscovery, error) {
	l := &lanDiscovery{h: h, service: service, found: found, state: state}
	if err := l.startServer(); err != nil {
		return nil, err
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Go(l.browseLoop)
	return l, nil
}

func (l *lanDiscovery) startServer() error {
	listen, err := l.h.Network().InterfaceListenAddresses()
	if err != nil {
		return err
	}
	var txts, ips []string
	var ip4, ip6 bool
	for _, a := range listen {
		first, _ := ma.SplitFirst(a)
		if first == nil || !mdnsSuitable(a) {
			continue
		}
		switch first.Protocol().Code {
		case ma.P_IP4:
			if !ip4 {
				ips, ip4 = append(ips, first.Value()), true
			}
		case ma.P_IP6:
			if !ip6 {
				ips, ip6 = append(ips, first.Value()), true
			}
		}
		txts = append(txts, dnsaddrPrefix+a.Encapsulate(ma.StringCast("/p2p/"+l.h.ID().String())).String())
	}
	if len(ips) == 0 {
		return errors.New("no IP address to announce")
	}
	name := randomName()
	// The port is required but unused: libp2p reads only the TXT records.
	l.server, err = zeroconf.RegisterProxy(name, l.service, mdnsDomain, 4001, name, ips, txts, nil)
	return err
}

// mdnsSuitable mirrors libp2p's filter: IP addresses of transports a LAN peer dials directly.
func mdnsSuitable(a ma.Multiaddr) bool {
	first, _ := ma.SplitFirst(a)
	if first == nil || (first.Protocol().Code != ma.P_IP4 && first.Protocol().Code != ma.P_IP6) {
		return false
	}
	ok := true
	ma.ForEach(a, func(c ma.Component) bool {
		switch c.Protocol().Code {
		case ma.P_CIRCUIT, ma.P_WEBTRANSPORT, ma.P_WEBRTC, ma.P_WEBRTC_DIRECT, ma.P_P2P_WEBRTC_DIRECT, ma.P_WS, ma.P_WSS:
			ok = false
		}
		return ok
	})
	return ok
}

func randomName() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 32+rand.IntN(32))
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}

// browseLoop runs query rounds on browseWait's schedule until closed; a steady wait ends early when the node
// is cut off.
func (l *lanDiscovery) browseLoop() {
	fast := 0
	poll := time.NewTimer(0)
	defer poll.Stop()
	for l.ctx.Err() == nil {
		l.browse()
		wait, isFast := browseWait(l.state(), fast, rand.Float64())
		if isFast {
			fast++
		} else {
			fast = 0
		}
		end := time.Now().Add(wait)
		for left := wait; left > 0; left = time.Until(end) {
			poll.Reset(min(left, cutOffPoll))
			select {
			case <-l.ctx.Done():
				return
			case <-poll.C:
			}
			if !isFast && l.state().connected == 0 {
				break
			}
		}
	}
}

// browse sends one query and hands every announced peer to found until browseRound has passed.
func (l *lanDiscovery) browse() {
	ctx, cancel := context.WithTimeout(l.ctx, browseRound)
	defer cancel()
	entries := make(chan *zeroconf.ServiceEntry, 64)
	returned, done := make(chan struct{}), make(chan struct{})
	// zeroconf closes entries when its receive loop ends, but not when it fails to open its sockets; and the loop
	// blocks on a full channel, so entries are read while Browse runs and drained once it has returned.
	go func() {
		defer close(done)
		for {
			var e *zeroconf.ServiceEntry
			ok := true
			select {
			case e, ok = <-entries:
			case <-returned: // nothing more is written: take what is buffered, then stop
				select {
				case e, ok = <-entries:
				default:
					return
				}
			}
			if !ok {
				return
			}
			l.entry(e)
		}
	}()
	_ = zeroconf.Browse(ctx, l.service, mdnsDomain, entries) // no multicast interface: retried next round
	close(returned)
	<-done
}

// entry parses an announcement's dnsaddr TXT records, as libp2p's service does.
func (l *lanDiscovery) entry(e *zeroconf.ServiceEntry) {
	addrs := make([]ma.Multiaddr, 0, len(e.Text))
	for _, s := range e.Text {
		if a, ok := strings.CutPrefix(s, dnsaddrPrefix); ok {
			if m, err := ma.NewMultiaddr(a); err == nil {
				addrs = append(addrs, m)
			}
		}
	}
	infos, err := peer.AddrInfosFromP2pAddrs(addrs...)
	if err != nil {
		return
	}
	for _, ai := range infos {
		if ai.ID != l.h.ID() {
			l.found(ai)
		}
	}
}

func (l *lanDiscovery) Close() error {
	l.cancel()
	l.server.Shutdown()
	l.wg.Wait()
	return nil
}
