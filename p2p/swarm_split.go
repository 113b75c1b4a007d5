package p2p

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// Split requests (docs/design.md 6.7 GET_RANGE, 6.8 "split"): in the end game, an idle worker of a peer holding a
// chunk verified asks it for the last three quarters of what has not arrived yet of a chunk requested from one
// other peer. The first request's reader takes those bytes once its own reach the split point, hashes the chunk once,
// whole, and resets the first request's stream (its sender's uplink then serves its other forwards). An
// assembled chunk that fails its hash blames no one at once: the chunk is fetched again whole, and the verified
// copy says whose bytes were wrong (judge).
const minSplit = 256 << 10 // bytes a chunk must still lack for a split

// split is the second holder's part of a chunk being received: bytes [from, size) asked of q with GET_RANGE.
type split struct {
	q    *fpeer
	from int
	bp   *[]byte      // q's bytes, (*bp)[:size-from]; returned by the last of the arrival and q's worker
	refs atomic.Int32 // 2: the arrival (released at finish) and q's worker
	sum  [32]byte     // sha2-256 of q's bytes (blame after a failed assembly), set before done

	// Guarded by the arrival's mu.
	done   bool // q's bytes are in (its frame complete: q vouches for them)
	failed bool // q's request ended without them
	used   int  // the chunk's first byte taken from q; 0: none taken
}

func (sp *split) release() {
	if sp.refs.Add(-1) == 0 && sp.bp != nil {
		chunkBufPool.Put(sp.bp)
		sp.bp = nil
	}
}

// errSpliced ends a request whose chunk was completed with another holder's range: the rest of its frame is
// not read and its stream is reset. Not a failure of the peer.
var errSpliced = errors.New("chunk completed from a second holder's range")

// errSplitBad: a chunk assembled from two peers failed its hash; judge blames one once a verified copy is in.
var errSplitBad = errors.New("chunk assembled from two peers does not match its hash")

// errNoRange: the peer does not know GET_RANGE (an older version); it is not asked for ranges again.
var errNoRange = errors.New("peer does not support GET_RANGE")

// splice, called by a chunk's reader with pos bytes in, returns the split whose bytes complete the chunk from pos
// (marking them used) once they are in and pos has reached the split point; nil otherwise. Call with a.mu held.
func (a *arrival) splice(pos int) *split {
	sp := a.sp
	if sp == nil || !sp.done || sp.used > 0 || pos < sp.from || pos >= len(a.buf) {
		return nil
	}
	sp.used = pos
	return sp
}

// spliced returns the split whose bytes completed the chunk, or nil.
func (a *arrival) spliced() *split {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sp == nil || a.sp.used == 0 {
		return nil
	}
	return a.sp
}

// splitDone records the end of sp's request: its bytes are in (ok) or not. A reader blocked past the split point
// is woken (its stream's read deadline). false: the bytes came too late to be used.
func (a *arrival) splitDone(sp *split, ok bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	sp.done, sp.failed = ok, !ok
	if !ok || a.state != arrivalPending || a.n >= len(a.buf) {
		return false
	}
	if a.n >= sp.from && a.interrupt != nil {
		a.interrupt()
	}
	return true
}

// pickSplit chooses a chunk to split onto fp: requested from exactly one other peer, held verified by fp, never
// split before, received here into a registered arrival that lacks at least minSplit bytes; the one lacking the
// most. Call with t.mu held; it attaches the split to the arrival and keeps it for fp's worker (takeSplit).
func (t *transfer) pickSplit(fp *fpeer, now time.Time) (int, bool) {
	if fp.noRange || fp.have == nil {
		return 0, false
	}
	best, lack := -1, minSplit-1
	for i := t.low; i < len(t.have); i++ {
		if t.have[i] || t.assigned[i] != 1 || fp.inflight[i] || !fp.have[i] || !fp.serves(i, now) || t.splitTried[i] {
			continue
		}
		a := t.arriving.get(t.blob, i)
		if a == nil {
			continue
		}
		a.mu.Lock()
		l := len(a.buf) - a.n
		if a.sp != nil || a.state != arrivalPending {
			l = 0
		}
		a.mu.Unlock()
		a.release()
		if l > lack {
			best, lack = i, l
		}
	}
	if best < 0 {
		return 0, false
	}
	a := t.arriving.get(t.blob, best)
	if a == nil {
		return 0, false
	}
	a.mu.Lock()
	// The second holder takes three quarters: a lagging forward shares its sender's uplink with ten others, while
	// the holder chosen has an idle worker for this node (and, at the end, often an idle uplink).
	sp := &split{q: fp, from: a.n + (len(a.buf)-a.n)/4}
	sp.refs.Store(2)
	a.sp = sp
	a.mu.Unlock()
	t.splitTried[best], t.splitLive[best] = true, true
	t.splits[best] = a // fp's worker takes it, with the reference
	return best, true
}

// takeSplit returns the arrival whose split fp's worker was given for chunk i (with a reference to release).
func (t *transfer) takeSplit(i int) *arrival {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.splits[i]
	delete(t.splits, i)
	return a
}

// requestRange asks fq for its split of chunk i over *st (opened if nil, reset and cleared on any error) and hands
// the bytes to the chunk's reader.
func (t *transfer) requestRange(fq *fpeer, st *network.Stream, i int) (err error) {
	a := t.takeSplit(i)
	if a == nil {
		return nil
	}
	defer a.release()
	sp := a.sp
	used := false
	defer func() {
		used = a.splitDone(sp, err == nil)
		sp.release()
		t.mu.Lock()
		if err == nil && !used {
			t.inVain[ruleSplit]++
		}
		t.splitLive[i] = used
		t.mu.Unlock()
	}()
	if *st == nil {
		s, err := t.open(fq)
		if err != nil {
			return err
		}
		*st = s
	}
	s := *st
	stop := context.AfterFunc(t.ctx, func() { s.Reset() })
	defer func() {
		if !stop() || err != nil {
			s.Reset()
			*st = nil
		}
	}()
	s.SetDeadline(time.Now().Add(t.p.requestTimeout))
	size := len(a.buf)
	if err := writeFrame(s, msgGetRange, encodeGetRange(t.blob, i, sp.from, size-sp.from)); err != nil {
		return err
	}
	typ, n, err := readHeader(s)
	if err != nil {
		return noEOF(err)
	}
	if typ != msgRange {
		_, p, err := readPayload(s, typ, n, nil)
		if err != nil {
			return err
		}
		switch typ {
		case msgError:
			err := decodeError(p)
			if errors.Is(err, ErrBadRequest) || errors.Is(err, ErrUnsupported) {
				t.mu.Lock()
				fq.noRange = true
				t.mu.Unlock()
				return fmt.Errorf("%w: %w", errNoRange, err)
			}
			return err
		case msgNoChunk:
			got, _, err := decodeChunkIndex(typ, p)
			if err != nil {
				return err
			}
			if got != i {
				return fmt.Errorf("%w: NO_CHUNK %d, want %d", ErrProtocol, got, i)
			}
			t.noChunk(fq, i)
			return errRangeRefused
		}
		return fmt.Errorf("%w: unexpected %s frame", ErrProtocol, typ)
	}
	if n != rangeFrameOverhead+size-sp.from {
		return fmt.Errorf("%w: RANGE of %d bytes, want %d", ErrProtocol, n-rangeFrameOverhead, size-sp.from)
	}
	var ib [rangeFrameOverhead]byte
	if _, err := io.ReadFull(s, ib[:]); err != nil {
		return fmt.Errorf("%w: RANGE frame truncated: %w", ErrProtocol, noEOF(err))
	}
	if got, off := int(binary.LittleEndian.Uint32(ib[:])), int(binary.LittleEndian.Uint32(ib[4:])); got != i || off != sp.from {
		return fmt.Errorf("%w: RANGE of chunk %d from %d, want %d from %d", ErrProtocol, got, off, i, sp.from)
	}
	sp.bp = chunkBufPool.Get().(*[]byte)
	buf := (*sp.bp)[:size-sp.from]
	if _, err := io.ReadFull(s, buf); err != nil {
		return fmt.Errorf("%w: RANGE frame truncated: %w", ErrProtocol, noEOF(err))
	}
	sp.sum = sha256.Sum256(buf)
	t.n.adjustScore(fq.id, scoreChunk)
	return nil
}

// errRangeRefused: the peer answered NO_CHUNK to a range (it no longer holds the chunk, or seeds and has chunks
// that have not left it); not a failure.
var errRangeRefused = errors.New("peer refused the range")

// suspect is a chunk whose assembly from p's bytes and q's range (from on) failed its hash.
type suspect struct {
	p, q *fpeer
	from int
	sum  [32]byte
}

// judge, given chunk i verified and stored, blames the peer whose bytes of an earlier failed assembly of it were
// wrong: q if its range differs from the verified bytes (it sent a complete frame, so it vouched for them), else
// p, whose bytes were a forward it had not finished (an ordinary failure: its upstream may have been at fault).
func (t *transfer) judge(i int, data []byte) {
	t.mu.Lock()
	s, ok := t.suspects[i]
	delete(t.suspects, i)
	t.mu.Unlock()
	if !ok {
		return
	}
	if sha256.Sum256(data[s.from:]) != s.sum {
		t.n.onBadChunk(s.q.id)
		t.failed(s.q, fmt.Errorf("%w: chunk %d: its range of bytes was wrong", errBadChunk, i))
		return
	}
	t.failed(s.p, fmt.Errorf("%w: chunk %d: its bytes before the split were wrong", errSplitBad, i))
}
