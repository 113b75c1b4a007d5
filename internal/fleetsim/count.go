package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/p2p/flight"
)

// traffic counts the bytes one node reads from its streams, by kind: gossipsub (every topic: member records,
// signed blob records, flight messages and gossipsub's control messages) and the member table pull.
type traffic struct {
	gossip, memberSync, other atomic.Int64
	// memberMsgs counts the member records received on gossip (every copy), joinerMsgs those published by
	// the members that joined last (Config.Joins), lost the gossip messages Config.Loss dropped (rpcStream).
	memberMsgs, joinerMsgs, lost atomic.Int64
	// flightSent and flightRecv count the flight messages a node published and received (from others).
	flightSent, flightRecv atomic.Int64

	// The flight's view for the diagnosis of extra compiles (Result.Compilers): per message type, how many a
	// node sent and received since the flight started, and when the first arrived.
	mu    sync.Mutex
	t0    time.Time
	recv  map[flight.Type]int
	first map[flight.Type]time.Duration
	sent  map[flight.Type]int
	fsent map[flight.Type]time.Duration
}

func (t *traffic) flightStart(t0 time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.t0 = t0
	t.recv, t.first = map[flight.Type]int{}, map[flight.Type]time.Duration{}
	t.sent, t.fsent = map[flight.Type]int{}, map[flight.Type]time.Duration{}
}

func (t *traffic) note(data []byte, sent bool) {
	m, err := flight.Decode(data)
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.recv == nil {
		return
	}
	n, first := t.recv, t.first
	if sent {
		n, first = t.sent, t.fsent
	}
	if n[m.Type] == 0 {
		first[m.Type] = time.Since(t.t0)
	}
	n[m.Type]++
}

// seen describes what the node had sent and received by now.
func (t *traffic) seen(now time.Time) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "compile at +%.2fs", now.Sub(t.t0).Seconds())
	for _, side := range []struct {
		name  string
		n     map[flight.Type]int
		first map[flight.Type]time.Duration
	}{{"sent", t.sent, t.fsent}, {"received", t.recv, t.first}} {
		fmt.Fprintf(&b, "; %s", side.name)
		for _, ty := range []flight.Type{flight.TypeWant, flight.TypeLease, flight.TypeDone, flight.TypeRelease, flight.TypeWithdraw} {
			if c := side.n[ty]; c > 0 {
				fmt.Fprintf(&b, " %v=%d(first +%.2fs)", ty, c, side.first[ty].Seconds())
			}
		}
	}
	return b.String()
}

// countingTransport counts a node's flight messages.
type countingTransport struct {
	flight.Transport
	t *traffic
}

func (c countingTransport) Publish(ctx context.Context, data []byte) error {
	c.t.flightSent.Add(1)
	c.t.note(data, true)
	return c.Transport.Publish(ctx, data)
}

func (c countingTransport) Next(ctx context.Context) ([]byte, peer.ID, error) {
	data, from, err := c.Transport.Next(ctx)
	if err == nil {
		c.t.flightRecv.Add(1)
		c.t.note(data, false)
	}
	return data, from, err
}

func isGossip(pid protocol.ID) bool {
	return strings.HasPrefix(string(pid), "/meshsub/") || strings.HasPrefix(string(pid), "/floodsub/")
}

func (t *traffic) counter(pid protocol.ID) *atomic.Int64 {
	switch {
	case isGossip(pid):
		return &t.gossip
	case pid == p2p.MemberSyncProtocol || pid == p2p.MemberDigestProtocol || pid == p2p.MemberHashProtocol:
		return &t.memberSync
	}
	return &t.other
}

// countingHost is a host whose streams count the bytes read from them, and whose inbound gossip streams count
// member records and lose messages with probability loss (rpcStream). Only what the node asks of the host is
// wrapped (its handlers and the streams it opens); the host itself is the mocknet's.
type countingHost struct {
	host.Host
	t    *traffic
	loss float64
	run  *runInfo
	// pipe delays what this host writes on the streams it wraps by run.delay (Config.PipeLatency).
	pipe bool
}

// errNotListening is a dial before the bootstrap step (runInfo.open).
var errNotListening = errors.New("fleetsim: members not listening yet")

// Connect links the two hosts first when the run lets every member dial every other (Config.DialAny): the
// overlay fill (and a fetch) dial members they learnt of, which on a LAN all answer.
func (h *countingHost) Connect(ctx context.Context, pi peer.AddrInfo) error {
	if !h.run.open.Load() {
		return errNotListening
	}
	if h.run.link != nil {
		if err := h.run.link(h.ID(), pi.ID); err != nil {
			return err
		}
	}
	return h.Host.Connect(ctx, pi)
}

type countingStream struct {
	network.Stream
	n *atomic.Int64
}

func (s *countingStream) Read(b []byte) (int, error) {
	n, err := s.Stream.Read(b)
	s.n.Add(int64(n))
	return n, err
}

func (h *countingHost) wrap(s network.Stream) network.Stream {
	if h.pipe {
		s = newDelayStream(s, &h.run.delay)
	}
	return &countingStream{Stream: s, n: h.t.counter(s.Protocol())}
}

// inbound wraps a stream a peer opened: gossipsub reads what a peer sends on those.
func (h *countingHost) inbound(s network.Stream) network.Stream {
	s = h.wrap(s)
	if isGossip(s.Protocol()) {
		return newRPCStream(s, h.loss, h.t, h.run)
	}
	return s
}

func (h *countingHost) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	h.Host.SetStreamHandler(pid, func(s network.Stream) { handler(h.inbound(s)) })
}

func (h *countingHost) SetStreamHandlerMatch(pid protocol.ID, match func(protocol.ID) bool, handler network.StreamHandler) {
	h.Host.SetStreamHandlerMatch(pid, match, func(s network.Stream) { handler(h.inbound(s)) })
}

func (h *countingHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	s, err := h.Host.NewStream(ctx, p, pids...)
	if err != nil {
		return nil, err
	}
	return h.wrap(s), nil
}
