// Package p2p shares blobs and signed records with fleet peers over libp2p: a host restricted to fleet members,
// LAN discovery, signed records gossiped and pulled on connect, a chunk-exchange protocol, and a swarm fetch
// that pulls one blob's chunks from many peers at once. docs/design.md section 6 is normative.
package p2p

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/flightgroup"
)

// Gossipsub drops messages published while a new peer's streams are still being set up, so records are also
// pulled: on connect, again joinSettle after the peer joins the record topic, and from one random peer every
// antiEntropyInterval.
const (
	joinSettle          = time.Second
	antiEntropyInterval = time.Minute
)

// Node is a fleet member: a libp2p host serving the local store's chunks and exchanging records.
type Node struct {
	h     host.Host
	ps    *pubsub.PubSub
	topic *pubsub.Topic
	sub   *pubsub.Subscription
	store blobstore.ChunkStore
	log   *slog.Logger
	book  *recordBook
	disc  *discovery
	boot  *bootstrap // the static peers, until the overlay fill retires them (members.go)
	srv   *server
	fp    fetchParams
	// onBadChunk is Config.OnBadChunk (never nil).
	onBadChunk func(from peer.ID)

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// flights shares one transfer among concurrent Fetch calls of a blob (fetch.go).
	flights flightgroup.Group[cid.Cid, *flight, struct{}]
	// transferDial, if set, replaces the host's Connect in dialForTransfer (tests count the dials).
	transferDial func(context.Context, peer.ID) error

	mu      sync.Mutex
	closed  bool
	syncing map[peer.ID]bool
	scores  map[peer.ID]int
	// serving: the chunk protocol is registered (a fleet key is set, or ServeWithoutFleetKey).
	serving bool
	// allow is Config.Allowlist; seen holds the peers this node has been connected to (at most maxSeen).
	allow map[peer.ID]bool
	seen  map[peer.ID]time.Time
	// members is the membership table and our member record (members.go); fleetKey says whether its records
	// carry a proof of the key (then a live member record makes its peer a Member).
	members       *members
	fleetKey      bool
	allowLoopback bool
	// mb proves peers' member certificates when a fleet authority is set (proof.go); nil otherwise.
	mb *membership
}

// ServesBlobs reports whether the node serves chunks to peers: only with a fleet key or authority (or
// Config.ServeWithoutFleetKey).
func (n *Node) ServesBlobs() bool { return n.serving }

// PeersRefused counts the peers this node rejected for a missing or invalid membership proof since it started
// (fleet authority only; metrics).
func (n *Node) PeersRefused() int64 {
	if n.mb == nil {
		return 0
	}
	return n.mb.refused.Load()
}

// ChunksServed counts the chunks this node sent to peers since it started (metrics).
func (n *Node) ChunksServed() int64 { return n.srv.served.Load() }

// maxSeen bounds the peers Member remembers after they disconnect.
const maxSeen = 4096

func (n *Node) met(p peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	stamp(n.seen, p, time.Now(), maxSeen)
}

// Member reports whether p counts as a fleet member for documents it signs (status reports): with an allowlist,
// p is on it; without one, p is this node or a peer it has been connected to since it started (holding a
// connection means holding the fleet key, when one is set). A document signed by a key no member holds (a
// throwaway identity whose reports a member relays) is not counted.
func (n *Node) Member(p peer.ID) bool {
	if p == n.h.ID() {
		return true
	}
	if len(n.allow) > 0 {
		return n.allow[p]
	}
	if n.mb != nil {
		return n.mb.member(p) // a connection alone proves nothing before the certificate
	}
	if n.h.Network().Connectedness(p) == network.Connected {
		return true
	}
	if n.fleetKey && n.members != nil && n.members.book.live(p, time.Now()) {
		return true // its record carries the fleet key's proof for its identity, as a connection would
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.seen[p]
	return ok
}

// PeerInfo describes a connected peer.
type PeerInfo struct {
	ID             peer.ID        `json:"id"`
	Addrs          []ma.Multiaddr `json:"addrs"`
	ConnectedSince time.Time      `json:"connected_since"`
	// Score starts at 0, drops when the peer fails or sends bad data and rises as it serves chunks; fetches
	// prefer high scores.
	Score int `json:"score"`
}

// New starts a node: the host, discovery, the record book (loaded from cfg.DataDir), gossip and the protocol
// handlers. ctx only bounds the start; Close stops the node.
func New(ctx context.Context, cfg Config, store blobstore.ChunkStore, log *slog.Logger) (*Node, error) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "p2p")
	var mb *membership
	var refuse func(peer.ID) bool
	if cfg.Authority != nil {
		var err error
		if mb, err = newMembership(cfg, log); err != nil {
			return nil, err
		}
		refuse = mb.refuse
	}
	h, err := newHost(cfg, log, refuse)
	if err != nil {
		return nil, err
	}
	return newNode(ctx, cfg, h, mb, store, log)
}

// NewOnHost starts a node on a host built elsewhere (simulations on libp2p's mocknet); cfg's fields that build a
// host (listen addresses, fleet key transport, gater, resource and connection managers) are not applied, but
// FleetKey still makes member records carry and require its proof. The node closes h when it closes.
func NewOnHost(ctx context.Context, cfg Config, h host.Host, store blobstore.ChunkStore, log *slog.Logger) (*Node, error) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "p2p")
	var mb *membership
	if cfg.Authority != nil {
		var err error
		if mb, err = newMembership(cfg, log); err != nil {
			h.Close()
			return nil, err
		}
	}
	return newNode(ctx, cfg, h, mb, store, log)
}

// newNode starts a node on h; with a fleet authority (mb set) the node and everything on Host() see h through
// gatedHost, so no stream reaches or leaves for an unproven peer.
func newNode(ctx context.Context, cfg Config, h host.Host, mb *membership, store blobstore.ChunkStore, log *slog.Logger) (*Node, error) {
	if mb != nil {
		mb.start(h)
		h = gatedHost{Host: h, m: mb}
	}
	n := &Node{mb: mb,
		h: h, store: store, log: log, fp: defaultFetchParams, onBadChunk: cfg.OnBadChunk,
		syncing: map[peer.ID]bool{}, scores: map[peer.ID]int{}, seen: map[peer.ID]time.Time{},
		fleetKey: len(cfg.FleetKey) > 0, allowLoopback: cfg.AllowLoopback,
	}
	n.initFlights()
	if n.onBadChunk == nil {
		n.onBadChunk = func(peer.ID) {}
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.start(ctx, cfg); err != nil {
		n.Close()
		return nil, err
	}
	log.Info("p2p node started", "peer", h.ID(), "addrs", h.Addrs())
	return n, nil
}

func (n *Node) start(ctx context.Context, cfg Config) error {
	var err error
	trust := newTrustPolicy(n.h.ID(), cfg.TrustedProducers, cfg.Allowlist)
	if n.book, err = openRecordBook(filepath.Join(cfg.DataDir, RecordsFile), trust, n.log); err != nil {
		return err
	}
	n.srv = newServer(n.ctx, n.store, n.log)
	n.srv.holds = n.peerHolds // swarm_known.go: watches leave out what the watcher holds
	n.serving = len(cfg.FleetKey) > 0 || n.mb != nil || cfg.ServeWithoutFleetKey
	if n.serving {
		n.h.SetStreamHandler(ChunkProtocol, n.srv.handle)
	} else {
		n.log.Warn("no fleet key or fleet authority: blobs are not served to peers (any host could fetch them); " +
			"make a key with `npu-agent fleet-key new --out PATH` and set p2p.fleet_key_file on every member, " +
			"or give each member a certificate (`npu-agent fleet-key authority`, operations.md section 3)")
	}
	n.h.SetStreamHandler(RecordSyncProtocol, n.book.serveSync)

	// Flood publishing reaches peers that joined less than a mesh heartbeat ago (the fleet single flight needs it).
	// Peer exchange stays off: a pruned peer dials every peer of a PX list (up to 16) however many it has, and
	// with meshes near the connection count (gossipParams) prunes came often enough to triple the connections
	// (fleetsim, 200 members: 26 mean, 64 max, against 9.5 and 30). The overlay fill does its job (6.2).
	psOpts := []pubsub.Option{pubsub.WithFloodPublish(true), pubsub.WithPeerExchange(false),
		pubsub.WithGossipSubParams(gossipParams())}
	if n.mb != nil { // gossip only with proven members, also once a member is revoked while connected
		psOpts = append(psOpts, pubsub.WithPeerFilter(func(p peer.ID, _ string) bool { return n.mb.proven(p) }))
	}
	if n.ps, err = pubsub.NewGossipSub(n.ctx, n.h, psOpts...); err != nil {
		return fmt.Errorf("p2p: gossipsub: %w", err)
	}
	if n.mb != nil {
		if err := n.mb.startGossip(n.ps, n.h); err != nil {
			return err
		}
	}
	if err := n.ps.RegisterTopicValidator(RecordTopic, n.validateRecord); err != nil {
		return fmt.Errorf("p2p: gossip validator: %w", err)
	}
	if n.topic, err = n.ps.Join(RecordTopic); err != nil {
		return fmt.Errorf("p2p: join %s: %w", RecordTopic, err)
	}
	if n.sub, err = n.topic.Subscribe(); err != nil {
		return fmt.Errorf("p2p: subscribe %s: %w", RecordTopic, err)
	}
	n.wg.Go(n.readGossip)
	evh, err := n.topic.EventHandler()
	if err != nil {
		return fmt.Errorf("p2p: topic events: %w", err)
	}
	n.wg.Go(func() { n.syncOnJoin(evh) })
	n.boot = newBootstrap(cfg.StaticPeers)
	if err := n.startMembers(cfg); err != nil {
		return err
	}

	n.allow = make(map[peer.ID]bool, len(cfg.Allowlist))
	for _, p := range cfg.Allowlist {
		n.allow[p] = true
	}
	joined := func(p peer.ID) {
		n.met(p)
		n.syncWith(p)
		n.members.syncWith(p)
		n.joinTransfers(p)
	}
	if n.mb != nil {
		n.mb.setOnProven(joined) // and peers proven before this point were only recorded
	} else {
		n.h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
			joined(c.RemotePeer())
		}})
		for _, p := range n.h.Network().Peers() {
			joined(p)
		}
	}
	n.wg.Go(n.antiEntropy)

	var known func(peer.ID) bool
	if n.members != nil {
		known = func(p peer.ID) bool { return n.members.book.live(p, time.Now()) }
	}
	if n.disc, err = startDiscovery(n.h, cfg, n.boot, n.MemberCount, known, n.log); err != nil {
		return err
	}
	return ctx.Err()
}

// Mesh degree of every topic: gossipsub's defaults are D = 6, Dlo = 5. A member grafts only while its mesh has
// fewer than Dlo peers, so when its bootstrap links alone give it Dlo topic peers (6 on the ring that lists of the
// 3 members started before make) its mesh is those links, of diameter O(N). Dlo = 7 makes every member graft one
// or two of the overlay fill's random connections too, a ring with chords: fleetsim's farthest member of a
// refresh 8 hops away at 200 members instead of 18, 40 at 1,000 instead of 220 (6.2).
const (
	meshD   = 8
	meshDlo = 7
)

func gossipParams() pubsub.GossipSubParams {
	gp := pubsub.DefaultGossipSubParams()
	gp.D, gp.Dlo = meshD, meshDlo
	return gp
}

// Close stops discovery, fetches and handlers and closes the host. The store is the caller's to close.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	if n.disc != nil {
		n.disc.close()
	}
	if n.members != nil {
		n.members.stop() // before gossipsub stops: see members.ctx
	}
	if n.mb != nil {
		n.mb.stop()
	}
	n.cancel() // stops gossipsub (started on n.ctx), fetches, syncs and in-flight serving
	n.wg.Wait()
	errs := []error{n.h.Close()}
	if n.book != nil {
		errs = append(errs, n.book.close())
	}
	return errors.Join(errs...)
}

// Host is the libp2p host, for other protocols on the same connections.
func (n *Node) Host() host.Host { return n.h }

// PubSub is the node's gossipsub router, shared with other components (fleet single flight).
func (n *Node) PubSub() *pubsub.PubSub { return n.ps }

// ID is the node's peer ID, the Producer of records it publishes.
func (n *Node) ID() peer.ID { return n.h.ID() }

// Publish signs r as this node (Producer is set to ID()), adds it to the record book and announces it. The blob
// must be complete in the store; indexing the record in the store is the caller's (the agent's). It returns the
// signed record.
func (n *Node) Publish(ctx context.Context, r blobstore.Record) (SignedRecord, error) {
	if r.Producer == "" {
		r.Producer = n.ID().String()
	}
	ok, err := n.store.Has(ctx, r.Blob)
	if err != nil {
		return SignedRecord{}, fmt.Errorf("publish: %w", err)
	}
	if !ok {
		return SignedRecord{}, fmt.Errorf("publish %s: %w", r.Blob, blobstore.ErrNotFound)
	}
	sr, err := SealRecord(r, n.h.Peerstore().PrivKey(n.ID()))
	if err != nil {
		return SignedRecord{}, fmt.Errorf("publish: %w", err)
	}
	if _, err := n.book.add(sr); err != nil {
		return SignedRecord{}, fmt.Errorf("publish: %w", err)
	}
	// Peers that miss the gossip get the record by sync on their next connection or anti-entropy pull.
	if err := n.topic.Publish(ctx, sr.Envelope); err != nil {
		return sr, fmt.Errorf("publish: gossip: %w", err)
	}
	return sr, nil
}

// Records returns the verified, trusted records for (model, profile), newest first; empty strings match all.
func (n *Node) Records(modelID, profileID string) []SignedRecord {
	return n.book.records(modelID, profileID)
}

// OnRecord calls fn for every new verified, trusted record, local or remote, until the returned cancel is
// called. fn runs on the goroutine that learnt the record and must not block (hand off to a channel).
func (n *Node) OnRecord(fn func(SignedRecord)) (cancel func()) {
	return n.book.subscribe(fn)
}

// Peers lists the connected peers.
func (n *Node) Peers() []PeerInfo {
	var out []PeerInfo
	for _, p := range n.h.Network().Peers() {
		pi := PeerInfo{ID: p, Score: n.score(p)}
		for _, c := range n.h.Network().ConnsToPeer(p) {
			pi.Addrs = append(pi.Addrs, c.RemoteMultiaddr())
			if o := c.Stat().Opened; pi.ConnectedSince.IsZero() || o.Before(pi.ConnectedSince) {
				pi.ConnectedSince = o
			}
		}
		out = append(out, pi)
	}
	slices.SortFunc(out, func(a, b PeerInfo) int { return b.Score - a.Score })
	return out
}

func (n *Node) score(p peer.ID) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.scores[p]
}

// adjustScore adds delta to p's score, kept within [-1000, 1000] so a peer can always recover or fall.
func (n *Node) adjustScore(p peer.ID, delta int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.scores[p] = min(max(n.scores[p]+delta, -1000), 1000)
}

// validateRecord is the gossip validator: forged records are rejected (the sender is penalised by gossipsub),
// untrusted ones ignored.
func (n *Node) validateRecord(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	sr, err := OpenRecord(m.Data, time.Now())
	if err != nil {
		n.log.Warn("rejected gossiped record", "from", from, "err", err)
		return pubsub.ValidationReject
	}
	if !n.book.trust.allows(sr.Signer) {
		n.log.Debug("ignored record of untrusted producer", "from", from, "producer", sr.Signer)
		return pubsub.ValidationIgnore
	}
	m.ValidatorData = sr
	return pubsub.ValidationAccept
}

func (n *Node) readGossip() {
	for {
		m, err := n.sub.Next(n.ctx)
		if err != nil {
			return
		}
		sr, ok := m.ValidatorData.(SignedRecord)
		if !ok || m.ReceivedFrom == n.ID() {
			continue
		}
		if _, err := n.book.add(sr); err != nil {
			n.log.Debug("gossiped record not kept", "err", err)
		}
	}
}

// syncWith pulls p's records unless a pull from p is already running.
func (n *Node) syncWith(p peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.syncing[p] {
		return
	}
	n.syncing[p] = true
	n.wg.Go(func() {
		defer func() {
			n.mu.Lock()
			delete(n.syncing, p)
			n.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(n.ctx, syncTimeout)
		defer cancel()
		// A pull is for a connected peer: one that went since (trimmed, a retired static peer) is not redialled.
		st, err := n.h.NewStream(network.WithNoDial(ctx, "record pull"), p, RecordSyncProtocol)
		if err != nil {
			n.log.Debug("record sync: cannot open stream", "peer", p, "err", err)
			return
		}
		added, err := n.book.pull(ctx, st)
		if err != nil {
			n.log.Debug("record sync failed", "peer", p, "err", err)
		}
		if added > 0 {
			n.log.Info("records learnt by sync", "peer", p, "count", added)
		}
	})
}

func (n *Node) syncOnJoin(evh *pubsub.TopicEventHandler) {
	defer evh.Cancel()
	for {
		ev, err := evh.NextPeerEvent(n.ctx)
		if err != nil {
			return
		}
		if ev.Type != pubsub.PeerJoin {
			continue
		}
		n.wg.Go(func() {
			t := time.NewTimer(joinSettle)
			defer t.Stop()
			select {
			case <-n.ctx.Done():
			case <-t.C:
				n.syncWith(ev.Peer)
			}
		})
	}
}

func (n *Node) antiEntropy() {
	t := time.NewTicker(antiEntropyInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if ps := n.h.Network().Peers(); len(ps) > 0 {
				n.syncWith(ps[rand.IntN(len(ps))])
			}
		}
	}
}
