package p2p

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// IdentityFile is the name of the host's private key file in Config.DataDir.
const IdentityFile = "identity.key"

// DefaultMDNSService is the mDNS service name fleet members announce and browse.
const DefaultMDNSService = "_npu-agent._udp"

// Config configures a Node's libp2p host and trust policy.
type Config struct {
	// DataDir holds the identity key (IdentityFile, created 0600 on first start) and the record log.
	DataDir string
	// ListenAddrs are TCP and QUIC multiaddrs. QUIC addresses are dropped when FleetKey is set (pnet is TCP only)
	// and kept with an Authority.
	ListenAddrs []ma.Multiaddr
	// StaticPeers are dialled at start and redialled while disconnected; each must end in /p2p/<id>.
	StaticPeers []ma.Multiaddr
	// MDNS enables LAN discovery under MDNSService (DefaultMDNSService when empty).
	MDNS        bool
	MDNSService string
	// FleetKey is a pnet pre-shared key (pnet.DecodeV1PSK's format, see ReadFleetKey). Nil: no private network,
	// and then no blob is served to peers unless ServeWithoutFleetKey is set.
	FleetKey pnet.PSK
	// ServeWithoutFleetKey serves chunks to any host that connects when no FleetKey is set: single-machine tests
	// and demos only. The daemon never sets it.
	ServeWithoutFleetKey bool
	// Authority, when set (instead of FleetKey), is the fleet authority's ed25519 public key: peers prove
	// membership at connection setup with a certificate it signed (6.2, proof.go), and blobs are served to
	// proven members. MemberCert is this host's certificate (binary, see ReadPEMFile); RevocationsFile, when
	// set, is the operator's revocation list file, re-read when it changes; ProofTimeout bounds a proof (0:
	// DefaultProofTimeout).
	Authority       ed25519.PublicKey
	MemberCert      []byte
	RevocationsFile string
	ProofTimeout    time.Duration
	// Allowlist, when non-empty, is the only peers allowed to connect (either direction).
	Allowlist []peer.ID
	// TrustedProducers, when non-empty, is the only producers whose records are used; empty trusts any member.
	TrustedProducers []peer.ID
	// AllowLoopback advertises and dials loopback addresses: single-machine tests and demos only.
	AllowLoopback bool
	// OnBadChunk is called for every chunk a peer sent that did not match its CID (metrics); nil: nothing.
	OnBadChunk func(from peer.ID)
	// Registerer receives libp2p's own metrics (swarm, identify, ...) beside the agent's; nil disables them.
	Registerer prometheus.Registerer

	// Hostname, Class and Tags go into this node's member record (6.2); printable ASCII, at most 64, 128 and
	// 16 × 64 bytes.
	Hostname string
	Class    string
	Tags     []string
	// Version is this node's npu-agent version, for its member record: printable ASCII, at most 64 bytes.
	Version string
	// MemberRefresh is how often the member record is republished (0: DefaultMemberRefresh); a member not heard
	// for 3 × MemberRefresh is forgotten.
	MemberRefresh time.Duration
	// MinPeers: while fewer peers are connected, random known members are dialled (0: 8; negative: never).
	MinPeers int
	// HoldFill keeps the overlay fill (and so the bootstrap peers' retirement) from running until
	// Node.ReleaseFill: the simulation harness's switch to draw the fill from complete tables (fleetsim's late
	// fill, benchmarks.md). Tests and the harness only; the daemon leaves it false.
	HoldFill bool
	// ConnLow and ConnHigh are the connection manager's water marks: past ConnHigh connections, the least
	// useful are closed down to ConnLow (0: DefaultConnLow, DefaultConnHigh).
	ConnLow, ConnHigh int
}

// Connection manager defaults (6.1).
const (
	DefaultConnLow   = 32
	DefaultConnHigh  = 64
	connGracePeriod  = 30 * time.Second
	staticProtectTag = "npu-agent-static"
)

// DefaultConfig returns the defaults: all interfaces on port 4801 (the port of config's p2p.listen default) over TCP
// and QUIC, mDNS on. The daemon replaces ListenAddrs with p2p.listen.
func DefaultConfig(dataDir string) Config {
	return Config{
		DataDir: dataDir,
		ListenAddrs: []ma.Multiaddr{
			ma.StringCast("/ip4/0.0.0.0/tcp/4801"),
			ma.StringCast("/ip6/::/tcp/4801"),
			ma.StringCast("/ip4/0.0.0.0/udp/4801/quic-v1"),
			ma.StringCast("/ip6/::/udp/4801/quic-v1"),
		},
		MDNS:        true,
		MDNSService: DefaultMDNSService,
	}
}

// ReadFleetKey reads a fleet key file in the go-libp2p/ipfs "swarm.key" v1 format.
func ReadFleetKey(path string) (pnet.PSK, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read fleet key: %w", err)
	}
	defer f.Close()
	psk, err := pnet.DecodeV1PSK(f)
	if err != nil {
		return nil, fmt.Errorf("read fleet key %s: %w", path, err)
	}
	return psk, nil
}

// WriteFleetKey creates a new random fleet key at path in the v1 format ReadFleetKey reads (base16), mode 0640
// (readable by the daemon's group), never replacing an existing file. Every member gets a copy of the same file.
func WriteFleetKey(path string) error {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return fmt.Errorf("fleet key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("fleet key: %w", err)
	}
	_, err = fmt.Fprintf(f, "/key/swarm/psk/1.0.0/\n/base16/\n%x\n", key[:])
	if err == nil {
		err = f.Chmod(0o640) // whatever the umask
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("fleet key: %w", err)
	}
	return nil
}

// ReadPeerID returns the peer ID of the identity in dataDir without creating one (fs.ErrNotExist before the
// daemon's first start).
func ReadPeerID(dataDir string) (peer.ID, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, IdentityFile))
	if err != nil {
		return "", fmt.Errorf("read identity key: %w", err)
	}
	k, err := crypto.UnmarshalPrivateKey(b)
	if err != nil {
		return "", fmt.Errorf("identity key: %w", err)
	}
	return peer.IDFromPrivateKey(k)
}

// loadIdentity reads the host key from dir, creating an Ed25519 key (mode 0600) on first start.
func loadIdentity(dir string, log *slog.Logger) (crypto.PrivKey, error) {
	path := filepath.Join(dir, IdentityFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("identity key is readable by others", "path", path, "mode", fi.Mode().Perm())
		}
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("identity key %s: %w", path, err)
		}
		return k, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("read identity key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate identity key: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode identity key: %w", err)
	}
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write identity key: %w", err)
	}
	log.Info("created identity key", "path", path)
	return k, nil
}

// usableAddr reports whether a is worth advertising to or dialling on another host.
func usableAddr(a ma.Multiaddr, allowLoopback bool) bool {
	if manet.IsIPUnspecified(a) || manet.IsIP6LinkLocal(a) {
		return false
	}
	return allowLoopback || !manet.IsIPLoopback(a)
}

func filterAddrs(addrs []ma.Multiaddr, allowLoopback bool) []ma.Multiaddr {
	out := make([]ma.Multiaddr, 0, len(addrs))
	for _, a := range addrs {
		if usableAddr(a, allowLoopback) {
			out = append(out, a)
		}
	}
	return out
}

// gater admits only allowlisted peers (when an allowlist is set), checked at dial and again after the
// security handshake has authenticated the remote peer ID; it never dials unusable addresses. With a fleet
// authority it also refuses revoked peers and peers whose membership proof failed recently.
type gater struct {
	allow         map[peer.ID]bool // nil: any peer holding the fleet key
	allowLoopback bool
	refuse        func(peer.ID) bool // nil: none
}

func (g *gater) allowed(p peer.ID) bool {
	return (g.allow == nil || g.allow[p]) && (g.refuse == nil || !g.refuse(p))
}

func (g *gater) InterceptPeerDial(p peer.ID) bool { return g.allowed(p) }

func (g *gater) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	return g.allowed(p) && usableAddr(a, g.allowLoopback)
}

func (g *gater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.allowed(p)
}

func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// resourceLimits raises the default limits for the chunk protocol so that a few concurrent fetches with several
// requests in flight each, and yamux windows large enough for a GB/s link, fit.
func resourceLimits() rcmgr.ConcreteLimitConfig {
	cfg := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&cfg)
	cfg.AddProtocolLimit(ChunkProtocol,
		rcmgr.BaseLimit{StreamsInbound: 1024, StreamsOutbound: 1024, Streams: 2048, Memory: 256 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 256, StreamsOutbound: 256, Streams: 512, Memory: 128 << 20})
	cfg.AddProtocolPeerLimit(ChunkProtocol,
		rcmgr.BaseLimit{StreamsInbound: 128, StreamsOutbound: 128, Streams: 256, Memory: 128 << 20},
		rcmgr.BaseLimitIncrease{})
	return cfg.AutoScale()
}

// connBounds returns the connection manager's water marks, defaults applied.
func connBounds(cfg Config) (low, high int) {
	low, high = cfg.ConnLow, cfg.ConnHigh
	if low <= 0 {
		low = DefaultConnLow
	}
	if high <= 0 {
		high = max(DefaultConnHigh, low)
	}
	return low, high
}

// newHost builds the libp2p host described by cfg; refuse (nil: none) is the fleet authority's gate.
func newHost(cfg Config, log *slog.Logger, refuse func(peer.ID) bool) (host.Host, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("p2p: config: DataDir is empty")
	}
	if len(cfg.FleetKey) != 0 && len(cfg.FleetKey) != 32 {
		return nil, fmt.Errorf("p2p: config: fleet key is %d bytes, want 32", len(cfg.FleetKey))
	}
	key, err := loadIdentity(cfg.DataDir, log)
	if err != nil {
		return nil, err
	}
	listen := cfg.ListenAddrs
	if len(cfg.FleetKey) > 0 {
		// The default and packaged listen lists name QUIC for fleets without a key; with one (the recommended
		// setup) dropping it is expected, so one INFO line, not a WARN on every start.
		var dropped []string
		listen = slices.DeleteFunc(slices.Clone(listen), func(a ma.Multiaddr) bool {
			if isQUIC(a) {
				dropped = append(dropped, a.String())
				return true
			}
			return false
		})
		if len(dropped) > 0 {
			log.Info("fleet key set: listening on TCP only (private networks do not work over QUIC)", "unused", dropped)
		}
	}
	if len(listen) == 0 {
		return nil, errors.New("p2p: config: no usable listen address")
	}
	var allow map[peer.ID]bool
	if len(cfg.Allowlist) > 0 {
		allow = make(map[peer.ID]bool, len(cfg.Allowlist))
		for _, p := range cfg.Allowlist {
			allow[p] = true
		}
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(resourceLimits()))
	if err != nil {
		return nil, fmt.Errorf("p2p: resource manager: %w", err)
	}
	low, high := connBounds(cfg)
	if high < low {
		return nil, fmt.Errorf("p2p: config: connection high water mark %d below low %d", high, low)
	}
	cm, err := connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(connGracePeriod))
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("p2p: connection manager: %w", err)
	}
	for _, a := range cfg.StaticPeers {
		if ai, err := peer.AddrInfoFromP2pAddr(a); err == nil {
			cm.Protect(ai.ID, staticProtectTag) // the bootstrap list stays connected until the fill retires it
		}
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrs(listen...),
		libp2p.ConnectionGater(&gater{allow: allow, allowLoopback: cfg.AllowLoopback, refuse: refuse}),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.AddrsFactory(func(as []ma.Multiaddr) []ma.Multiaddr { return filterAddrs(as, cfg.AllowLoopback) }),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(),
	}
	if cfg.Registerer != nil {
		opts = append(opts, libp2p.PrometheusRegisterer(cfg.Registerer))
	} else {
		opts = append(opts, libp2p.DisableMetrics())
	}
	if len(cfg.FleetKey) > 0 {
		opts = append(opts, libp2p.PrivateNetwork(cfg.FleetKey))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	if len(cfg.Authority) > 0 {
		opts = append(opts, libp2p.SwarmOpts(swarm.WithDialRanker(tcpFirst)))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		cm.Close()
		return nil, fmt.Errorf("p2p: start host: %w", err)
	}
	return h, nil
}

// quicDialDelay: with a fleet authority, QUIC addresses are dialled this long after TCP ones. Over loopback a
// bulk stream cost ~3 times the CPU per byte over QUIC as over TCP + TLS (6.2, BenchmarkMembershipStream), and
// the fleet is CPU-bound, so QUIC is the fallback for hosts TCP does not reach (libp2p's default dials QUIC first).
const quicDialDelay = 500 * time.Millisecond

func tcpFirst(addrs []ma.Multiaddr) []network.AddrDelay {
	out := make([]network.AddrDelay, 0, len(addrs))
	for _, a := range addrs {
		d := time.Duration(0)
		if isQUIC(a) {
			d = quicDialDelay
		}
		out = append(out, network.AddrDelay{Addr: a, Delay: d})
	}
	return out
}

func isQUIC(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_QUIC_V1)
	return err == nil
}

// discovery connects to static peers (redialled while disconnected) and to peers found by mDNS.
type discovery struct {
	h             host.Host
	log           *slog.Logger
	allowLoopback bool
	static        []peer.AddrInfo
	boot          *bootstrap // static peers are not redialled once retired
	mdns          *lanDiscovery

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex // guards closed against wg.Add racing wg.Wait (mDNS calls back from its own goroutines), and found
	closed bool
	found  map[peer.ID]foundPeer // mDNS peers, redialled while disconnected until they go unseen for foundTTL
	// staticConsidered: when a bridging dial of each retired static peer was last decided (bridgeStatic)
	staticConsidered map[peer.ID]time.Time
	// dialBelow: mDNS peers are dialled only while fewer peers are connected (or being dialled), so on a LAN of
	// more members than that mDNS does not connect every member to every other: membership needs no full mesh
	// (6.2), and each connection costs memory.
	dialBelow int
	dialing   int // mDNS dials under way, guarded by mu
	bridging  int // bridging dials under way (bridgeDials), guarded by mu
	// known reports whether a peer is in the membership table (nil without one: no bridging dials); members
	// counts the table, this node included.
	known   func(peer.ID) bool
	members func() int
	start   time.Time
	wg      sync.WaitGroup
}

type foundPeer struct {
	ai         peer.AddrInfo
	seen       time.Time
	considered time.Time // when a bridging dial was last decided for it (bridgeDials)
}

const (
	redialInterval = 10 * time.Second
	dialTimeout    = 10 * time.Second
	// foundTTL is how long a peer found by mDNS is redialled after it was last announced: a dial that failed
	// while the peer was starting (or a dropped connection) must not leave two members apart until the next
	// announcement.
	foundTTL = 10 * time.Minute
	// maxFoundPeers bounds what mDNS announcements (from anyone on the LAN) can make us remember.
	maxFoundPeers = 1024

	// bridgeDials: a member with its dialBelow peers still dials a peer it hears on mDNS but does not know as a
	// member, with probability bridgeDials / members known, deciding once per bridgeWindow per peer. When a LAN
	// split for longer than a member record lives is joined again, each half has forgotten the other, the overlay
	// fill dials only members it knows and every member has its peers: about bridgeDials × (the other half's
	// size) such dials join the halves, and one connection is enough (membership gossip does the rest). A newcomer
	// gets about bridgeDials dials more than it makes; a host that is not a member (another fleet on the LAN, a
	// forged announcement) costs each member at most one refused handshake per bridgeWindow, with that
	// probability, and maxBridging dials at once. Not while joining (joinPhase): then every announcement comes
	// before its member's record (design 6.3, 9.2).
	bridgeDials  = 2
	bridgeWindow = 10 * time.Minute
	maxBridging  = 2
	// staticBridgeWindow is bridgeWindow for a retired static peer (bridgeStatic): the operator's list, not what
	// anyone on the LAN can announce, so a split fleet rejoins sooner for a few more dials of a static peer gone.
	staticBridgeWindow = 2 * time.Minute
)

// members counts the members known (membership table), for mDNS's query schedule and bridging dials; known says
// whether a peer is one (nil without a table).
func startDiscovery(h host.Host, cfg Config, boot *bootstrap, members func() int, known func(peer.ID) bool, log *slog.Logger) (*discovery, error) {
	d := &discovery{h: h, log: log, allowLoopback: cfg.AllowLoopback, found: map[peer.ID]foundPeer{},
		staticConsidered: map[peer.ID]time.Time{}, boot: boot, known: known, members: members, start: time.Now()}
	// Every member of a LAN hears every other at once when they start: each dials half the overlay fill's target
	// and is dialled by about as many, so the overlay's degree stays near MinPeers: each connection costs memory,
	// and a denser overlay pushed gossipsub meshes past their prune mark (peer exchange, now off, then churned
	// connections above conn_high).
	d.dialBelow, _ = connBounds(cfg)
	if cfg.MinPeers >= 0 {
		d.dialBelow = max(1, min(d.dialBelow, minPeers(cfg))/2)
	}
	for _, a := range cfg.StaticPeers {
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, fmt.Errorf("p2p: static peer %s: %w", a, err)
		}
		d.static = append(d.static, *ai)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if cfg.MDNS {
		name := cfg.MDNSService
		if name == "" {
			name = DefaultMDNSService
		}
		state := func() browseState {
			d.mu.Lock()
			found := len(d.found)
			d.mu.Unlock()
			// Without a membership table (no fleet key) the peers just announced stand for the fleet.
			return browseState{sinceStart: time.Since(d.start), connected: len(h.Network().Peers()),
				dialBelow: d.dialBelow, members: max(members(), found)}
		}
		var err error
		if d.mdns, err = startLANDiscovery(h, name, d.HandlePeerFound, state); err != nil {
			d.cancel()
			return nil, fmt.Errorf("p2p: start mDNS: %w", err)
		}
	}
	d.wg.Go(func() { d.keepConnected(d.ctx) })
	return d, nil
}

// HandlePeerFound is called by mDNS (lanDiscovery); another host's loopback addresses are never dialled.
func (d *discovery) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == d.h.ID() {
		return
	}
	ai.Addrs = filterAddrs(ai.Addrs, d.allowLoopback)
	if len(ai.Addrs) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if _, known := d.found[ai.ID]; !known && len(d.found) >= maxFoundPeers {
		return // any LAN host can announce: what it makes this node remember, dial or keep in the peerstore is bounded
	}
	now := time.Now()
	f := d.found[ai.ID]
	f.ai, f.seen = ai, now
	bridge := false
	// Dials under way count: a burst of announcements (every host of a LAN starting at once) must not dial all.
	full := len(d.h.Network().Peers())+d.dialing >= d.dialBelow
	if full {
		bridge = d.bridge(ai.ID, &f.considered, now, mrand.Float64(), bridgeWindow)
	}
	d.found[ai.ID] = f
	if full && !bridge {
		d.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, foundTTL) // dialable later, by a fetch or the overlay fill
		return
	}
	under := &d.dialing // the dials under way that this one counts in
	if bridge {
		under = &d.bridging
		d.log.Debug("mDNS: dialling a peer not known as a member", "peer", ai.ID)
	}
	*under++
	d.wg.Go(func() {
		defer func() {
			d.mu.Lock()
			*under--
			d.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(d.ctx, dialTimeout)
		defer cancel()
		if err := d.h.Connect(ctx, ai); err != nil {
			d.log.Debug("mDNS peer unreachable", "peer", ai.ID, "err", err)
		}
	})
}

// bridge decides, for a peer announced while this node has its dialBelow peers, whether to dial it anyway
// (bridgeDials), once per window; u is uniform in [0, 1). d.mu is held; *considered, the peer's last decision
// time, is updated.
func (d *discovery) bridge(id peer.ID, considered *time.Time, now time.Time, u float64, window time.Duration) bool {
	if d.known == nil || d.known(id) || d.bridging >= maxBridging || d.h.Network().Connectedness(id) == network.Connected {
		return false
	}
	if now.Sub(d.start) < joinPhase {
		return false // joining: every announcement precedes its record, and the ordinary dials join this node
	}
	if !considered.IsZero() && now.Sub(*considered) < window {
		return false
	}
	*considered = now
	return u < bridgeDials/float64(max(1, d.members()))
}

// keepConnected redials static peers (until the overlay fill retires them; then only as bridging dials) and
// recently announced mDNS peers while they are disconnected.
func (d *discovery) keepConnected(ctx context.Context) {
	t := time.NewTicker(redialInterval)
	defer t.Stop()
	for {
		d.redial(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.boot.redial:
		}
	}
}

// redial dials, one after the other, the static and mDNS peers keepConnected keeps connected.
func (d *discovery) redial(ctx context.Context) {
	for i, ai := range d.targets() { // static peers first
		static := i < len(d.static)
		if d.h.Network().Connectedness(ai.ID) == network.Connected || (!static && d.full()) {
			continue
		}
		bridging := static && !d.boot.holds(ai.ID)
		if bridging && !d.bridgeStatic(ai.ID, time.Now(), mrand.Float64()) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, dialTimeout)
		if err := d.h.Connect(cctx, ai); err != nil && ctx.Err() == nil {
			d.log.Debug("peer unreachable", "peer", ai.ID, "err", err)
		}
		cancel()
		if bridging {
			d.mu.Lock()
			d.bridging--
			d.mu.Unlock()
		}
	}
}

// bridgeStatic decides a bridging dial of a retired static peer, as bridge does for an mDNS peer: a fleet joined
// by static peers alone hears no announcements, and after a LAN split its halves would stay apart (design 6.3).
// A dial it allows counts in bridging until the caller is done.
func (d *discovery) bridgeStatic(id peer.ID, now time.Time, u float64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	considered := d.staticConsidered[id]
	ok := d.bridge(id, &considered, now, u, staticBridgeWindow)
	d.staticConsidered[id] = considered
	if ok {
		d.bridging++
		d.log.Debug("dialling a static peer not known as a member", "peer", id)
	}
	return ok
}

// full reports whether enough peers are connected that mDNS peers are not dialled.
func (d *discovery) full() bool { return len(d.h.Network().Peers()) >= d.dialBelow }

// targets are the static peers plus the mDNS peers announced within foundTTL (older ones are forgotten).
func (d *discovery) targets() []peer.AddrInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := slices.Clone(d.static)
	for id, f := range d.found {
		if time.Since(f.seen) > foundTTL {
			delete(d.found, id)
			continue
		}
		out = append(out, f.ai)
	}
	return out
}

func (d *discovery) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	if d.mdns != nil {
		d.mdns.Close()
	}
	d.wg.Wait()
}
