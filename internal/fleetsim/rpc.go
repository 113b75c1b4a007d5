package fleetsim

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"

	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/p2p"
)

// maxRPC bounds one gossipsub RPC read by rpcStream (gossipsub's own default limit is 1 MiB).
const maxRPC = 4 << 20

// rpcStream reads the length-prefixed RPCs of a gossipsub stream a member receives, counts the member records
// they carry (traffic.memberMsgs: every copy, gossipsub's duplicates included, so the messages a member handles
// per membership event) and loses each message they carry with probability p (Config.Loss), as a queue that
// overflows drops what a peer sent. The peer's subscriptions and gossipsub's control messages (IHAVE, IWANT,
// GRAFT, PRUNE) pass, so gossipsub's own repair (IWANT for an IHAVE'd message) and the member pulls can make up
// for what was lost. Streams over a mocknet link lose nothing, like TCP, whose losses become delay (Latency).
type rpcStream struct {
	network.Stream
	r   *bufio.Reader
	p   float64
	t   *traffic
	run *runInfo
	buf []byte // the rest of the current RPC, re-encoded
}

// runInfo is what every member's host shares: the joiners' peer IDs (binary), to count their records apart,
// with Config.DialAny the function that links two hosts before one dials the other, and whether the bootstrap
// step has begun (open): a member's dial before it fails, as a daemon's dial of a static peer not yet listening
// does, so the static peers a member dials at its start are connected by the bootstrap step, as before.
type runInfo struct {
	joiners map[string]bool
	link    func(a, b peer.ID) error
	open    atomic.Bool
	delay   atomic.Int64 // the streams' latency in nanoseconds (Config.PipeLatency)
}

func newRPCStream(s network.Stream, p float64, t *traffic, run *runInfo) *rpcStream {
	return &rpcStream{Stream: s, r: bufio.NewReader(s), p: p, t: t, run: run}
}

func (s *rpcStream) Read(b []byte) (int, error) {
	for len(s.buf) == 0 {
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	n := copy(b, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

// next reads one RPC and keeps in s.buf what is left of it; an RPC left with nothing is skipped.
func (s *rpcStream) next() error {
	size, err := binary.ReadUvarint(s.r)
	if err != nil {
		return err
	}
	if size > maxRPC {
		return fmt.Errorf("fleetsim: gossip RPC of %d bytes", size)
	}
	raw := make([]byte, size)
	if _, err := io.ReadFull(s.r, raw); err != nil {
		return err
	}
	var rpc pb.RPC
	if err := rpc.Unmarshal(raw); err != nil {
		return err
	}
	kept := rpc.Publish[:0]
	for _, m := range rpc.Publish {
		if s.p > 0 && rand.Float64() < s.p {
			s.t.lost.Add(1)
			continue
		}
		kept = append(kept, m)
		if m.GetTopic() == p2p.MemberTopic {
			s.t.memberMsgs.Add(1)
			if s.run.joiners[string(m.From)] {
				s.t.joinerMsgs.Add(1)
			}
		}
	}
	if len(kept) < len(rpc.Publish) {
		rpc.Publish = kept
		if len(kept) == 0 && len(rpc.Subscriptions) == 0 && rpc.Control == nil {
			return nil
		}
		if raw, err = rpc.Marshal(); err != nil {
			return err
		}
	}
	s.buf = append(binary.AppendUvarint(make([]byte, 0, len(raw)+binary.MaxVarintLen64), uint64(len(raw))), raw...)
	return nil
}
