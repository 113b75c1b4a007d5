package p2p

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Server-side limits of the chunk protocol.
const (
	serveIdleTimeout  = time.Minute      // to receive the next request frame on a stream
	serveWriteTimeout = 30 * time.Second // per response frame: a reader that stalls longer is dropped
	maxServing        = 32               // GET_CHUNKS requests served at once; each holds a chunk buffer
	servingWait       = 5 * time.Second  // how long a request waits for a slot before ErrBusy
	// requestReadTimeout bounds a request frame's payload once its header has arrived: a peer that sends a
	// header and then trickles (or nothing) is dropped.
	requestReadTimeout = 10 * time.Second
	// Per-peer budgets: one peer (or one identity) takes no more than its share of the server. A fetch keeps a
	// few streams per peer (docs/design.md 6.8), so honest peers stay well below them.
	maxStreamsPerPeer = 32   // chunk streams served at once for one peer; further streams are reset at once
	maxServingPerPeer = 8    // GET_CHUNKS served at once for one peer (each holds one chunk buffer)
	maxStreamsServed  = 1024 // chunk streams served at once for all peers
)

// chunkBufPool holds buffers for one chunk frame: header, index and up to ChunkSize bytes. Taken with
// getChunkBuf, given back with putChunkBuf.
var chunkBufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, frameHeaderLen+chunkFrameOverhead+blobstore.ChunkSize)
	return &b
}}

// chunkBufsHeld counts the chunk buffers taken and not given back, in this process (tests: who holds one when).
var chunkBufsHeld atomic.Int64

func getChunkBuf() *[]byte {
	chunkBufsHeld.Add(1)
	return chunkBufPool.Get().(*[]byte)
}

func putChunkBuf(bp *[]byte) {
	chunkBufsHeld.Add(-1)
	chunkBufPool.Put(bp)
}

// server answers chunk-protocol requests from the store. It serves verified chunks of partial blobs too.
type server struct {
	ctx    context.Context
	store  blobstore.ChunkStore
	log    *slog.Logger
	slots  chan struct{}
	served atomic.Int64 // chunks sent

	mu      sync.Mutex
	active  int                     // streams being served
	byPeer  map[peer.ID]*peerBudget // streams and GET_CHUNKS slots of each peer with a stream open
	refused atomic.Int64            // streams reset because a budget was spent
	// watching counts WATCH_HAVE streams served (guarded by mu); haves tells them of newly stored chunks.
	watching int
	haves    haveHub
	shared   haveShare  // bitmaps read for watches' resyncs, shared by the watches of a blob
	seeds    seedServed // chunks sent of the blobs this node seeds (swarm_served.go)
	// arriving holds the chunks this node is receiving, served to peers while they arrive (swarm_arriving.go);
	// forwarding counts those forwards (guarded by mu).
	arriving   arrivals
	forwarding int
	// holds, if set, says which chunks this node's transfer knows a peer to hold (Node.peerHolds): a watch leaves
	// them out of its announcements (swarm_have.go).
	holds   func(blob cid.Cid, p peer.ID, arriving bool, idx []uint32, out []bool)
	leftOut atomic.Int64 // announcements left out because the watcher held the chunk
	// beforeSend, if set, sees (and may alter or delay) each chunk just before it is sent: tests use it to play
	// a slow or malicious peer.
	beforeSend func(i int, data []byte)
	// noWatch makes the server answer WATCH_HAVE and WATCH_HAVE2 as a version without them does (tests of the
	// fallback to polling); noCut makes it a version without cut-through: no WATCH_HAVE2, no forwarding.
	noWatch bool
	noCut   bool
}

func newServer(ctx context.Context, store blobstore.ChunkStore, log *slog.Logger) *server {
	return &server{ctx: ctx, store: store, log: log, slots: make(chan struct{}, maxServing), byPeer: map[peer.ID]*peerBudget{}}
}

// peerBudget is one peer's share of the server.
type peerBudget struct {
	id       peer.ID // empty for a test's budget: nothing is known of the peer
	streams  int
	slots    chan struct{} // GET_CHUNKS in progress, at most maxServingPerPeer
	watches  int           // WATCH_HAVE in progress, at most maxWatchesPerPeer (guarded by server.mu)
	forwards int           // forwards of arriving chunks in progress, at most maxForwardsPeer (server.mu)
}

// admit counts a new stream of p, or refuses it when p or the server is at its stream budget.
func (s *server) admit(p peer.ID) (*peerBudget, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.byPeer[p]
	if s.active >= maxStreamsServed || (b != nil && b.streams >= maxStreamsPerPeer) {
		return nil, false
	}
	if b == nil {
		b = &peerBudget{id: p, slots: make(chan struct{}, maxServingPerPeer)}
		s.byPeer[p] = b
	}
	b.streams++
	s.active++
	return b, true
}

func (s *server) leave(p peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	if b := s.byPeer[p]; b != nil {
		if b.streams--; b.streams == 0 {
			delete(s.byPeer, p)
		}
	}
}

// errStopServing ends a stream after an ERROR answer was sent: closed, not reset, so the client reads it.
var errStopServing = errors.New("stop serving the stream")

// stream is what the server needs of a network.Stream; net.Pipe's ends have it too, for tests.
type stream interface {
	io.ReadWriter
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

func (s *server) handle(st network.Stream) {
	p := st.Conn().RemotePeer()
	b, ok := s.admit(p)
	if !ok {
		s.refused.Add(1)
		st.Reset()
		return
	}
	defer s.leave(p)
	defer st.Close()
	stop := context.AfterFunc(s.ctx, func() { st.Reset() })
	defer stop()
	if err := s.serve(st, b); err != nil {
		s.log.Debug("chunk request failed", "peer", st.Conn().RemotePeer(), "err", err)
		if !errors.Is(err, errStopServing) {
			st.Reset()
		}
	}
}

// serve answers the requests on st one after the other until the client closes its side. b is the peer's
// budget (nil: a budget of its own, for tests over a pipe). Requests are read into one fixed buffer: nothing is
// allocated from a frame header, and a frame that is not a request is refused from its header alone.
func (s *server) serve(st stream, b *peerBudget) error {
	if b == nil {
		b = &peerBudget{slots: make(chan struct{}, maxServingPerPeer)}
	}
	var buf [maxRequestLen]byte
	var sent pendingDelivery // the last response's seeded chunks, delivered once the client asks again or closes
	for {
		st.SetReadDeadline(time.Now().Add(serveIdleTimeout))
		t, n, err := readRequestHeader(st)
		if err == io.EOF {
			s.confirm(&sent)
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				// Refused from its header: say so, without reading the rest.
				if ferr := s.fail(st, err); ferr != nil {
					return ferr
				}
				return fmt.Errorf("%w: %w", errStopServing, err)
			}
			return fmt.Errorf("read request: %w", noEOF(err))
		}
		s.confirm(&sent)
		st.SetReadDeadline(time.Now().Add(requestReadTimeout))
		if _, err := io.ReadFull(st, buf[:n]); err != nil {
			return fmt.Errorf("read request: %s frame truncated: %w", t, noEOF(err))
		}
		if err := s.serveOne(st, b, t, buf[:n], &sent); err != nil {
			return err
		}
	}
}

// serveOne answers one request: with its full response, or with a single ERROR frame.
func (s *server) serveOne(st stream, b *peerBudget, t msgType, p []byte, sent *pendingDelivery) error {
	req, err := decodeRequest(t, p)
	if err != nil {
		// A client that sends garbage gets an answer saying so, and no more.
		if ferr := s.fail(st, err); ferr != nil {
			return ferr
		}
		return fmt.Errorf("%w: %w", errStopServing, err)
	}
	switch req.Type {
	case msgGetManifest:
		m, err := s.store.Manifest(s.ctx, req.Blob)
		if err != nil {
			return s.fail(st, err)
		}
		return s.send(st, msgManifest, m.Encode())
	case msgGetHave:
		have, err := s.store.HaveChunks(s.ctx, req.Blob)
		if err != nil {
			return s.fail(st, err)
		}
		return s.send(st, msgHave, encodeHave(have))
	case msgWatchHave, msgWatchHave2:
		if s.noWatch || (s.noCut && req.Type == msgWatchHave2) {
			err := fmt.Errorf("%w: unknown frame type %d", ErrProtocol, req.Type)
			if ferr := s.fail(st, err); ferr != nil {
				return ferr
			}
			return fmt.Errorf("%w: %w", errStopServing, err)
		}
		return s.serveWatch(st, b, req)
	default: // msgGetChunks
		return s.serveChunks(st, b, req, sent)
	}
}

func (s *server) serveChunks(st stream, b *peerBudget, req request, sent *pendingDelivery) error {
	wait := time.NewTimer(servingWait)
	defer wait.Stop()
	select {
	case b.slots <- struct{}{}:
		defer func() { <-b.slots }()
	case <-wait.C:
		return s.fail(st, fmt.Errorf("%w: %d chunk requests of this peer in progress", ErrBusy, maxServingPerPeer))
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-wait.C:
		return s.fail(st, fmt.Errorf("%w: %d chunk requests in progress", ErrBusy, maxServing))
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
	// The chunk buffer is taken at the first chunk read from the store: a forward and a NO_CHUNK need only a header.
	var hb [frameHeaderLen + chunkFrameOverhead]byte
	hdr := len(hb)
	var bp *[]byte
	defer func() {
		if bp != nil {
			putChunkBuf(bp)
		}
	}()
	seed := s.seeds.state(s.ctx, s, req.Blob)
	*sent = pendingDelivery{b: seed, blob: req.Blob, idx: sent.idx[:0]}
	for _, r := range req.Ranges {
		for i := int(r.First); i < int(r.First)+int(r.Count); i++ {
			ok, first := s.seeds.take(seed, i)
			if a := s.arrival(b, req.Blob, i, ok && !first); a != nil {
				// Being received here: forwarded as it arrives (cut-through). A failed forward resets the stream.
				if err := s.forward(st, b, a, i, hb[:]); err != nil {
					return err
				}
				s.served.Add(1)
				continue
			}
			var b []byte
			err := blobstore.ErrNotFound // refused: sent already while other chunks have not left (swarm_served.go)
			if ok {
				if bp == nil {
					bp = getChunkBuf()
				}
				b, err = s.store.ServeChunk(s.ctx, req.Blob, i, (*bp)[:hdr])
			}
			if err != nil {
				if first {
					s.seeds.untake(seed, i)
				}
				if s.ctx.Err() != nil {
					return s.ctx.Err()
				}
				// Not held (yet), out of range, or corrupt on disk: the client asks elsewhere.
				if !errors.Is(err, blobstore.ErrNotFound) {
					s.log.Warn("cannot serve chunk", "blob", req.Blob, "index", i, "err", err)
				}
				b = hb[:]
				frameHeader(b, msgNoChunk, chunkFrameOverhead)
				putIndex(b[frameHeaderLen:], i)
				if err := s.write(st, b); err != nil {
					return err
				}
				continue
			}
			*bp = b[:0]
			if s.beforeSend != nil {
				s.beforeSend(i, b[hdr:])
			}
			frameHeader(b, msgChunk, len(b)-frameHeaderLen)
			putIndex(b[frameHeaderLen:], i)
			if err := s.write(st, b); err != nil {
				if first {
					s.seeds.untake(seed, i)
				}
				return err
			}
			s.served.Add(1)
			if seed != nil && seed.seed {
				sent.idx = append(sent.idx, i)
				if !first {
					s.seeds.again(seed)
				}
			}
		}
	}
	return nil
}

func (s *server) write(st stream, b []byte) error {
	st.SetWriteDeadline(time.Now().Add(serveWriteTimeout))
	_, err := st.Write(b)
	return err
}

func (s *server) send(st stream, t msgType, payload []byte) error {
	st.SetWriteDeadline(time.Now().Add(serveWriteTimeout))
	return writeFrame(st, t, payload)
}

// fail reports err to the client in an ERROR frame; the request is over either way.
func (s *server) fail(st stream, err error) error {
	if werr := s.send(st, msgError, encodeError(err)); werr != nil {
		return errors.Join(err, werr)
	}
	return nil
}
