package fleet

import (
	"context"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/rollout"
	"github.com/npu-agent/npu-agent/rollout/engine"
)

// Rollout channels (docs/design.md 8.6): signed manifests and signed status reports, each gossiped on a topic
// and pulled from every peer on connect.
const (
	ManifestTopic        = "/npu-agent/rollout/manifests/1"
	ManifestSyncProtocol = "/npu-agent/rollout/manifests/sync/1.0.0"
	StatusTopic          = "/npu-agent/rollout/status/1"
	StatusSyncProtocol   = "/npu-agent/rollout/status/sync/1.0.0"

	// maxManifestSync bounds the manifests one pull reads: one per rollout name.
	maxManifestSync = 1024
	// maxStatusSync bounds the status reports one pull reads: peers times rollouts of a large fleet.
	maxStatusSync = 20000
)

// RolloutChannels is the rollout engine's Net on a daemon: the rollout channels on its p2p node.
type RolloutChannels struct {
	node      *p2p.Node
	manifests *p2p.Channel
	statuses  *p2p.Channel
}

var _ engine.Net = (*RolloutChannels)(nil)

func newRolloutChannels(node *p2p.Node) *RolloutChannels { return &RolloutChannels{node: node} }

// Open joins the rollout topics with the engine's handlers (engine.New calls it, once). Stale documents (already
// held, older, expired) are ignored; invalid ones are rejected, which gossipsub counts against the peer that sent
// them.
func (c *RolloutChannels) Open(r engine.Handlers) error {
	var err error
	c.manifests, err = c.node.OpenChannel(p2p.ChannelConfig{
		Topic: ManifestTopic, SyncProtocol: ManifestSyncProtocol,
		MaxMessage: rollout.MaxSignedSize, MaxSync: maxManifestSync,
		Handle: func(_ context.Context, from peer.ID, data []byte) error {
			return ignoreStale(r.HandleManifest(from.String(), data))
		},
		Snapshot: r.ManifestSnapshot,
	})
	if err != nil {
		return err
	}
	c.statuses, err = c.node.OpenChannel(p2p.ChannelConfig{
		Topic: StatusTopic, SyncProtocol: StatusSyncProtocol,
		MaxMessage: rollout.MaxStatusSize, MaxSync: maxStatusSync,
		Handle: func(_ context.Context, _ peer.ID, data []byte) error {
			return ignoreStale(r.HandleStatus(data))
		},
		Snapshot: r.StatusSnapshot,
	})
	return err
}

// ignoreStale marks errors of documents that an honest peer may send (it has not seen the newer one yet, or its
// clock differs) as p2p.ErrIgnore.
func ignoreStale(err error) error {
	for _, stale := range []error{rollout.ErrDuplicate, rollout.ErrRollback, rollout.ErrExpired, engine.ErrStale,
		engine.ErrNotMember} {
		if errors.Is(err, stale) {
			return fmt.Errorf("%w: %w", p2p.ErrIgnore, err)
		}
	}
	return err
}

// Self is the node's peer ID.
func (c *RolloutChannels) Self() string { return c.node.ID().String() }

// Sign signs with the node's identity key.
func (c *RolloutChannels) Sign(msg []byte) ([]byte, error) { return c.node.Sign(msg) }

// VerifyPeer checks a signature by the key peer names.
func (c *RolloutChannels) VerifyPeer(peer string, msg, sig []byte) error {
	return p2p.VerifySignature(peer, msg, sig)
}

// Member reports whether the peer peer names is a fleet member (p2p.Node.Member): its status reports count.
func (c *RolloutChannels) Member(id string) bool {
	p, err := peer.Decode(id)
	return err == nil && c.node.Member(p)
}

// PublishManifest gossips a signed manifest.
func (c *RolloutChannels) PublishManifest(ctx context.Context, signed []byte) error {
	if c.manifests == nil {
		return errors.New("rollout channels are not open")
	}
	return c.manifests.Publish(ctx, signed)
}

// PublishStatus gossips a signed status report.
func (c *RolloutChannels) PublishStatus(ctx context.Context, signed []byte) error {
	if c.statuses == nil {
		return errors.New("rollout channels are not open")
	}
	return c.statuses.Publish(ctx, signed)
}

// Peers lists the connected peers.
func (c *RolloutChannels) Peers() []string {
	ps := c.node.Peers()
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.ID.String()
	}
	return out
}
