package p2p

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// HAVE push (docs/design.md 6.7, WATCH_HAVE): a peer fetching a blob watches each partial holder's bitmap instead
// of polling it. The holder answers WATCH_HAVE with its HAVE bitmap and then sends HAVE_ADD frames with the chunks
// it stores, the moment each is verified, until it holds the whole blob, the watch's lifetime ends or the client
// goes away.
const (
	watchLifetime     = 2 * time.Minute // a watch ends after this; the client watches again if it still needs to
	maxWatchesPerPeer = 8               // watches served at once for one peer (one per blob it fetches)
	maxWatching       = 256             // watches served at once for all peers
	maxPendingAdds    = 4096            // indexes queued for one watch before it falls back to a full HAVE
	// watchResync: a watch compares the store's bitmap with what it sent this often, for chunks stored by a path
	// that does not publish (a put straight into the store).
	watchResync = time.Second
	// resyncShare: the watches of one blob share a bitmap read from the store this recently (haveShare). At 24
	// hosts a node serves ~20 watches, each resyncing once a second: reading the bitmap (a badger view, the
	// manifest, an index scan) was 2.8 % of the daemons' CPU (docs/benchmarks.md, wave 13).
	resyncShare = watchResync / 4
)

// haveShare holds each watched blob's last bitmap read for a resync, shared by its watches, with the chunks
// published since set in it (storedChunk). Entries older than watchResync are dropped when another is read, so it
// holds at most the blobs watched in the last second.
type haveShare struct {
	mu sync.Mutex
	m  map[cid.Cid]*haveSnap
}

type haveSnap struct {
	at   time.Time
	have []bool // guarded by haveShare.mu
}

// storedChunk tells the watches of blob that chunk i is stored here (HAVE_ADD) and sets it in their shared bitmap.
func (s *server) storedChunk(blob cid.Cid, i int) {
	s.shared.mu.Lock()
	if e := s.shared.m[blob]; e != nil && i >= 0 && i < len(e.have) {
		e.have[i] = true
	}
	s.shared.mu.Unlock()
	s.haves.publish(blob, i)
}

// recentHave copies into dst blob's bitmap as the store held it at most resyncShare ago, with the chunks published
// since, and returns it.
func (s *server) recentHave(blob cid.Cid, dst []bool) ([]bool, error) {
	s.shared.mu.Lock()
	if e := s.shared.m[blob]; e != nil && time.Since(e.at) < resyncShare {
		dst = append(dst[:0], e.have...)
		s.shared.mu.Unlock()
		return dst, nil
	}
	s.shared.mu.Unlock()
	at := time.Now()
	have, err := s.store.HaveChunks(s.ctx, blob)
	if err != nil {
		return nil, err
	}
	s.shared.mu.Lock()
	defer s.shared.mu.Unlock()
	if s.shared.m == nil {
		s.shared.m = map[cid.Cid]*haveSnap{}
	}
	for b, e := range s.shared.m {
		if time.Since(e.at) > watchResync {
			delete(s.shared.m, b)
		}
	}
	if e := s.shared.m[blob]; e == nil || e.at.Before(at) {
		s.shared.m[blob] = &haveSnap{at: at, have: have}
	}
	return append(dst[:0], s.shared.m[blob].have...), nil
}

// haveHub tells the watches of a blob which chunks this node has just stored.
type haveHub struct {
	mu   sync.Mutex
	subs map[cid.Cid]map[*haveSub]struct{}
}

// haveSub is one watch's queue of stored chunk indexes, and of arriving ones for a WATCH_HAVE2.
type haveSub struct {
	mu       sync.Mutex
	pending  []uint32
	overflow bool // more than maxPendingAdds queued: send the whole bitmap again
	arrivals bool // the watch reports arriving chunks
	arriving []uint32
	wake     chan struct{} // capacity 1
}

func (h *haveHub) subscribe(blob cid.Cid, arrivals bool) *haveSub {
	s := &haveSub{wake: make(chan struct{}, 1), arrivals: arrivals}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[cid.Cid]map[*haveSub]struct{}{}
	}
	if h.subs[blob] == nil {
		h.subs[blob] = map[*haveSub]struct{}{}
	}
	h.subs[blob][s] = struct{}{}
	return s
}

func (h *haveHub) unsubscribe(blob cid.Cid, s *haveSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs[blob], s)
	if len(h.subs[blob]) == 0 {
		delete(h.subs, blob)
	}
}

// publish tells blob's watches that chunk i is stored. It never blocks.
func (h *haveHub) publish(blob cid.Cid, i int) { h.notify(blob, i, false) }

// arrive tells blob's WATCH_HAVE2 watches that chunk i has begun to arrive. It never blocks.
func (h *haveHub) arrive(blob cid.Cid, i int) { h.notify(blob, i, true) }

func (h *haveHub) notify(blob cid.Cid, i int, arriving bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[blob] {
		if arriving && !s.arrivals {
			continue
		}
		s.mu.Lock()
		switch {
		case arriving && len(s.arriving) < maxPendingAdds:
			s.arriving = append(s.arriving, uint32(i))
		case arriving: // a hint: dropped when the watch is that far behind
		case len(s.pending) < maxPendingAdds:
			s.pending = append(s.pending, uint32(i))
		default:
			s.overflow = true
		}
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// take returns the queued stored indexes, whether that queue overflowed, and the queued arriving indexes, and
// empties the queues.
func (s *haveSub) take() ([]uint32, bool, []uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, o, a := s.pending, s.overflow, s.arriving
	s.pending, s.overflow, s.arriving = nil, false, nil
	return p, o, a
}

// admitWatch counts a watch of the peer with budget b, or refuses it when b or the server is at its watch budget.
func (s *server) admitWatch(b *peerBudget) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watching >= maxWatching || b.watches >= maxWatchesPerPeer {
		return false
	}
	s.watching++
	b.watches++
	return true
}

func (s *server) leaveWatch(b *peerBudget) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watching--
	b.watches--
}

// serveWatch answers WATCH_HAVE: the HAVE bitmap, then HAVE_ADD frames of the chunks stored since, until the blob
// is complete here or watchLifetime has passed. WATCH_HAVE2 adds ARRIVING frames: the chunks being received now
// after the HAVE, then each chunk the moment its first bytes arrive (cut-through, swarm_arriving.go). A chunk this
// node's transfer knows the client holds is left out (watchView); a whole HAVE at the end makes the client's view
// of a complete blob whole.
func (s *server) serveWatch(st stream, b *peerBudget, req request) error {
	if !s.admitWatch(b) {
		return s.fail(st, fmt.Errorf("%w: %d watches of this peer or %d in all", ErrBusy, maxWatchesPerPeer, maxWatching))
	}
	defer s.leaveWatch(b)
	arrivals := req.Type == msgWatchHave2
	sub := s.haves.subscribe(req.Blob, arrivals) // before reading the bitmap: no chunk stored in between is missed
	defer s.haves.unsubscribe(req.Blob, sub)
	have, err := s.store.HaveChunks(s.ctx, req.Blob)
	if err != nil {
		return s.fail(st, err)
	}
	w := &watchView{s: s, st: st, blob: req.Blob, peer: b.id, have: have, held: s.count(have)}
	w.frame(msgHave, encodeHave(have))
	if arrivals {
		w.arriving(s.arriving.indexes(req.Blob))
	}
	if err := w.flush(); err != nil {
		return err
	}
	life := time.NewTimer(watchLifetime)
	defer life.Stop()
	resync := time.NewTicker(watchResync)
	defer resync.Stop()
	for w.held < len(have) {
		var (
			idx, arr []uint32
			full     bool // compare the whole bitmap with the store's
		)
		select {
		case <-sub.wake:
			idx, full, arr = sub.take()
		case <-resync.C:
			full = true
		case <-life.C:
			return nil
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		if full {
			now, err := s.recentHave(req.Blob, w.snap)
			w.snap = now
			if err == nil && w.lacks(now) {
				// A shared bitmap read just before a chunk was stored and published may lack it: only the store
				// itself says a chunk was dropped.
				now, err = s.store.HaveChunks(s.ctx, req.Blob)
			}
			if err != nil {
				return err
			}
			if idx, err = w.resync(now); err != nil {
				return err
			}
		}
		w.stored(idx)
		w.arriving(arr)
		if err := w.flush(); err != nil {
			return err
		}
	}
	w.whole()
	return w.flush()
}

// watchView is what one watch has told its client of this node's chunks. Announcements of chunks the client holds
// verified (this node's transfer of the blob watches the client and has its bitmap: Node.peerHolds) are left out,
// and ARRIVING ones too while the client is receiving the chunk itself: the client cannot need them from here. In a
// fleet each receiver used to send both frames for every chunk to every watcher (docs/design.md 6.9). A chunk
// announced ARRIVING always gets its HAVE_ADD: that ends the client's claim, of which it believes only
// maxArrivingPeer per peer at once.
type watchView struct {
	s     *server
	st    stream
	blob  cid.Cid
	peer  peer.ID  // the client; empty (a test's pipe): nothing is known of it, nothing is left out
	have  []bool   // announced: the HAVE, then HAVE_ADD
	skip  []bool   // stored here and left out because the client held it then; nil until the first
	nskip int      // set in skip
	held  int      // chunks stored here as far as the watch knows: announced or left out
	told  []bool   // announced ARRIVING; nil until the first
	batch []uint32 // scratch: the indexes to announce
	cand  []uint32 // scratch
	known []bool   // scratch
	out   []byte   // frames of one wake-up, written at once: one yamux frame and TLS record, not one per frame
	snap  []bool   // scratch: the shared bitmap of a resync
}

// frame queues one frame for the next flush.
func (w *watchView) frame(t msgType, payload []byte) {
	w.out = appendFrame(w.out, t, payload)
}

// flush writes the queued frames.
func (w *watchView) flush() error {
	if len(w.out) == 0 {
		return nil
	}
	w.st.SetWriteDeadline(time.Now().Add(serveWriteTimeout))
	_, err := w.st.Write(w.out)
	w.out = w.out[:0]
	return err
}

func (w *watchView) skipped(i uint32) bool { return w.skip != nil && w.skip[i] }

// knownHeld returns, for each of idx, whether the client is known to hold it (or, with arriving, to be receiving
// it); nil when nothing is known.
func (w *watchView) knownHeld(idx []uint32, arriving bool) []bool {
	if w.s.holds == nil || w.peer == "" || len(idx) == 0 {
		return nil
	}
	w.known = slices.Grow(w.known[:0], len(idx))[:len(idx)]
	w.s.holds(w.blob, w.peer, arriving, idx, w.known)
	return w.known
}

// candidates returns the indexes of idx in range and not announced (nor left out, for ARRIVING).
func (w *watchView) candidates(idx []uint32, arriving bool) []uint32 {
	w.cand = w.cand[:0]
	for _, i := range idx {
		if int(i) < len(w.have) && !w.have[i] && !(arriving && w.skipped(i)) {
			w.cand = append(w.cand, i)
		}
	}
	return w.cand
}

// stored queues HAVE_ADD frames of the chunks idx, just stored here, except those the client holds: those are
// left out, and looked at again at every resync.
func (w *watchView) stored(idx []uint32) {
	cand := w.candidates(idx, false)
	known := w.knownHeld(cand, false)
	send := w.batch[:0]
	for k, i := range cand {
		switch {
		case w.have[i]: // listed twice
		case known != nil && known[k] && (w.told == nil || !w.told[i]):
			if !w.skipped(i) {
				w.s.leftOut.Add(1)
				if w.skip == nil {
					w.skip = make([]bool, len(w.have))
				}
				w.skip[i] = true
				w.nskip++
				w.held++
			}
		default:
			if w.skipped(i) {
				w.skip[i] = false
				w.nskip--
			} else {
				w.held++
			}
			w.have[i] = true
			send = append(send, i)
		}
	}
	w.frames(msgHaveAdd, send)
	w.batch = send[:0]
}

// arriving queues ARRIVING frames of the chunks idx, which have begun to arrive here, except those announced
// stored already and those the client holds or is receiving: hints, so nothing of them is kept.
func (w *watchView) arriving(idx []uint32) {
	cand := w.candidates(idx, true)
	known := w.knownHeld(cand, true)
	send := w.batch[:0]
	for k, i := range cand {
		if known != nil && known[k] {
			w.s.leftOut.Add(1)
			continue
		}
		if w.told == nil {
			w.told = make([]bool, len(w.have))
		}
		w.told[i] = true
		send = append(send, i)
	}
	w.frames(msgArriving, send)
	w.batch = send[:0]
}

// frames queues idx in frames of type t of at most maxHaveAdd indexes each.
func (w *watchView) frames(t msgType, idx []uint32) {
	for len(idx) > 0 {
		n := min(len(idx), maxHaveAdd)
		w.frame(t, encodeHaveAdd(idx[:n]))
		idx = idx[n:]
	}
}

// resync compares the store's bitmap now with the view: a chunk the store dropped (found corrupt) that the client
// was told of makes it send the whole bitmap again; it returns the chunks stored and not announced (those stored by
// a path that does not publish, and those left out, which stored then announces unless the client still holds
// them).
// lacks reports whether now lacks a chunk the watch counts as stored here (announced or left out).
func (w *watchView) lacks(now []bool) bool {
	for i, h := range now {
		if !h && i < len(w.have) && (w.have[i] || w.skipped(uint32(i))) {
			return true
		}
	}
	return false
}

func (w *watchView) resync(now []bool) ([]uint32, error) {
	if len(now) != len(w.have) {
		return nil, fmt.Errorf("watch %s: bitmap changed length", w.blob)
	}
	var idx []uint32
	for i, h := range now {
		switch {
		case !h && w.have[i]:
			copy(w.have, now)
			w.skip, w.nskip, w.held = nil, 0, w.s.count(w.have)
			w.frame(msgHave, encodeHave(w.have))
			return nil, nil
		case !h && w.skipped(uint32(i)): // dropped: the client was never told of it
			w.skip[i] = false
			w.nskip--
			w.held--
		case h && !w.have[i]:
			idx = append(idx, uint32(i))
		}
	}
	return idx, nil
}

// whole ends a watch of a blob now complete here: if any chunk was left out, it queues one HAVE of the whole
// bitmap, so the client sees this node as a full holder (its seed-like and fetcher rules, 6.8) as it would have
// after the last HAVE_ADD.
func (w *watchView) whole() {
	if w.nskip == 0 {
		return
	}
	for i := range w.have {
		w.have[i] = true
	}
	w.frame(msgHave, encodeHave(w.have))
}

func (*server) count(have []bool) int {
	n := 0
	for _, h := range have {
		if h {
			n++
		}
	}
	return n
}

// errNoWatch: the peer does not support WATCH_HAVE (an older version); the client polls GET_HAVE instead.
var errNoWatch = errors.New("peer does not support WATCH_HAVE")

// watch follows fp's bitmap through WATCH_HAVE, or WATCH_HAVE2 (ver) with its ARRIVING frames, until fp holds the
// whole blob, the watch ends or fails. started is called after the first HAVE. It returns nil when the server
// ended the watch.
func (t *transfer) watch(fp *fpeer, ver msgType, started func()) error {
	st, done, err := rpc(t.ctx, t.n.h, fp.id, ver, t.blob.Bytes(), watchLifetime+t.p.rpcTimeout)
	if err != nil {
		return err
	}
	defer done()
	n := len(t.have)
	st.SetReadDeadline(time.Now().Add(t.p.rpcTimeout))
	buf := make([]byte, 0, maxPayload[msgHave])
	first := true
	for {
		typ, p, err := readFrame(st, buf)
		switch {
		case err == io.EOF && !first:
			return nil
		case err != nil:
			return noEOF(err)
		case typ == msgError:
			err := decodeError(p)
			if first && (errors.Is(err, ErrBadRequest) || errors.Is(err, ErrUnsupported)) {
				return fmt.Errorf("%w: %w", errNoWatch, err)
			}
			return err
		case typ == msgHave:
			have, err := decodeHave(p, n)
			if err != nil {
				return err
			}
			t.setHave(fp, have)
			if first {
				first = false
				started()
				st.SetReadDeadline(time.Now().Add(watchLifetime + t.p.rpcTimeout))
			}
		case typ == msgHaveAdd && !first:
			idx, err := decodeHaveAdd(p, n)
			if err != nil {
				return err
			}
			if !t.addHave(fp, idx) {
				return nil
			}
		case typ == msgArriving && !first && ver == msgWatchHave2:
			idx, err := decodeArriving(p, n)
			if err != nil {
				return err
			}
			if !t.addArriving(fp, idx) {
				return nil
			}
		default:
			return fmt.Errorf("%w: unexpected %s frame in a watch", ErrProtocol, typ)
		}
	}
}

// addHave records that fp now holds the chunks idx; false when fp is no longer part of the transfer.
func (t *transfer) addHave(fp *fpeer, idx []int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if fp.dropped || fp.have == nil {
		return !fp.dropped
	}
	for _, i := range idx {
		if fp.have[i] {
			continue
		}
		if fp.arriving(i) { // counted in avail since its ARRIVING
			fp.arr[i] = time.Time{}
			fp.arrN--
		} else {
			t.avail[i]++
			t.lastHave = time.Now()
		}
		fp.have[i] = true
		fp.held++
	}
	t.cond.Broadcast()
	return true
}
