package p2p

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
)

// Cut-through forwarding (docs/design.md 6.7, 6.8): a node receiving chunk i of a blob serves it to peers while it
// still arrives. The receiving worker registers the chunk's buffer here once the CHUNK frame's header and index
// are in; each forward writes the frame header with the full length, then the bytes as they arrive, and the last
// byte only once the receiver has verified the whole chunk (PutChunk). If the verification fails, or the upstream
// breaks, the forward resets its stream instead of finishing the frame: a complete CHUNK frame is always one the
// forwarder verified, so a chunk that fails the downstream's hash still blames its sender.
const (
	maxArrivals     = 64                // chunks registered at once per node; more arrive unregistered
	arrivalStep     = 64 << 10          // bytes between two wake-ups of the forwards
	maxForwards     = 24                // forwards of arriving chunks served at once, for all peers
	maxForwardsPeer = 4                 // forwards of arriving chunks served at once to one peer
	forwardStall    = serveWriteTimeout // a forward whose upstream sends nothing for this long is reset
	holdBack        = 1                 // bytes a forward keeps back until the chunk is verified
	arrivingTTL     = 10 * time.Second  // a peer's ARRIVING claim counts this long unless HAVE confirms it
	maxArrivingPeer = 64                // ARRIVING claims of one peer believed at once; more are ignored
)

// An arrival's state.
const (
	arrivalPending = iota
	arrivalVerified
	arrivalFailed
)

type arrivalKey struct {
	blob cid.Cid
	i    int
}

// arrivals is the node's registry of chunks being received: (blob, index) → buffer and progress.
type arrivals struct {
	mu sync.Mutex
	m  map[arrivalKey]*arrival
}

// arrival is one chunk being received. Its buffer is pooled and returned once the receiver and every forward
// reading it have let go (refs, under arrivals.mu), so a forward that falls behind still reads valid bytes.
type arrival struct {
	reg  *arrivals
	key  arrivalKey
	bp   *[]byte
	buf  []byte // the chunk's bytes, len = chunk length; [:n] have arrived
	refs int    // guarded by reg.mu

	mu    sync.Mutex
	n     int
	state int
	wake  chan struct{} // closed and replaced on every change
	last  int           // n at the last wake-up
	at    time.Time     // when bytes last arrived
}

// begin registers chunk i of blob, size bytes long, as arriving and returns it holding the receiver's reference;
// nil when it is registered already (a duplicate request) or the registry is full: the caller then receives into
// its own buffer and nothing is forwarded.
func (r *arrivals) begin(blob cid.Cid, i, size int) *arrival {
	k := arrivalKey{blob, i}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[k] != nil || len(r.m) >= maxArrivals {
		return nil
	}
	if r.m == nil {
		r.m = map[arrivalKey]*arrival{}
	}
	bp := getChunkBuf()
	a := &arrival{reg: r, key: k, bp: bp, buf: (*bp)[:size], refs: 1, wake: make(chan struct{})}
	r.m[k] = a
	return a
}

// get returns the arrival of chunk i of blob with a reference the caller must release, or nil.
func (r *arrivals) get(blob cid.Cid, i int) *arrival {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.m[arrivalKey{blob, i}]
	if a != nil {
		a.refs++
	}
	return a
}

// indexes lists the chunks of blob being received.
func (r *arrivals) indexes(blob cid.Cid) []uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var idx []uint32
	for k := range r.m {
		if k.blob == blob {
			idx = append(idx, uint32(k.i))
		}
	}
	return idx
}

// flowing reports whether bytes of any chunk of blob being received here arrived since after: this node's
// downlink is busy with the blob, and a slow request's copy would take bytes from the requests that flow (pick).
func (r *arrivals) flowing(blob cid.Cid, after time.Time) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, a := range r.m {
		if k.blob != blob {
			continue
		}
		a.mu.Lock()
		at := a.at
		a.mu.Unlock()
		if at.After(after) {
			return true
		}
	}
	return false
}

// release drops a reference; the last one returns the buffer to the pool.
func (a *arrival) release() {
	a.reg.mu.Lock()
	defer a.reg.mu.Unlock()
	if a.refs--; a.refs == 0 {
		putChunkBuf(a.bp)
		a.bp, a.buf = nil, nil
	}
}

// progress records that buf[:n] has arrived, waking the forwards every arrivalStep bytes.
func (a *arrival) progress(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n, a.at = n, time.Now()
	if n-a.last >= arrivalStep {
		a.last = n
		close(a.wake)
		a.wake = make(chan struct{})
	}
}

// finish ends the arrival, verified (the receiver stored it after PutChunk checked it) or not, takes it out of
// the registry (new requests are served from the store) and drops the receiver's reference.
func (a *arrival) finish(verified bool) {
	a.mu.Lock()
	a.state = arrivalFailed
	if verified {
		a.state = arrivalVerified
	}
	close(a.wake)
	a.wake = make(chan struct{})
	a.mu.Unlock()
	a.reg.mu.Lock()
	if a.reg.m[a.key] == a {
		delete(a.reg.m, a.key)
	}
	a.reg.mu.Unlock()
	a.release()
}

// readable returns how many bytes a forward may send now (all of them once verified, all but holdBack before),
// the arrival's state, and a channel closed at its next change.
func (a *arrival) readable() (int, int, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.n
	if a.state != arrivalVerified {
		n = min(n, len(a.buf)-holdBack)
	}
	return n, a.state, a.wake
}

// errForwardBroken: the chunk being forwarded failed at this node (its verification, or its upstream).
var errForwardBroken = errors.New("forwarded chunk failed before it was verified")

// arrival returns chunk i of blob if it is being received here (when may: not the seed's first send, which the
// store serves) and the peer with budget b and the server are below their forward caps; the caller forwards it
// and the arrival's reference and the slot are released by forward.
func (s *server) arrival(b *peerBudget, blob cid.Cid, i int, may bool) *arrival {
	if !may || s.noCut {
		return nil
	}
	a := s.arriving.get(blob, i)
	if a == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.forwarding >= maxForwards || b.forwards >= maxForwardsPeer {
		a.release()
		return nil // served from the store if it is there by now, else NO_CHUNK
	}
	s.forwarding++
	b.forwards++
	return a
}

// forward sends chunk i from its arrival a in one CHUNK frame: the header with the chunk's full length at once,
// then the bytes as they arrive, the last holdBack bytes only once this node has verified the chunk. A chunk that
// fails here, or an upstream silent for forwardStall, ends the forward with an error (the stream is reset).
func (s *server) forward(st stream, b *peerBudget, a *arrival, i int, hdr []byte) error {
	defer func() {
		a.release()
		s.mu.Lock()
		s.forwarding--
		b.forwards--
		s.mu.Unlock()
	}()
	frameHeader(hdr, msgChunk, chunkFrameOverhead+len(a.buf))
	putIndex(hdr[frameHeaderLen:], i)
	if err := s.write(st, hdr); err != nil {
		return err
	}
	stall := time.NewTimer(forwardStall)
	defer stall.Stop()
	for sent := 0; sent < len(a.buf); {
		n, state, wake := a.readable()
		if state == arrivalFailed {
			return fmt.Errorf("forward chunk %d: %w", i, errForwardBroken)
		}
		if n > sent {
			if err := s.write(st, a.buf[sent:n]); err != nil {
				return err
			}
			sent = n
			stall.Reset(forwardStall)
			continue
		}
		select {
		case <-wake:
		case <-stall.C:
			return fmt.Errorf("forward chunk %d: nothing arrived for %s", i, forwardStall)
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
	return nil
}

// beginArrival registers chunk i, whose CHUNK frame has begun to arrive, for forwarding and tells this node's
// WATCH_HAVE2 watchers (readChunksSummed's begin); nil when this node forwards nothing.
func (t *transfer) beginArrival(i, size int) *arrival {
	if !t.p.cutThrough || !t.n.serving {
		return nil
	}
	t.mu.Lock()
	stored := t.have[i]
	t.mu.Unlock()
	if stored {
		return nil
	}
	a := t.n.srv.arriving.begin(t.blob, i, size)
	if a != nil {
		t.n.srv.haves.arrive(t.blob, i)
	}
	return a
}

// addArriving records that fp is receiving the chunks idx (ARRIVING): each counts as available from fp until fp
// announces it stored, answers NO_CHUNK for it, or arrivingTTL passes; at most maxArrivingPeer at once per peer.
// false when fp is no longer part of the transfer.
func (t *transfer) addArriving(fp *fpeer, idx []int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if fp.dropped || fp.have == nil {
		return !fp.dropped
	}
	now := time.Now()
	for _, i := range idx {
		if fp.has(i) || fp.arrN >= maxArrivingPeer {
			continue
		}
		if fp.arr == nil {
			fp.arr = make([]time.Time, len(t.have))
		}
		fp.arr[i] = now
		fp.arrN++
		t.avail[i]++
		t.lastHave = now
	}
	t.cond.Broadcast()
	return true
}

// expireArriving forgets ARRIVING claims older than arrivingTTL that no HAVE confirmed (a chunk whose transfer
// failed at the peer, or a peer announcing what it never sends); call with t.mu held.
func (t *transfer) expireArriving(now time.Time) {
	for _, fp := range t.peers {
		if fp.dropped || fp.arrN == 0 {
			continue
		}
		for i, at := range fp.arr {
			if !at.IsZero() && now.Sub(at) > arrivingTTL {
				fp.arr[i] = time.Time{}
				fp.arrN--
				t.avail[i]--
			}
		}
	}
}
