package p2p

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/hostile"
)

// knownStub plays this node's transfer's view of the watcher: chunk → "held" or "arriving".
type knownStub struct {
	mu sync.Mutex
	m  map[uint32]string
}

func (k *knownStub) set(m map[uint32]string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m = m
}

func (k *knownStub) holds(_ cid.Cid, p peer.ID, arriving bool, idx []uint32, out []bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for j, i := range idx {
		out[j] = p == "watcher" && (k.m[i] == "held" || (arriving && k.m[i] == "arriving"))
	}
}

// watchPipe serves a watch over a pipe for the peer "watcher", whose holdings known plays.
func watchPipe(t *testing.T, ctx context.Context, st blobstore.ChunkStore, known *knownStub) (*server, net.Conn, <-chan error) {
	t.Helper()
	srv := newServer(ctx, st, testLog)
	srv.holds = known.holds
	client, end := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- srv.serve(end, &peerBudget{id: "watcher", slots: make(chan struct{}, maxServingPerPeer)})
		end.Close()
	}()
	t.Cleanup(func() { client.Close() })
	return srv, client, done
}

func readIndexes(t *testing.T, r io.Reader, want msgType) []int {
	t.Helper()
	_, p, err := readResponse(r, nil, want)
	if err != nil {
		t.Fatalf("want %s: %v", want, err)
	}
	idx, err := decodeHaveAdd(p, 3)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// A watch leaves out what its client is known to hold (docs/design.md 6.7): no ARRIVING of a chunk the client holds
// or receives, no HAVE_ADD of a chunk it holds; a chunk left out is announced at the next resync once the client is
// no longer known to hold it; a chunk announced ARRIVING always gets its HAVE_ADD; and a watch that left anything
// out ends, once the blob is complete here, with a whole HAVE.
func TestWatchLeavesOutHeld(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, m, chunks := partialMem(t, ctx, 0)
	blob := m.CID()
	known := &knownStub{m: map[uint32]string{1: "arriving", 2: "held"}}
	srv, client, done := watchPipe(t, ctx, st, known)
	if err := writeFrame(client, msgWatchHave2, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readResponse(client, nil, msgHave); err != nil {
		t.Fatal(err)
	}
	a1 := srv.arriving.begin(blob, 1, len(chunks[1]))
	srv.haves.arrive(blob, 1) // the client receives it: left out
	srv.haves.arrive(blob, 2) // the client holds it: left out
	// Stored and published: left out too.
	putPublished(t, ctx, srv, st, blob, 2, chunks[2])
	// The client loses chunk 2 (its bitmap says so now): the resync announces it. It is the next frame, so the
	// three announcements above were not sent.
	time.Sleep(50 * time.Millisecond)
	known.set(nil)
	t0 := time.Now()
	if idx := readIndexes(t, client, msgHaveAdd); len(idx) != 1 || idx[0] != 2 {
		t.Fatalf("after the resync: HAVE_ADD %v, want [2]", idx)
	}
	if d := time.Since(t0); d > 3*watchResync {
		t.Errorf("left-out chunk announced %v after the client lost it", d)
	}
	// Announced ARRIVING, then held by the client: its HAVE_ADD is still sent (it ends the client's claim).
	srv.haves.arrive(blob, 1)
	if idx := readIndexes(t, client, msgArriving); len(idx) != 1 || idx[0] != 1 {
		t.Fatalf("ARRIVING %v, want [1]", idx)
	}
	known.set(map[uint32]string{1: "held"})
	if err := st.PutChunk(ctx, blob, 1, chunks[1]); err != nil {
		t.Fatal(err)
	}
	a1.finish(true)
	srv.haves.publish(blob, 1)
	if idx := readIndexes(t, client, msgHaveAdd); len(idx) != 1 || idx[0] != 1 {
		t.Fatalf("HAVE_ADD %v, want [1]", idx)
	}
	// Complete with nothing left out: the watch ends without a HAVE and the stream takes the next request.
	if err := writeFrame(client, msgGetManifest, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, err := readManifest(client, blob); err != nil {
		t.Fatalf("after the watch: %v", err)
	}
	// Chunk 2's ARRIVING is counted only when its wake-up comes before its HAVE_ADD's.
	if n := srv.leftOut.Load(); n < 2 || n > 3 {
		t.Errorf("%d announcements left out, want 2 or 3", n)
	}

	// A watch that left a chunk out ends with a whole HAVE.
	st2, _, _ := partialMem(t, ctx, 0, 1)
	known2 := &knownStub{m: map[uint32]string{2: "held"}}
	srv2, client2, done2 := watchPipe(t, ctx, st2, known2)
	openWatch(t, client2, blob, 3)
	putPublished(t, ctx, srv2, st2, blob, 2, chunks[2])
	_, p, err := readResponse(client2, nil, msgHave)
	if err != nil {
		t.Fatalf("want the whole HAVE: %v", err)
	}
	if have, err := decodeHave(p, 3); err != nil || !have[0] || !have[1] || !have[2] {
		t.Fatalf("final HAVE %v, %v", have, err)
	}
	client.Close()
	client2.Close()
	for _, d := range []<-chan error{done, done2} {
		if err := <-d; err != nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, io.EOF) {
			t.Errorf("server ended with %v", err)
		}
	}
}

// A swarm of one seed and three receivers fetching from each other: each receiver's watches leave out
// announcements the others cannot need, and every copy is whole.
func TestSwarmLeavesOutAnnouncements(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 12*blobstore.ChunkSize+5)
	seed := startNode(t, "", nil)
	blob := put(t, seed, data)
	seed.srv.beforeSend = func(int, []byte) { time.Sleep(20 * time.Millisecond) } // the receivers swap chunks
	rs := []*testNode{startNode(t, "", nil), startNode(t, "", nil), startNode(t, "", nil)}
	for i, r := range rs {
		connect(t, r, seed)
		for _, o := range rs[:i] {
			connect(t, r, o)
		}
	}
	errs := make(chan error, len(rs))
	for i, r := range rs {
		from := []*testNode{seed}
		for j, o := range rs {
			if j != i {
				from = append(from, o)
			}
		}
		go func() { errs <- fetch(t, r, blob, from...) }()
	}
	for range rs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var left int64
	for _, r := range rs {
		checkBlob(t, r, blob, data)
		left += r.srv.leftOut.Load()
	}
	t.Logf("%d announcements left out", left)
	if left == 0 {
		t.Error("no announcement left out")
	}
}

// Threat 9.2 "watch claims": a member claims in its HAVE to hold every chunk (it holds none). The node leaves the
// announcements out of the liar's own watch only, which still ends with a whole HAVE once the blob is complete here;
// an honest watcher is told of every chunk as it is stored.
func TestThreatWatchClaims(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 8*blobstore.ChunkSize)
	m, _ := manifestOf(data)
	n := m.NumChunks()
	seed := startNode(t, "", nil)
	blob := put(t, seed, data)
	seed.srv.beforeSend = func(int, []byte) { time.Sleep(50 * time.Millisecond) }
	ps := hostilePeers(t, 2, hostile.PeerOptions{})
	liar, honest := ps[0], ps[1]
	quit := make(chan struct{})
	t.Cleanup(func() { close(quit) })
	serveChunkRequests(liar, func(st network.Stream, req request) bool {
		switch req.Type {
		case msgGetManifest:
			writeFrame(st, msgManifest, m.Encode())
		case msgWatchHave2:
			all := make([]bool, n)
			for i := range all {
				all[i] = true
			}
			writeFrame(st, msgHave, encodeHave(all))
			select {
			case <-quit:
			case <-time.After(15 * time.Second):
			}
			st.Reset()
			return false
		case msgGetChunks:
			for _, r := range req.Ranges {
				for i := r.First; i < r.First+r.Count; i++ {
					b := make([]byte, frameHeaderLen+chunkFrameOverhead)
					frameHeader(b, msgNoChunk, chunkFrameOverhead)
					putIndex(b[frameHeaderLen:], int(i))
					st.Write(b)
				}
			}
		}
		return true
	})
	x := startNode(t, "", nil)
	connect(t, x, seed)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range ps {
		if err := p.Connect(ctx, peer.AddrInfo{ID: x.ID(), Addrs: x.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	fetched := make(chan error, 1)
	go func() { fetched <- x.Fetch(ctx, blob, []peer.ID{liar.ID(), seed.ID()}, nil) }()
	// Both watch x as soon as it has begun the blob, and before the liar's HAVE is in x's transfer: they see the
	// chunks x stores from then on.
	eventually(t, "x begins the blob", func() bool {
		_, err := x.store.HaveChunks(ctx, blob)
		return err == nil
	})
	type view struct {
		have           []bool
		adds, arriving int
		haves          int
		err            error
	}
	watchX := func(p *hostile.Peer) <-chan view {
		c := make(chan view, 1)
		go func() {
			v := view{have: make([]bool, n)}
			defer func() { c <- v }()
			st, err := p.Host.NewStream(ctx, x.ID(), ChunkProtocol)
			if err != nil {
				v.err = err
				return
			}
			defer st.Close()
			st.SetDeadline(time.Now().Add(25 * time.Second))
			if v.err = writeFrame(st, msgWatchHave2, blob.Bytes()); v.err != nil {
				return
			}
			st.CloseWrite()
			for {
				typ, pl, err := readFrame(st, nil)
				if errors.Is(err, io.EOF) {
					return
				}
				if err != nil {
					v.err = err
					return
				}
				switch typ {
				case msgHave:
					v.haves++
					if v.have, v.err = decodeHave(pl, n); v.err != nil {
						return
					}
				case msgHaveAdd:
					idx, err := decodeHaveAdd(pl, n)
					if err != nil {
						v.err = err
						return
					}
					v.adds += len(idx)
					for _, i := range idx {
						v.have[i] = true
					}
				case msgArriving:
					v.arriving++
				}
			}
		}()
		return c
	}
	lv, hv := watchX(liar), watchX(honest)
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	checkBlob(t, x, blob, data)
	l, h := <-lv, <-hv
	for name, v := range map[string]view{"liar": l, "honest": h} {
		if v.err != nil {
			t.Fatalf("%s's watch: %v", name, v.err)
		}
		for i, ok := range v.have {
			if !ok {
				t.Errorf("%s's view of x lacks chunk %d at the end of the watch", name, i)
			}
		}
	}
	t.Logf("liar: %d HAVE, %d HAVE_ADD indexes, %d ARRIVING frames; honest: %d HAVE, %d HAVE_ADD indexes, %d ARRIVING frames; %d left out",
		l.haves, l.adds, l.arriving, h.haves, h.adds, h.arriving, x.srv.leftOut.Load())
	if h.haves != 1 || h.adds == 0 {
		t.Errorf("honest watcher: %d HAVE frames and %d HAVE_ADD indexes, want 1 and every chunk stored after its HAVE", h.haves, h.adds)
	}
	if l.adds >= h.adds || l.haves != 2 || x.srv.leftOut.Load() == 0 {
		t.Errorf("liar: %d HAVE_ADD indexes (honest %d), %d HAVE frames, want its announcements left out and a whole HAVE at the end", l.adds, h.adds, l.haves)
	}
}
