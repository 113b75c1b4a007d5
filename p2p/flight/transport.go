package flight

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrClosed is returned by a closed transport.
var ErrClosed = errors.New("flight transport closed")

// Transport carries flight messages between the peers of a fleet on one topic. It is the only way the
// coordinator touches the network.
type Transport interface {
	// Self returns the local peer's ID: the author of everything this transport publishes.
	Self() peer.ID
	// Publish sends data to every other subscribed peer, best effort.
	Publish(ctx context.Context, data []byte) error
	// Next blocks until a message from another peer arrives and returns it with its authenticated author. It
	// returns ErrClosed once the transport is closed, or ctx's error.
	Next(ctx context.Context) (data []byte, author peer.ID, err error)
	// Close stops delivery and releases the transport's resources.
	Close() error
}

// MemNetwork is an in-memory network of Transports for tests, with failure injection. Delivery is reliable and
// in order per sender until a peer is dropped or the network partitioned.
type MemNetwork struct {
	mu      sync.Mutex
	peers   map[peer.ID]*MemTransport
	dropped map[peer.ID]bool
	group   map[peer.ID]int // partition group; peers in different groups do not hear each other
	// delay, when set, delays each delivery by what it returns (per message and receiver); delayed deliveries
	// may arrive out of order.
	delay func(from, to peer.ID) time.Duration
	sent  map[Type]int // messages published (not dropped), by type; undecodable ones under 0
}

// Sent returns how many messages of each type the peers published, for tests that bound a flight's traffic.
func (n *MemNetwork) Sent() map[Type]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.sent)
}

// SetDelay delays every later delivery from one peer to another by d(from, to) (0: at once). Nil removes it.
func (n *MemNetwork) SetDelay(d func(from, to peer.ID) time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.delay = d
}

// NewMemNetwork returns an empty network.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{peers: map[peer.ID]*MemTransport{}, dropped: map[peer.ID]bool{}, group: map[peer.ID]int{},
		sent: map[Type]int{}}
}

// memInbox bounds each peer's queue; a full queue drops, as a congested network would.
const memInbox = 4096

// Join attaches a peer to the network and returns its transport.
func (n *MemNetwork) Join(id peer.ID) *MemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	t := &MemTransport{net: n, self: id, inbox: make(chan memMsg, memInbox), closed: make(chan struct{})}
	n.peers[id] = t
	return t
}

// Drop silences a peer as if its host died: nothing it publishes is delivered and it receives nothing.
func (n *MemNetwork) Drop(id peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropped[id] = true
}

// Partition splits the network: each listed group hears only its own members. Peers not listed form one more
// group.
func (n *MemNetwork) Partition(groups ...[]peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.group = map[peer.ID]int{}
	for i, g := range groups {
		for _, id := range g {
			n.group[id] = i + 1
		}
	}
}

// Heal removes every partition.
func (n *MemNetwork) Heal() { n.Partition() }

func (n *MemNetwork) deliver(from peer.ID, data []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dropped[from] {
		return
	}
	var t Type
	if m, err := Decode(data); err == nil {
		t = m.Type
	}
	n.sent[t]++
	for id, t := range n.peers {
		if id == from || n.dropped[id] || n.group[id] != n.group[from] {
			continue
		}
		m := memMsg{data: append([]byte(nil), data...), from: from}
		if n.delay != nil {
			if d := n.delay(from, id); d > 0 {
				time.AfterFunc(d, func() { t.put(m) })
				continue
			}
		}
		t.put(m)
	}
}

// put queues m unless the queue is full or the transport closed.
func (t *MemTransport) put(m memMsg) {
	select {
	case <-t.closed:
	case t.inbox <- m:
	default:
	}
}

func (n *MemNetwork) leave(id peer.ID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.peers, id)
}

type memMsg struct {
	data []byte
	from peer.ID
}

// MemTransport is one peer's end of a MemNetwork.
type MemTransport struct {
	net       *MemNetwork
	self      peer.ID
	inbox     chan memMsg
	closeOnce sync.Once
	closed    chan struct{}
}

var _ Transport = (*MemTransport)(nil)

// Self returns the peer's ID.
func (t *MemTransport) Self() peer.ID { return t.self }

// Publish delivers data to every other reachable peer.
func (t *MemTransport) Publish(ctx context.Context, data []byte) error {
	select {
	case <-t.closed:
		return ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	t.net.deliver(t.self, data)
	return nil
}

// Next returns the next delivered message.
func (t *MemTransport) Next(ctx context.Context) ([]byte, peer.ID, error) {
	select {
	case m := <-t.inbox:
		return m.data, m.from, nil
	case <-t.closed:
		return nil, "", ErrClosed
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
}

// Close detaches the peer from the network.
func (t *MemTransport) Close() error {
	t.closeOnce.Do(func() {
		t.net.leave(t.self)
		close(t.closed)
	})
	return nil
}
