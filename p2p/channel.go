package p2p

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// A channel carries opaque documents of one kind (signed rollout manifests, signed status reports) between fleet
// members the way records travel (docs/design.md 6.11): gossiped on a topic and pulled from each peer on connect,
// after it joins the topic, and from a random peer every minute. The p2p layer does not know what the documents
// mean: the channel's Handler decides whether one is valid, new, or to be dropped.

// ErrIgnore, returned (wrapped) by a Handler, marks a document that is valid but not to be relayed: one already
// held, or older than one held. Gossipsub drops it without penalising the sender; any other error rejects it and
// counts against the sender.
var ErrIgnore = errors.New("document ignored")

// Channel limits.
const (
	// MaxChannelMessage bounds ChannelConfig.MaxMessage: a document must fit a gossipsub message comfortably.
	MaxChannelMessage = 256 << 10
	// MaxChannelSync bounds ChannelConfig.MaxSync.
	MaxChannelSync = 100000
)

// Handler takes a document from a peer: from is the peer that sent it (for gossip the forwarding peer, not
// necessarily the author). It returns nil for a document it accepted, an error wrapping ErrIgnore for one it
// already has or that is stale, another error for an invalid one. It is called concurrently, from gossipsub's
// validation and from pulls, and must not block for long.
type Handler func(ctx context.Context, from peer.ID, data []byte) error

// ChannelConfig describes a channel.
type ChannelConfig struct {
	Topic        string      // gossipsub topic, e.g. "/npu-agent/rollout/manifests/1"
	SyncProtocol protocol.ID // pull protocol, e.g. "/npu-agent/rollout/manifests/sync/1.0.0"
	MaxMessage   int         // largest document, checked before the Handler sees it; at most MaxChannelMessage
	MaxSync      int         // most documents one pull reads; at most MaxChannelSync
	Handle       Handler
	// Snapshot returns the documents a pulling peer gets: what this member holds and vouches for.
	Snapshot func() [][]byte
}

func (c ChannelConfig) validate() error {
	switch {
	case c.Topic == "" || c.SyncProtocol == "":
		return errors.New("p2p: channel needs a topic and a sync protocol")
	case c.MaxMessage <= 0 || c.MaxMessage > MaxChannelMessage:
		return fmt.Errorf("p2p: channel %s: max message %d, want 1 to %d", c.Topic, c.MaxMessage, MaxChannelMessage)
	case c.MaxSync <= 0 || c.MaxSync > MaxChannelSync:
		return fmt.Errorf("p2p: channel %s: max sync %d, want 1 to %d", c.Topic, c.MaxSync, MaxChannelSync)
	case c.Handle == nil || c.Snapshot == nil:
		return fmt.Errorf("p2p: channel %s: needs Handle and Snapshot", c.Topic)
	}
	return nil
}

// Channel is an open channel on a Node. It lives as long as the node.
type Channel struct {
	n     *Node
	cfg   ChannelConfig
	topic *pubsub.Topic
	sub   *pubsub.Subscription

	mu      sync.Mutex
	syncing map[peer.ID]bool
}

// OpenChannel joins cfg.Topic, serves cfg.SyncProtocol and starts pulling from peers. Node.Close closes it.
func (n *Node) OpenChannel(cfg ChannelConfig) (*Channel, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Channel{n: n, cfg: cfg, syncing: map[peer.ID]bool{}}
	if err := n.ps.RegisterTopicValidator(cfg.Topic, c.validate); err != nil {
		return nil, fmt.Errorf("p2p: validator of %s: %w", cfg.Topic, err)
	}
	var err error
	if c.topic, err = n.ps.Join(cfg.Topic); err != nil {
		return nil, errors.Join(fmt.Errorf("p2p: join %s: %w", cfg.Topic, err), n.ps.UnregisterTopicValidator(cfg.Topic))
	}
	if c.sub, err = c.topic.Subscribe(); err != nil {
		return nil, errors.Join(fmt.Errorf("p2p: subscribe %s: %w", cfg.Topic, err), c.topic.Close(),
			n.ps.UnregisterTopicValidator(cfg.Topic))
	}
	evh, err := c.topic.EventHandler()
	if err != nil {
		c.sub.Cancel()
		return nil, errors.Join(fmt.Errorf("p2p: events of %s: %w", cfg.Topic, err), c.topic.Close(),
			n.ps.UnregisterTopicValidator(cfg.Topic))
	}
	n.h.SetStreamHandler(cfg.SyncProtocol, c.serveSync)
	started := n.spawn(c.drain) && n.spawn(func() { c.syncOnJoin(evh) }) && n.spawn(c.antiEntropy)
	if !started {
		evh.Cancel()
		return nil, ErrClosed
	}
	n.h.Network().Notify(&network.NotifyBundle{ConnectedF: func(_ network.Network, conn network.Conn) {
		c.syncWith(conn.RemotePeer())
	}})
	for _, p := range n.h.Network().Peers() {
		c.syncWith(p)
	}
	return c, nil
}

// spawn runs fn on the node's wait group unless the node is closing.
func (n *Node) spawn(fn func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Go(fn)
	return true
}

// Publish gossips a document. The Handler is not called for it: the caller has taken it already.
func (c *Channel) Publish(ctx context.Context, data []byte) error {
	if len(data) > c.cfg.MaxMessage {
		return fmt.Errorf("p2p: %s: document of %d bytes, at most %d", c.cfg.Topic, len(data), c.cfg.MaxMessage)
	}
	if err := c.topic.Publish(ctx, data); err != nil {
		return fmt.Errorf("p2p: publish on %s: %w", c.cfg.Topic, err)
	}
	return nil
}

// validate is the gossipsub validator: the Handler's verdict decides whether the document is relayed.
func (c *Channel) validate(ctx context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if from == c.n.ID() {
		return pubsub.ValidationAccept // our own Publish
	}
	if len(m.Data) > c.cfg.MaxMessage {
		c.n.log.Warn("rejected oversized document", "topic", c.cfg.Topic, "from", from, "bytes", len(m.Data))
		return pubsub.ValidationReject
	}
	switch err := c.cfg.Handle(ctx, from, m.Data); {
	case err == nil:
		return pubsub.ValidationAccept
	case errors.Is(err, ErrIgnore):
		c.n.log.Debug("ignored gossiped document", "topic", c.cfg.Topic, "from", from, "err", err)
		return pubsub.ValidationIgnore
	default:
		c.n.log.Warn("rejected gossiped document", "topic", c.cfg.Topic, "from", from, "err", err)
		return pubsub.ValidationReject
	}
}

// drain reads the subscription so gossipsub keeps delivering; the validator has handled every message.
func (c *Channel) drain() {
	defer c.sub.Cancel()
	for {
		if _, err := c.sub.Next(c.n.ctx); err != nil {
			return
		}
	}
}

// syncWith pulls p's documents unless a pull from p is already running.
func (c *Channel) syncWith(p peer.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.syncing[p] {
		return
	}
	ok := c.n.spawn(func() {
		defer func() {
			c.mu.Lock()
			delete(c.syncing, p)
			c.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(c.n.ctx, syncTimeout)
		defer cancel()
		st, err := c.n.h.NewStream(ctx, p, c.cfg.SyncProtocol)
		if err != nil {
			c.n.log.Debug("channel sync: cannot open stream", "topic", c.cfg.Topic, "peer", p, "err", err)
			return
		}
		added, err := c.pull(ctx, st)
		if err != nil {
			c.n.log.Debug("channel sync failed", "topic", c.cfg.Topic, "peer", p, "err", err)
		}
		if added > 0 {
			c.n.log.Debug("documents learnt by sync", "topic", c.cfg.Topic, "peer", p, "count", added)
		}
	})
	if ok {
		c.syncing[p] = true
	}
}

// serveSync answers a pull with every snapshot document (at most MaxSync, each within MaxMessage).
func (c *Channel) serveSync(st network.Stream) {
	docs := c.cfg.Snapshot()
	docs = slices.DeleteFunc(docs[:min(len(docs), c.cfg.MaxSync)], func(d []byte) bool {
		return len(d) == 0 || len(d) > c.cfg.MaxMessage // the peer would reject it
	})
	serveEntries(st, docs)
}

// pull reads a peer's snapshot and hands each document to the Handler. A document the Handler rejects is logged
// and skipped; a broken frame ends the pull.
func (c *Channel) pull(ctx context.Context, st network.Stream) (added int, err error) {
	from := st.Conn().RemotePeer()
	return pullEntries(ctx, st, c.cfg.MaxMessage, c.cfg.MaxSync, "documents", func(doc []byte) bool {
		switch err := c.cfg.Handle(ctx, from, doc); {
		case err == nil:
			return true
		case errors.Is(err, ErrIgnore):
		default:
			c.n.log.Warn("peer sent an invalid document", "topic", c.cfg.Topic, "peer", from, "err", err)
		}
		return false
	})
}

func (c *Channel) syncOnJoin(evh *pubsub.TopicEventHandler) {
	defer evh.Cancel()
	for {
		ev, err := evh.NextPeerEvent(c.n.ctx)
		if err != nil {
			return
		}
		if ev.Type != pubsub.PeerJoin {
			continue
		}
		// Gossip sent while the peer's streams were being set up is lost: pull once they are.
		c.n.spawn(func() {
			t := time.NewTimer(joinSettle)
			defer t.Stop()
			select {
			case <-c.n.ctx.Done():
			case <-t.C:
				c.syncWith(ev.Peer)
			}
		})
	}
}

func (c *Channel) antiEntropy() {
	t := time.NewTicker(antiEntropyInterval)
	defer t.Stop()
	for {
		select {
		case <-c.n.ctx.Done():
			return
		case <-t.C:
			if ps := c.n.h.Network().Peers(); len(ps) > 0 {
				c.syncWith(ps[rand.IntN(len(ps))])
			}
		}
	}
}

// Sign signs msg with the node's identity key, the key its peer ID names. Callers must start msg with a context
// string of their own (the rollout status type does) so the signature cannot pass for another protocol's.
func (n *Node) Sign(msg []byte) ([]byte, error) {
	k := n.h.Peerstore().PrivKey(n.ID())
	if k == nil {
		return nil, errors.New("p2p: no identity key")
	}
	return k.Sign(msg)
}

// ErrBadSignature reports a signature that does not verify with the key of the peer ID that claims it.
var ErrBadSignature = errors.New("signature does not verify")

// VerifySignature checks sig over msg with the public key embedded in peer ID id (an Ed25519 identity, as every
// node of this project has).
func VerifySignature(id string, msg, sig []byte) error {
	p, err := peer.Decode(id)
	if err != nil {
		return fmt.Errorf("%w: peer ID %.80q: %v", ErrBadSignature, id, err)
	}
	pub, err := p.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%w: peer %s does not embed its public key: %v", ErrBadSignature, p, err)
	}
	if pub.Type() != crypto.Ed25519 {
		return fmt.Errorf("%w: peer %s has a %s key, want Ed25519", ErrBadSignature, p, pub.Type())
	}
	ok, err := pub.Verify(msg, sig)
	if err != nil || !ok {
		return fmt.Errorf("%w: by peer %s", ErrBadSignature, p)
	}
	return nil
}
