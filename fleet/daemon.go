package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/metrics"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/p2p/flight"
	"github.com/npu-agent/npu-agent/rollout"
)

// configError marks errors in the config file's p2p section as config.ErrInvalid. The errors read as before;
// only errors.Is sees the mark.
type configError struct{ error }

func (e configError) Unwrap() error        { return e.error }
func (e configError) Is(target error) bool { return target == config.ErrInvalid }

// Fleet is the daemon's libp2p side: the node, the fleet single flight on its pubsub (transport and
// coordinator), the rollout channels and the peer gauge. It is the agent's Fleet. New starts the node; Run
// runs the rest and, when its context ends, closes everything in order.
type Fleet struct {
	node     *p2p.Node
	tr       *flight.PubSubTransport
	coord    *flight.Coordinator
	rollouts *RolloutChannels
	rank     int
	metrics  *metrics.Metrics
	log      *slog.Logger
	stop     func() // stops waking flights on new records
}

// CheckConfig reports every problem of the config file's p2p section at once, as the daemon would meet them, and
// opens nothing. The errors are config.ErrInvalid.
func CheckConfig(cfg config.Config) error {
	_, err := p2pConfig(cfg)
	return err
}

// p2pConfig translates the config file's p2p section; the error joins every problem found.
func p2pConfig(cfg config.Config) (p2p.Config, error) {
	pc := p2p.DefaultConfig(cfg.DataDir)
	pc.MDNS, pc.AllowLoopback = cfg.P2P.MDNS, cfg.P2P.AllowLoopback
	pc.ConnLow, pc.ConnHigh = cfg.P2P.ConnLow, cfg.P2P.ConnHigh
	var errs []error
	var err error
	if pc.ListenAddrs, err = multiaddrs("p2p.listen", cfg.P2P.Listen); err != nil {
		errs = append(errs, err)
	}
	if pc.StaticPeers, err = multiaddrs("p2p.peers", cfg.P2P.Peers); err != nil {
		errs = append(errs, err)
	}
	if cfg.P2P.FleetKeyFile != "" {
		if pc.FleetKey, err = p2p.ReadFleetKey(cfg.P2P.FleetKeyFile); err != nil {
			errs = append(errs, configError{fmt.Errorf("p2p.fleet_key_file: %w", err)})
		}
	}
	if cfg.P2P.FleetAuthority != "" {
		if pc.Authority, err = rollout.ParsePublicKey(cfg.P2P.FleetAuthority); err != nil {
			errs = append(errs, configError{fmt.Errorf("p2p.fleet_authority: %w", err)})
		}
		pc.RevocationsFile = cfg.P2P.RevocationsFile
	}
	if cfg.P2P.MemberCertFile != "" {
		if pc.MemberCert, err = p2p.ReadPEMFile(cfg.P2P.MemberCertFile, true); err != nil {
			errs = append(errs, configError{fmt.Errorf("p2p.member_cert_file: %w", err)})
		} else if pc.Authority != nil {
			errs = append(errs, checkMemberCert(cfg, pc))
		}
	}
	if cfg.P2P.RevocationsFile != "" && pc.Authority != nil {
		if b, err := p2p.ReadPEMFile(cfg.P2P.RevocationsFile, false); err == nil {
			if _, err := p2p.DecodeRevocations(b, pc.Authority); err != nil {
				errs = append(errs, configError{fmt.Errorf("p2p.revocations_file: %w", err)})
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, configError{fmt.Errorf("p2p.revocations_file: %w", err)})
		}
	}
	if pc.Allowlist, err = peerIDs("p2p.allowlist", cfg.P2P.Allowlist); err != nil {
		errs = append(errs, err)
	}
	if pc.TrustedProducers, err = peerIDs("p2p.trusted_producers", cfg.P2P.TrustedProducers); err != nil {
		errs = append(errs, err)
	}
	return pc, errors.Join(errs...)
}

// checkMemberCert checks the member certificate against the authority and, once the daemon has an identity, its
// peer ID and validity now: a certificate that no member would accept is a config error.
func checkMemberCert(cfg config.Config, pc p2p.Config) error {
	c, err := p2p.DecodeCert(pc.MemberCert, pc.Authority)
	if err != nil {
		return configError{fmt.Errorf("p2p.member_cert_file: %w", err)}
	}
	id, err := p2p.ReadPeerID(cfg.DataDir)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
		return nil // no identity yet (created at first start), or not ours to read: the daemon logs a mismatch
	}
	if err != nil {
		return configError{fmt.Errorf("p2p.member_cert_file: %w", err)}
	}
	if _, err := p2p.VerifyCert(c.Raw, pc.Authority, id, time.Now(), nil); err != nil {
		return configError{fmt.Errorf("p2p.member_cert_file: this host is %s: %w", id, err)}
	}
	return nil
}

// memberText reports whether s fits a member record's hostname or version: printable ASCII without spaces, at
// most 64 bytes.
func memberText(s string) bool {
	return len(s) <= 64 && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' })
}

func multiaddrs(key string, ss []string) ([]ma.Multiaddr, error) {
	out := make([]ma.Multiaddr, 0, len(ss))
	var errs []error
	for _, s := range ss {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			errs = append(errs, configError{fmt.Errorf("%s: %q: %w", key, s, err)})
			continue
		}
		out = append(out, a)
	}
	return out, errors.Join(errs...)
}

func peerIDs(key string, ss []string) ([]peer.ID, error) {
	out := make([]peer.ID, 0, len(ss))
	var errs []error
	for _, s := range ss {
		id, err := peer.Decode(s)
		if err != nil {
			errs = append(errs, configError{fmt.Errorf("%s: %q is not a peer ID: %w", key, s, err)})
			continue
		}
		out = append(out, id)
	}
	return out, errors.Join(errs...)
}

// New starts the node and prepares the fleet single flight and the rollout channels; Run must follow, and it
// closes them. Errors in cfg's p2p section are config.ErrInvalid; reg, m and log may be nil. version (this build's)
// goes into the member record. The new records the node hears wake waiting flights.
func New(ctx context.Context, cfg config.Config, store blobstore.Store, host compat.Fingerprint, version string,
	reg prometheus.Registerer, m *metrics.Metrics, log *slog.Logger) (*Fleet, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pc, err := p2pConfig(cfg)
	if err != nil {
		return nil, err
	}
	pc.Registerer = reg
	// The member record (6.2): hostname, version and class, when they fit its rules.
	if h, err := os.Hostname(); err == nil && memberText(h) {
		pc.Hostname = h
	}
	if memberText(version) {
		pc.Version = version
	}
	if class, err := compat.Class(compat.DefaultRules(), host, ""); err == nil && len(class) <= 128 {
		pc.Class = class
	}
	// The rollout tags (name=value, validated by config check) say where the member is; at most 16 fit.
	pc.Tags = cfg.Rollout.Tags[:min(len(cfg.Rollout.Tags), 16)]
	pc.OnBadChunk = func(from peer.ID) {
		m.ChunkRejected()
		log.Warn("rejected a chunk that does not match its CID", "peer", from)
	}
	node, err := p2p.New(ctx, pc, store, log)
	if err != nil {
		return nil, err
	}
	tr, err := flight.NewPubSubTransport(node.PubSub(), node.ID())
	if err != nil {
		return nil, errors.Join(err, node.Close())
	}
	coord, err := flight.New(tr, flight.Config{Window: cfg.Flight.Window, LeaseTTL: cfg.Flight.LeaseTTL,
		Deadline: cfg.Flight.Deadline, Logger: log.With("component", "flight")})
	if err != nil {
		return nil, errors.Join(err, tr.Close(), node.Close())
	}
	f := &Fleet{node: node, tr: tr, coord: coord, rollouts: newRolloutChannels(node), rank: Rank(host), metrics: m, log: log}
	f.stop = node.OnRecord(func(p2p.SignedRecord) { coord.Notify() })
	log.Info("fleet node running", "peer_id", node.ID(), "addrs", node.Host().Addrs())
	return f, nil
}

// Run runs the coordinator and the peer gauge until ctx ends or the coordinator fails, then stops waking
// flights and closes the transport and the node, in that order. The rollout channels close with the node.
func (f *Fleet) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return f.coord.Run(ctx) })
	g.Go(func() error {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			f.metrics.SetPeers(len(f.node.Peers()))
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	err := g.Wait()
	f.stop()
	return errors.Join(err, f.tr.Close(), f.node.Close())
}

// RolloutNet is the rollout engine's Net on this node; the engine opens its channels.
func (f *Fleet) RolloutNet() *RolloutChannels { return f.rollouts }

// PeersRefused counts peers rejected for their membership proof (npu_agent_peers_refused_total).
func (f *Fleet) PeersRefused() int64 { return f.node.PeersRefused() }

// ChunksServed counts the chunks sent to peers (npu_agent_chunks_served_total).
func (f *Fleet) ChunksServed() int64 { return f.node.ChunksServed() }

// ID is this member's peer ID, the producer of its records.
func (f *Fleet) ID() string { return f.node.ID().String() }

// PeerServing is api.Status.PeerServing: "fleet" when blobs are served to fleet members, else why not.
func (f *Fleet) PeerServing() string {
	if f.node.ServesBlobs() {
		return "fleet"
	}
	return "off: no fleet key"
}

// PeerHostname is the hostname the member record of the peer named id announces ("" when none or not a peer ID).
func (f *Fleet) PeerHostname(id string) string {
	p, err := peer.Decode(id)
	if err != nil {
		return ""
	}
	return f.node.MemberHostname(p)
}

// APIPeers lists connected members for status and peers.
func (f *Fleet) APIPeers() []api.Peer {
	byProducer := map[string]int{}
	for _, r := range f.node.Records("", "") {
		byProducer[r.Producer]++
	}
	self := f.node.ID()
	byID := map[peer.ID]*api.Peer{}
	var order []peer.ID
	get := func(id peer.ID) *api.Peer {
		if p, ok := byID[id]; ok {
			return p
		}
		p := &api.Peer{ID: id.String(), Records: byProducer[id.String()]}
		byID[id] = p
		order = append(order, id)
		return p
	}
	addAddr := func(p *api.Peer, a string) {
		if !slices.Contains(p.Addrs, a) {
			p.Addrs = append(p.Addrs, a)
		}
	}
	// Every member the table knows (connected or not), then connected peers that sent no member record.
	for _, m := range f.node.Members() {
		if m.ID == self {
			continue
		}
		p := get(m.ID)
		p.Hostname, p.Class, p.Tags, p.Version = m.Hostname, m.Class, m.Tags, m.Version
		if m.Seq > 0 && m.Seq <= math.MaxInt64 {
			p.Seen = time.Unix(0, int64(m.Seq)).UTC()
		}
		for _, a := range m.Addrs {
			addAddr(p, a.String())
		}
	}
	for _, c := range f.node.Peers() {
		p := get(c.ID)
		p.Connected = true
		for _, a := range c.Addrs {
			addAddr(p, a.String())
		}
	}
	out := make([]api.Peer, 0, len(order))
	for _, id := range order {
		out = append(out, *byID[id])
	}
	return out
}
