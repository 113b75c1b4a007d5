// Package hostile holds hostile peers and clients for the threat tests (docs/design.md section 9): they speak the
// fleet's protocols without the checks an honest node makes, so a test can send what an attacker would.
//
// The peer side imports no project package: the packages it attacks (p2p, p2p/flight, ...) use it from their own
// tests, and the test encodes its forged frames and messages with the attacked package's own encoders.
package hostile

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// PeerOptions configures a hostile peer.
type PeerOptions struct {
	// FleetKey, when set, makes the peer a (compromised) fleet member; nil: an outsider without the key.
	FleetKey pnet.PSK
	// PubSub starts gossipsub (default signing: messages are signed with this peer's own key, so they are
	// authentic as coming from it, just not honest).
	PubSub bool
}

// Peer is a bare libp2p host on loopback TCP, with gossipsub when asked.
type Peer struct {
	Host   host.Host
	PubSub *pubsub.PubSub

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	topics map[string]*pubsub.Topic
	subs   []*pubsub.Subscription
	open   []network.Stream
}

// NewPeer starts a hostile peer with a fresh identity (a throwaway identity costs nothing).
func NewPeer(opts PeerOptions) (*Peer, error) {
	lo := []libp2p.Option{
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(), libp2p.DisableMetrics(),
	}
	if opts.FleetKey != nil {
		lo = append(lo, libp2p.PrivateNetwork(opts.FleetKey))
	}
	h, err := libp2p.New(lo...)
	if err != nil {
		return nil, fmt.Errorf("hostile peer: %w", err)
	}
	p := &Peer{Host: h, topics: map[string]*pubsub.Topic{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if opts.PubSub {
		if p.PubSub, err = pubsub.NewGossipSub(p.ctx, h, pubsub.WithFloodPublish(true)); err != nil {
			p.Close()
			return nil, fmt.Errorf("hostile peer: gossipsub: %w", err)
		}
	}
	return p, nil
}

// NewPeers starts n hostile peers; on error the ones started are closed.
func NewPeers(n int, opts PeerOptions) ([]*Peer, error) {
	ps := make([]*Peer, 0, n)
	for range n {
		p, err := NewPeer(opts)
		if err != nil {
			for _, q := range ps {
				q.Close()
			}
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// ID is the peer's identity.
func (p *Peer) ID() peer.ID { return p.Host.ID() }

// Connect dials target.
func (p *Peer) Connect(ctx context.Context, target peer.AddrInfo) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.Host.Connect(ctx, target)
}

// Frame is a chunk-protocol frame: type u8, a claimed payload length u32 little-endian (which need not match),
// then payload.
func Frame(t byte, claimed uint32, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	b[0] = t
	binary.LittleEndian.PutUint32(b[1:], claimed)
	return append(b, payload...)
}

// OpenStreams opens up to n streams of proto to target, writes first on each and leaves them open (until Close
// or ResetStreams): the flood of a peer that sends a header and then nothing. It stops at the first stream that
// cannot be opened or written, or at ctx's end, and returns how many are open.
func (p *Peer) OpenStreams(ctx context.Context, target peer.ID, proto protocol.ID, n int, first []byte) (int, error) {
	opened := 0
	for range n {
		if ctx.Err() != nil {
			return opened, ctx.Err()
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := p.Host.NewStream(sctx, target, proto)
		cancel()
		if err != nil {
			return opened, err
		}
		st.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := st.Write(first); err != nil {
			st.Reset()
			return opened, err
		}
		p.mu.Lock()
		p.open = append(p.open, st)
		p.mu.Unlock()
		opened++
	}
	return opened, nil
}

// Alive counts the streams opened by OpenStreams that the other side has not reset or closed: each is probed
// with a one-byte read of at most wait.
func (p *Peer) Alive(wait time.Duration) int {
	p.mu.Lock()
	sts := append([]network.Stream(nil), p.open...)
	p.mu.Unlock()
	var n int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, st := range sts {
		wg.Go(func() {
			st.SetReadDeadline(time.Now().Add(wait))
			var b [1]byte
			_, err := st.Read(b[:])
			var ne interface{ Timeout() bool }
			if err != nil && errors.As(err, &ne) && ne.Timeout() {
				mu.Lock()
				n++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return n
}

// ResetStreams resets every stream opened by OpenStreams.
func (p *Peer) ResetStreams() {
	p.mu.Lock()
	sts := p.open
	p.open = nil
	p.mu.Unlock()
	for _, st := range sts {
		st.Reset()
	}
}

// Serve answers every stream of proto with answer (written as is), then closes it: a sync server that floods.
func (p *Peer) Serve(proto protocol.ID, answer func() []byte) {
	p.Host.SetStreamHandler(proto, func(st network.Stream) {
		defer st.Close()
		st.SetWriteDeadline(time.Now().Add(30 * time.Second))
		st.Write(answer())
	})
}

// Topic joins topic (once) and returns it; the peer subscribes too, so meshes form both ways.
func (p *Peer) Topic(topic string) (*pubsub.Topic, error) {
	if p.PubSub == nil {
		return nil, errors.New("hostile peer: started without pubsub")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.topics[topic]; ok {
		return t, nil
	}
	t, err := p.PubSub.Join(topic)
	if err != nil {
		return nil, err
	}
	sub, err := t.Subscribe()
	if err != nil {
		t.Close()
		return nil, err
	}
	go func() { // drain, so gossipsub never blocks on us
		for {
			if _, err := sub.Next(p.ctx); err != nil {
				return
			}
		}
	}()
	p.topics[topic] = t
	p.subs = append(p.subs, sub)
	return t, nil
}

// Publish publishes data on topic, signed by this peer.
func (p *Peer) Publish(ctx context.Context, topic string, data []byte) error {
	t, err := p.Topic(topic)
	if err != nil {
		return err
	}
	return t.Publish(ctx, data)
}

// WaitTopicPeers waits until topic lists at least n peers (gossipsub heard their subscriptions), or ctx ends.
func (p *Peer) WaitTopicPeers(ctx context.Context, topic string, n int) error {
	t, err := p.Topic(topic)
	if err != nil {
		return err
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(t.ListPeers()) < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("hostile peer: %d of %d peers on %s: %w", len(t.ListPeers()), n, topic, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// Close resets the open streams, leaves the topics and stops the host.
func (p *Peer) Close() error {
	p.ResetStreams()
	p.mu.Lock()
	for _, s := range p.subs {
		s.Cancel()
	}
	for _, t := range p.topics {
		t.Close()
	}
	p.topics = map[string]*pubsub.Topic{}
	p.subs = nil
	p.mu.Unlock()
	p.cancel()
	return p.Host.Close()
}
