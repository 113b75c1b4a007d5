package fleetsim

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/p2p"
)

// TestSpreadFollowsPaths: hops, pulls on the path, rounds, completeness and untraceable deliveries of records
// made up by hand.
func TestSpreadFollowsPaths(t *testing.T) {
	t.Parallel()
	ids := []peer.ID{"m0", "m1", "m2", "m3", "m4"}
	tr := newTracer(time.Now(), ids, 4) // m4 is a joiner
	ev := func(recv int32, owner, from peer.ID, seq uint64, via p2p.MemberVia, added bool) {
		tr.hook(recv)(p2p.MemberEvent{Owner: owner, Seq: seq, From: from, Via: via, Added: added})
	}
	round := func(m int32) { tr.hook(m)(p2p.MemberEvent{Round: true}) }
	// m0's record 1: m1 from m0 (gossip), m2 from m1 (pull, after a round of m2), m3 from m2 (gossip).
	ev(1, "m0", "m0", 1, p2p.ViaGossip, true)
	round(2)
	ev(2, "m0", "m1", 1, p2p.ViaPull, true)
	ev(3, "m0", "m2", 1, p2p.ViaGossip, true)
	// m1's record 7 reaches m0 only, from m3, which never took it: its path cannot be followed.
	ev(0, "m1", "m3", 7, p2p.ViaRelay, true)
	// A peer that is not a member of the run is counted apart.
	ev(0, "stranger", "m1", 1, p2p.ViaGossip, true)
	if tr.unknown != 1 {
		t.Errorf("unknown = %d, want 1", tr.unknown)
	}
	if got := tr.added[0].Load(); got != 3 {
		t.Errorf("members that took m0: %d, want 3", got)
	}
	p := tr.paths()
	none := func(a, b int32) bool { return false }
	start := func(int32) time.Duration { return -1 } // before every event, however coarse the clock
	s := p.spread(p.firsts(4, func(o int32) bool { return o < 4 }, start), none, nil)
	if s.Records != 2 || s.Complete != 1 || s.Deliveries != 4 || s.Unknown != 1 {
		t.Fatalf("spread %+v: want 2 records, 1 complete, 4 deliveries, 1 unknown", s)
	}
	if s.Hops.Max != 3 || s.PullHops.Max != 1 || s.Rounds.Max != 1 || s.ViaPull != 1 || s.ViaRelay != 1 {
		t.Errorf("spread %+v: want 3 hops, 1 pull on the path, 1 round", s)
	}
	if want := []int{0, 1, 1, 1}; !slices.Equal(s.HopsHist, want) {
		t.Errorf("hops histogram %v, want %v", s.HopsHist, want)
	}
	ring := func(a, b int32) bool { return a+b == 1 } // only m0-m1 is a bootstrap link
	// Every member one hop from every other: m0's record took 1, 2 and 3 hops, the fewest only to m1.
	adjacent := func(a, b int32) int { return 1 }
	s = p.spread(p.firsts(4, func(o int32) bool { return o == 0 }, start), ring, adjacent)
	if s.OverBootstrap != 0.5 {
		t.Errorf("gossip over bootstrap links %.2f, want 0.5", s.OverBootstrap)
	}
	if s.HopsDeliveryMean != 2 || s.DistMean != 1 || s.Shortest != 1.0/3 {
		t.Errorf("per delivery %.2f hops, %.2f fewest, %.2f shortest; want 2, 1, 0.33", s.HopsDeliveryMean, s.DistMean, s.Shortest)
	}
}

// TestTracerWallClock: the tracer times events on the wall clock, the clock of the records' seqs, so that a step
// of the clock during a run does not shift the refreshes' selection and times (Run).
func TestTracerWallClock(t *testing.T) {
	t.Parallel()
	tr := newTracer(time.Now(), nil, 0)
	if !tr.t0.Equal(tr.t0.Round(0)) || strings.Contains(tr.t0.String(), "m=") {
		t.Errorf("tracer's t0 %v has a monotonic reading", tr.t0)
	}
}

// TestRPCStreamLoss: with loss 1 every gossip message is dropped and control passes; an RPC left empty is
// skipped; member records are counted, a joiner's apart.
func TestRPCStreamLoss(t *testing.T) {
	t.Parallel()
	topic, other := p2p.MemberTopic, "/other"
	frame := func(rpc *pb.RPC) []byte {
		raw, err := rpc.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return append(binary.AppendUvarint(nil, uint64(len(raw))), raw...)
	}
	msg := func(from, topic string) *pb.Message {
		return &pb.Message{From: []byte(from), Data: []byte("x"), Topic: &topic}
	}
	var in []byte
	in = append(in, frame(&pb.RPC{Publish: []*pb.Message{msg("a", topic), msg("j", topic), msg("a", other)}})...)
	in = append(in, frame(&pb.RPC{Publish: []*pb.Message{msg("a", topic)}, Control: &pb.ControlMessage{Ihave: []*pb.ControlIHave{{TopicID: &topic}}}})...)
	for _, loss := range []float64{0, 1} {
		var tf traffic
		s := &rpcStream{r: bufio.NewReader(bytes.NewReader(in)), p: loss, t: &tf, run: &runInfo{joiners: map[string]bool{"j": true}}}
		out, err := io.ReadAll(s)
		if err != nil {
			t.Fatal(err)
		}
		var rpcs []*pb.RPC
		r := bufio.NewReader(bytes.NewReader(out))
		for {
			n, err := binary.ReadUvarint(r)
			if err == io.EOF {
				break
			}
			raw := make([]byte, n)
			if _, err := io.ReadFull(r, raw); err != nil {
				t.Fatal(err)
			}
			var rpc pb.RPC
			if err := rpc.Unmarshal(raw); err != nil {
				t.Fatal(err)
			}
			rpcs = append(rpcs, &rpc)
		}
		switch loss {
		case 0:
			if !bytes.Equal(out, in) || tf.memberMsgs.Load() != 3 || tf.joinerMsgs.Load() != 1 || tf.lost.Load() != 0 {
				t.Errorf("no loss: changed %v, %d member records (want 3), %d a joiner's (want 1), %d lost", !bytes.Equal(out, in),
					tf.memberMsgs.Load(), tf.joinerMsgs.Load(), tf.lost.Load())
			}
		case 1:
			if len(rpcs) != 1 || len(rpcs[0].Publish) != 0 || rpcs[0].Control == nil || tf.lost.Load() != 4 || tf.memberMsgs.Load() != 0 {
				t.Errorf("all lost: %d RPCs (want the control one only), %d lost (want 4), %d counted (want 0)", len(rpcs),
					tf.lost.Load(), tf.memberMsgs.Load())
			}
		}
	}
}
