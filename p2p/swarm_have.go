package p2p

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
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
)

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
// after the HAVE, then each chunk the moment its first bytes arrive (cut-through, swarm_arriving.go).
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
	if err := s.send(st, msgHave, encodeHave(have)); err != nil {
		return err
	}
	batch := make([]uint32, 0, maxHaveAdd)
	if arrivals {
		if _, err := s.sendIndexes(st, msgArriving, have, s.arriving.indexes(req.Blob), batch); err != nil {
			return err
		}
	}
	held := s.count(have)
	life := time.NewTimer(watchLifetime)
	defer life.Stop()
	resync := time.NewTicker(watchResync)
	defer resync.Stop()
	for held < len(have) {
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
			now, err := s.store.HaveChunks(s.ctx, req.Blob)
			if err != nil {
				return err
			}
			if len(now) != len(have) {
				return fmt.Errorf("watch %s: bitmap changed length", req.Blob)
			}
			idx = idx[:0]
			for i, h := range now {
				if !h && have[i] { // a chunk the store dropped (found corrupt): send the whole bitmap again
					copy(have, now)
					held, idx = s.count(have), nil
					if err := s.send(st, msgHave, encodeHave(have)); err != nil {
						return err
					}
					break
				}
				if h && !have[i] {
					idx = append(idx, uint32(i))
				}
			}
		}
		added, err := s.sendIndexes(st, msgHaveAdd, have, idx, batch)
		if err != nil {
			return err
		}
		held += added
		if _, err := s.sendIndexes(st, msgArriving, have, arr, batch); err != nil {
			return err
		}
	}
	return nil
}

// sendIndexes sends the indexes of idx that have does not hold, in frames of type t of at most maxHaveAdd, and
// returns how many it sent; for HAVE_ADD it sets them in have. batch is scratch space of capacity maxHaveAdd.
func (s *server) sendIndexes(st stream, t msgType, have []bool, idx, batch []uint32) (int, error) {
	batch, sent := batch[:0], 0
	for _, i := range idx {
		if int(i) >= len(have) || have[i] {
			continue
		}
		if t == msgHaveAdd {
			have[i] = true
		}
		sent++
		if batch = append(batch, i); len(batch) == maxHaveAdd {
			if err := s.send(st, t, encodeHaveAdd(batch)); err != nil {
				return sent, err
			}
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		return sent, s.send(st, t, encodeHaveAdd(batch))
	}
	return sent, nil
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
