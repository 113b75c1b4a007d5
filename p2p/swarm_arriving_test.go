package p2p

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/internal/hostile"
)

// WATCH_HAVE2 over a pipe: the HAVE, then ARRIVING for a chunk being received at the time, ARRIVING the moment
// another begins to arrive, HAVE_ADD once it is stored; a server without cut-through answers bad request.
func TestServerWatchHave2(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	st, m, chunks := partialMem(t, ctx, 0)
	blob := m.CID()
	srv, client, watchDone := servePipe(t, ctx, st)
	defer func() { cancel(); <-watchDone }() // the watch of a partial blob runs until its lifetime ends
	a1 := srv.arriving.begin(blob, 1, len(chunks[1]))
	if err := writeFrame(client, msgWatchHave2, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readResponse(client, nil, msgHave); err != nil {
		t.Fatal(err)
	}
	_, p, err := readResponse(client, nil, msgArriving)
	if idx, err2 := decodeArriving(p, 3); err != nil || err2 != nil || len(idx) != 1 || idx[0] != 1 {
		t.Fatalf("arriving = %v, %v %v", idx, err, err2)
	}
	a2 := srv.arriving.begin(blob, 2, len(chunks[2]))
	srv.haves.arrive(blob, 2)
	_, p, err = readResponse(client, nil, msgArriving)
	if idx, err2 := decodeArriving(p, 3); err != nil || err2 != nil || len(idx) != 1 || idx[0] != 2 {
		t.Fatalf("arriving = %v, %v %v", idx, err, err2)
	}
	if err := st.PutChunk(ctx, blob, 2, chunks[2]); err != nil {
		t.Fatal(err)
	}
	a2.finish(true)
	srv.haves.publish(blob, 2)
	_, p, err = readResponse(client, nil, msgHaveAdd)
	if idx, err2 := decodeHaveAdd(p, 3); err != nil || err2 != nil || len(idx) != 1 || idx[0] != 2 {
		t.Fatalf("have add = %v, %v %v", idx, err, err2)
	}
	a1.finish(false)
	if n := len(srv.arriving.m); n != 0 {
		t.Errorf("%d arrivals left registered", n)
	}

	// A version without cut-through.
	old, oc, done := servePipe(t, ctx, st)
	old.noCut = true
	if err := writeFrame(oc, msgWatchHave2, blob.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readResponse(oc, nil, msgHave); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("old server: %v, want bad request", err)
	}
	if err := <-done; !errors.Is(err, errStopServing) {
		t.Fatalf("old server ended with %v", err)
	}
}

// A forward over a pipe: the CHUNK header at once, the bytes as they arrive but the last one only once the chunk
// is verified; a chunk that fails before it is verified ends the forward with an error (the stream is reset) and
// the client never sees a complete frame.
func TestServerForwardsArriving(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, verified := range []bool{true, false} {
		st, m, chunks := partialMem(t, ctx, 0)
		blob := m.CID()
		srv, client, done := servePipe(t, ctx, st)
		size := len(chunks[1])
		a := srv.arriving.begin(blob, 1, size)
		half := size / 2
		copy(a.buf, chunks[1][:half])
		a.progress(half)
		if err := writeFrame(client, msgGetChunks, encodeGetChunks(blob, []chunkRange{{1, 1}})); err != nil {
			t.Fatal(err)
		}
		typ, n, err := readHeader(client)
		if err != nil || typ != msgChunk || n != chunkFrameOverhead+size {
			t.Fatalf("header %s %d, %v", typ, n, err)
		}
		got := make([]byte, chunkFrameOverhead+size)
		if _, err := io.ReadFull(client, got[:chunkFrameOverhead+half]); err != nil {
			t.Fatal(err)
		}
		copy(a.buf[half:], chunks[1][half:])
		a.progress(size)
		// Everything but the last byte comes before the verification.
		if _, err := io.ReadFull(client, got[chunkFrameOverhead+half:len(got)-holdBack]); err != nil {
			t.Fatal(err)
		}
		last := make(chan error, 1)
		go func() {
			_, err := io.ReadFull(client, got[len(got)-holdBack:])
			last <- err
		}()
		select {
		case err := <-last:
			t.Fatalf("last byte read before the chunk was verified (%v)", err)
		case <-time.After(100 * time.Millisecond):
		}
		a.finish(verified)
		if verified {
			if err := <-last; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[chunkFrameOverhead:], chunks[1]) {
				t.Fatal("forwarded chunk differs")
			}
			client.Close()
			<-done
		} else {
			if err := <-done; !errors.Is(err, errForwardBroken) {
				t.Fatalf("server ended with %v, want %v", err, errForwardBroken)
			}
			client.Close()
			if err := <-last; err == nil {
				t.Fatal("last byte of a failed chunk forwarded")
			}
		}
		srv.mu.Lock()
		if srv.forwarding != 0 {
			t.Errorf("%d forwards counted after the end", srv.forwarding)
		}
		srv.mu.Unlock()
		if n := len(srv.arriving.m); n != 0 {
			t.Errorf("%d arrivals left registered", n)
		}
	}
}

// gatedPuts holds every PutChunk until release is closed: a forwarder whose verification has not happened yet.
type gatedPuts struct {
	*badgerstore.Store
	release chan struct{}
	puts    atomic.Int64 // PutChunk calls that have returned
	fail    bool         // PutChunk fails every chunk as corrupt once released
}

func (s *gatedPuts) PutChunk(ctx context.Context, blob cid.Cid, i int, data []byte) error {
	return s.PutChunkSum(ctx, blob, i, data, [32]byte{})
}

func (s *gatedPuts) PutChunkSum(ctx context.Context, blob cid.Cid, i int, data []byte, sum [32]byte) error {
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer s.puts.Add(1)
	if s.fail {
		return blobstore.ErrInvalidData
	}
	return s.Store.PutChunk(ctx, blob, i, data)
}

// startGated starts a node whose store holds every PutChunk until its release is closed.
func startGated(t *testing.T, fail bool, mod func(*Config)) (*testNode, *gatedPuts) {
	t.Helper()
	dir := t.TempDir()
	st, err := badgerstore.Open(dir+"/store", badgerstore.Options{Logger: testLog})
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedPuts{Store: st, release: make(chan struct{}), fail: fail}
	cfg := loopbackConfig(dir + "/p2p")
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(context.Background(), cfg, g, logger(t))
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	n.fp = testFetchParams
	tn := &testNode{Node: n, store: st, dir: dir}
	t.Cleanup(tn.close)
	return tn, g
}

// arrived is how many bytes of chunk i of blob tn is receiving now (-1: none registered).
func arrived(tn *testNode, blob cid.Cid, i int) int {
	a := tn.srv.arriving.get(blob, i)
	if a == nil {
		return -1
	}
	defer a.release()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// Cut-through between real hosts: the forwarder f receives chunk 0 from the seed but its PutChunk is held, so it
// has not verified the chunk; the downstream d, fetching only from f, has received all of chunk 0 but the held
// back byte before f's first PutChunk returns. Once f verifies, d completes with the right bytes.
func TestCutThroughBeforeVerified(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 3*blobstore.ChunkSize)
	seed := startNode(t, "", nil)
	blob := put(t, seed, data)
	f, gate := startGated(t, false, nil)
	d := startNode(t, "", nil)
	connect(t, f, seed)
	connect(t, d, f)
	errs := make(chan error, 2)
	go func() { errs <- fetch(t, f, blob, seed) }()
	eventually(t, "f receives a chunk whole", func() bool {
		for i := range 3 {
			if arrived(f, blob, i) == blobstore.ChunkSize {
				return true
			}
		}
		return false
	})
	go func() { errs <- fetch(t, d, blob, f) }()
	eventually(t, "d receives a chunk from f but its last byte", func() bool {
		for i := range 3 {
			if arrived(d, blob, i) == blobstore.ChunkSize-holdBack {
				return true
			}
		}
		return false
	})
	if n := gate.puts.Load(); n != 0 {
		t.Fatalf("f stored %d chunks before d received bytes", n)
	}
	close(gate.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	checkBlob(t, d, blob, data)
	if f.srv.served.Load() == 0 {
		t.Error("f served nothing")
	}
}

// A forwarder whose upstream sends a corrupt chunk resets the forward instead of completing it: the downstream
// counts an ordinary failed request (no corruption blamed on the forwarder, nothing stored), and the forwarder
// blames its upstream.
func TestCutThroughCorruptUpstreamResets(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 2*blobstore.ChunkSize)
	seed := startNode(t, "", nil)
	blob := put(t, seed, data)
	var fBad, dBad atomic.Int64
	f, gate := startGated(t, true, func(c *Config) { c.OnBadChunk = func(peer.ID) { fBad.Add(1) } })
	d := startNode(t, "", func(c *Config) { c.OnBadChunk = func(peer.ID) { dBad.Add(1) } })
	connect(t, f, seed)
	connect(t, d, f)
	fErr := make(chan error, 1)
	go func() { fErr <- fetch(t, f, blob, seed) }()
	eventually(t, "f receives a chunk whole", func() bool {
		return arrived(f, blob, 0) == blobstore.ChunkSize || arrived(f, blob, 1) == blobstore.ChunkSize
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dErr := make(chan error, 1)
	go func() { dErr <- d.Fetch(ctx, blob, []peer.ID{f.ID()}, nil) }()
	eventually(t, "d receives a chunk from f but its last byte", func() bool {
		return arrived(d, blob, 0) == blobstore.ChunkSize-holdBack || arrived(d, blob, 1) == blobstore.ChunkSize-holdBack
	})
	close(gate.release) // f's verification fails: the chunk was corrupt
	eventually(t, "d's request fails", func() bool { return arrived(d, blob, 0) < 0 && arrived(d, blob, 1) < 0 })
	if err := <-fErr; !errors.Is(err, ErrNoPeers) {
		t.Fatalf("f's fetch: %v, want ErrNoPeers (its only source sent bad data)", err)
	}
	cancel()
	<-dErr
	if fBad.Load() == 0 {
		t.Error("f did not blame its upstream")
	}
	if dBad.Load() != 0 || d.score(f.ID()) <= scoreBadData {
		t.Errorf("d blamed f for corruption (%d bad chunks, score %d)", dBad.Load(), d.score(f.ID()))
	}
	if have, err := d.store.HaveChunks(context.Background(), blob); err == nil && (have[0] || have[1]) {
		t.Errorf("d stored %v", have)
	}
}

// Old and new peers share one swarm: a node of the version before cut-through (no WATCH_HAVE2, no forwarding,
// and its fetches watch with WATCH_HAVE) and new nodes fetch from one seed and from each other.
func TestCutThroughInteropOldPeer(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 12*blobstore.ChunkSize+5)
	seed := startNode(t, "", nil)
	blob := put(t, seed, data)
	seed.srv.beforeSend = func(int, []byte) { time.Sleep(20 * time.Millisecond) }
	old := startNode(t, "", nil)
	old.srv.noCut, old.fp.cutThrough = true, false
	nodes := []*testNode{old, startNode(t, "", nil), startNode(t, "", nil)}
	for i, a := range nodes {
		connect(t, a, seed)
		for _, b := range nodes[i+1:] {
			connect(t, a, b)
		}
	}
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() { errs <- fetch(t, n, blob) }()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		checkBlob(t, n, blob, data)
	}
	if old.srv.arriving.m != nil {
		t.Error("the old node registered arrivals")
	}
}

// hostileArriver is a member that answers WATCH_HAVE2 with an empty HAVE and ARRIVING for every chunk, and each
// GET_CHUNKS with a CHUNK header and then nothing (or, with corrupt, a complete frame of wrong bytes).
func hostileArriver(t *testing.T, m *blobstore.Manifest, corrupt bool) *hostile.Peer {
	p := hostilePeers(t, 1, hostile.PeerOptions{})[0]
	quit := make(chan struct{})
	t.Cleanup(func() { close(quit) })
	stall := func() {
		select {
		case <-quit:
		case <-time.After(15 * time.Second):
		}
	}
	n := m.NumChunks()
	serveChunkRequests(p, func(st network.Stream, req request) bool {
		switch req.Type {
		case msgGetManifest:
			writeFrame(st, msgManifest, m.Encode())
		case msgWatchHave2:
			writeFrame(st, msgHave, encodeHave(make([]bool, n)))
			all := make([]uint32, n)
			for i := range all {
				all[i] = uint32(i)
			}
			writeFrame(st, msgArriving, encodeHaveAdd(all))
			stall()
			st.Reset()
			return false
		case msgGetChunks:
			i := int(req.Ranges[0].First)
			b := make([]byte, frameHeaderLen+chunkFrameOverhead+m.ChunkLen(i))
			frameHeader(b, msgChunk, len(b)-frameHeaderLen)
			putIndex(b[frameHeaderLen:], i)
			if !corrupt {
				st.Write(b[:frameHeaderLen+chunkFrameOverhead+100]) // a header and a little, then a stall
				stall()
				st.Reset()
				return false
			}
			st.Write(b) // zeros: a complete frame that fails the hash
		default:
			writeFrame(st, msgError, encodeError(ErrUnsupported))
			st.Reset()
			return false
		}
		return true
	})
	return p
}

// serveChunkRequests makes p answer each chunk-protocol request of a stream with handle, in order, until handle
// returns false or a read fails (20 s per stream); a request that does not decode resets the stream.
func serveChunkRequests(p *hostile.Peer, handle func(st network.Stream, req request) bool) {
	p.Host.SetStreamHandler(ChunkProtocol, func(st network.Stream) {
		defer st.Close()
		st.SetDeadline(time.Now().Add(20 * time.Second))
		for {
			typ, pl, err := readFrame(st, nil)
			if err != nil {
				return
			}
			req, err := decodeRequest(typ, pl)
			if err != nil {
				st.Reset()
				return
			}
			if !handle(st, req) {
				return
			}
		}
	})
}

// Threat 9.2 "ARRIVING lies": a member announces every chunk arriving and, asked for one, sends a CHUNK header
// and stalls (or forwards a complete chunk of wrong bytes). The receiver still completes from the seed: the stalled
// requests fail at their deadline and the liar is dropped, or its claims expire; a complete wrong chunk drops it at
// once and blames it.
func TestThreatArrivingLiar(t *testing.T) {
	t.Parallel()
	for _, corrupt := range []bool{false, true} {
		data := randomBlob(t, 6*blobstore.ChunkSize)
		seed := startNode(t, "", nil)
		blob := put(t, seed, data)
		seed.srv.beforeSend = func(int, []byte) { time.Sleep(100 * time.Millisecond) } // the liar's claims come first
		m, _ := manifestOf(data)
		liar := hostileArriver(t, m, corrupt)
		var bad atomic.Int64
		r := startNode(t, "", func(c *Config) { c.OnBadChunk = func(peer.ID) { bad.Add(1) } })
		r.fp.requestTimeout = 2 * time.Second
		connect(t, r, seed)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := liar.Connect(ctx, peer.AddrInfo{ID: r.ID(), Addrs: r.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		err := r.Fetch(ctx, blob, []peer.ID{liar.ID(), seed.ID()}, nil)
		cancel()
		if err != nil {
			t.Fatalf("corrupt %v: %v", corrupt, err)
		}
		t.Logf("corrupt %v: fetched in %v, liar's score %d", corrupt, time.Since(t0).Round(time.Millisecond), r.score(liar.ID()))
		checkBlob(t, r, blob, data)
		if corrupt && (bad.Load() == 0 || r.score(liar.ID()) > scoreBadData) {
			t.Errorf("corrupt forwarder: %d bad chunks blamed, score %d", bad.Load(), r.score(liar.ID()))
		}
		liar.ResetStreams()
	}
}

func TestDecodeArrivingRejects(t *testing.T) {
	t.Parallel()
	good := encodeHaveAdd([]uint32{0, 5})
	if idx, err := decodeArriving(good, 6); err != nil || len(idx) != 2 || idx[1] != 5 {
		t.Fatalf("good: %v %v", idx, err)
	}
	for name, p := range map[string][]byte{
		"empty":        {},
		"zero":         encodeHaveAdd(nil),
		"out of range": encodeHaveAdd([]uint32{6}),
		"too many":     encodeHaveAdd(make([]uint32, maxHaveAdd+1)),
		"truncated":    good[:len(good)-1],
		"trailing":     append(append([]byte(nil), good...), 0),
	} {
		if _, err := decodeArriving(p, 6); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzDecodeArriving(f *testing.F) {
	f.Add(encodeHaveAdd([]uint32{0, 5}), 6)
	f.Add(encodeHaveAdd([]uint32{7}), 6)
	f.Add([]byte{1}, 1)
	f.Fuzz(func(t *testing.T, p []byte, n int) {
		idx, err := decodeArriving(p, n)
		if err != nil {
			return
		}
		if len(idx) == 0 || len(idx) > maxHaveAdd {
			t.Fatalf("%d indexes accepted", len(idx))
		}
		for _, i := range idx {
			if i < 0 || i >= n {
				t.Fatalf("index %d of %d accepted", i, n)
			}
		}
	})
}

// Threat 9.2 "cut-through forward hog": one peer asks for an arriving chunk on many streams and never reads. At
// most maxForwardsPeer forwards are served to it at once; the others get NO_CHUNK (the chunk is not stored yet).
func TestThreatForwardHog(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	st, m, chunks := partialMem(t, ctx, 0)
	blob := m.CID()
	srv := newServer(ctx, st, testLog)
	a := srv.arriving.begin(blob, 1, len(chunks[1]))
	b := &peerBudget{slots: make(chan struct{}, maxServingPerPeer)}
	const streams = maxForwardsPeer + 3
	done := make(chan error, streams)
	refused := make(chan struct{}, streams)
	var clients []net.Conn
	for range streams {
		client, server := net.Pipe()
		clients = append(clients, client)
		go func() { done <- srv.serve(server, b); server.Close() }()
		go func() {
			writeFrame(client, msgGetChunks, encodeGetChunks(blob, []chunkRange{{1, 1}}))
			typ, n, err := readHeader(client)
			if err == nil && typ == msgNoChunk {
				readPayload(client, typ, n, nil)
				refused <- struct{}{}
				return
			}
			var idx [chunkFrameOverhead]byte
			io.ReadFull(client, idx[:]) // a forward's header and index are read, and then nothing: the hog
		}()
	}
	for range streams - maxForwardsPeer {
		select {
		case <-refused:
		case <-time.After(10 * time.Second):
			t.Fatal("requests past the forward budget were not refused")
		}
	}
	srv.mu.Lock()
	n := srv.forwarding
	srv.mu.Unlock()
	if n != maxForwardsPeer {
		t.Errorf("%d forwards served to one peer, budget %d", n, maxForwardsPeer)
	}
	cancel()
	a.finish(false)
	for _, c := range clients {
		c.Close()
	}
	for range streams {
		<-done
	}
	if srv.forwarding != 0 || len(srv.arriving.m) != 0 || a.refs != 0 {
		t.Errorf("left: %d forwards, %d arrivals, %d references", srv.forwarding, len(srv.arriving.m), a.refs)
	}
}

// slowSeed is a member holding data whole that sends each chunk's first half at once and the rest only once
// release is closed: an upstream slower than its downstream.
func slowSeed(t *testing.T, data []byte, release <-chan struct{}) *hostile.Peer {
	p := hostilePeers(t, 1, hostile.PeerOptions{})[0]
	m, chunks := manifestOf(data)
	serveChunkRequests(p, func(st network.Stream, req request) bool {
		switch req.Type {
		case msgGetManifest:
			writeFrame(st, msgManifest, m.Encode())
		case msgGetHave, msgWatchHave, msgWatchHave2:
			all := make([]bool, len(chunks))
			for i := range all {
				all[i] = true
			}
			writeFrame(st, msgHave, encodeHave(all))
		case msgGetChunks:
			for _, r := range req.Ranges {
				for i := int(r.First); i < int(r.First+r.Count); i++ {
					b := make([]byte, frameHeaderLen+chunkFrameOverhead, frameHeaderLen+chunkFrameOverhead+len(chunks[i]))
					frameHeader(b, msgChunk, chunkFrameOverhead+len(chunks[i]))
					putIndex(b[frameHeaderLen:], i)
					b = append(b, chunks[i]...)
					half := frameHeaderLen + chunkFrameOverhead + len(chunks[i])/2
					if _, err := st.Write(b[:half]); err != nil {
						return false
					}
					select {
					case <-release:
					case <-time.After(15 * time.Second):
						st.Reset()
						return false
					}
					if _, err := st.Write(b[half:]); err != nil {
						return false
					}
				}
			}
		}
		return true
	})
	return p
}

// Cut-through starts before the forwarder has the whole chunk: its upstream has sent half of each chunk and holds
// the rest, and the downstream, fetching only from the forwarder, already receives bytes of a chunk.
func TestCutThroughBeforeWhole(t *testing.T) {
	t.Parallel()
	data := randomBlob(t, 3*blobstore.ChunkSize)
	m, _ := manifestOf(data)
	blob := m.CID()
	release := make(chan struct{})
	seed := slowSeed(t, data, release)
	f, d := startNode(t, "", nil), startNode(t, "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := seed.Connect(ctx, peer.AddrInfo{ID: f.ID(), Addrs: f.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	connect(t, d, f)
	errs := make(chan error, 2)
	go func() { errs <- f.Fetch(ctx, blob, []peer.ID{seed.ID()}, nil) }()
	half := func(tn *testNode) int {
		for i := range 3 {
			if n := arrived(tn, blob, i); n > 0 {
				return i
			}
		}
		return -1
	}
	eventually(t, "f has half a chunk", func() bool {
		i := half(f)
		return i >= 0 && arrived(f, blob, i) == blobstore.ChunkSize/2
	})
	go func() { errs <- fetch(t, d, blob, f) }()
	eventually(t, "d receives bytes of a chunk f has half of", func() bool {
		i := half(d)
		return i >= 0 && arrived(d, blob, i) > 0 && arrived(f, blob, i) == blobstore.ChunkSize/2
	})
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	checkBlob(t, d, blob, data)
}
