package flight

import (
	"context"
	"errors"
	"fmt"
	"sync"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Topic is the gossipsub topic that carries flight messages for every key of the fleet.
const Topic = "/npu-agent/flight/1"

// PubSubTransport carries flight messages on gossipsub. The PubSub must use the default StrictSign policy:
// every message is then signed with its author's peer key and verified on receipt, so GetFrom is the author.
type PubSubTransport struct {
	ps    *pubsub.PubSub
	self  peer.ID
	topic *pubsub.Topic
	sub   *pubsub.Subscription

	closeOnce sync.Once
	closeErr  error
}

var _ Transport = (*PubSubTransport)(nil)

// NewPubSubTransport joins Topic on ps for the local peer self. It registers a topic validator that drops, and
// does not forward, any message that does not decode or whose claimed sender is not its signed author.
func NewPubSubTransport(ps *pubsub.PubSub, self peer.ID) (*PubSubTransport, error) {
	if err := ps.RegisterTopicValidator(Topic, validate); err != nil {
		return nil, fmt.Errorf("flight: register validator on %s: %w", Topic, err)
	}
	topic, err := ps.Join(Topic)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("flight: join %s: %w", Topic, err), ps.UnregisterTopicValidator(Topic))
	}
	sub, err := topic.Subscribe()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("flight: subscribe %s: %w", Topic, err), topic.Close(),
			ps.UnregisterTopicValidator(Topic))
	}
	return &PubSubTransport{ps: ps, self: self, topic: topic, sub: sub}, nil
}

func validate(_ context.Context, _ peer.ID, msg *pubsub.Message) bool {
	m, err := Decode(msg.GetData())
	return err == nil && m.Sender == msg.GetFrom()
}

// Self returns the local peer ID.
func (t *PubSubTransport) Self() peer.ID { return t.self }

// Publish publishes data on Topic.
func (t *PubSubTransport) Publish(ctx context.Context, data []byte) error {
	if err := t.topic.Publish(ctx, data); err != nil {
		return fmt.Errorf("flight: publish: %w", err)
	}
	return nil
}

// Peers returns the peers known to subscribe to Topic.
func (t *PubSubTransport) Peers() []peer.ID { return t.topic.ListPeers() }

// Next returns the next message authored by another peer; gossipsub also delivers our own, which it skips.
func (t *PubSubTransport) Next(ctx context.Context) ([]byte, peer.ID, error) {
	for {
		msg, err := t.sub.Next(ctx)
		switch {
		case errors.Is(err, pubsub.ErrSubscriptionCancelled):
			return nil, "", ErrClosed
		case err != nil:
			return nil, "", err
		}
		if from := msg.GetFrom(); from != t.self {
			return msg.GetData(), from, nil
		}
	}
}

// Close cancels the subscription, leaves the topic and unregisters the validator.
func (t *PubSubTransport) Close() error {
	t.closeOnce.Do(func() {
		t.sub.Cancel()
		t.closeErr = errors.Join(t.topic.Close(), t.ps.UnregisterTopicValidator(Topic))
	})
	return t.closeErr
}
