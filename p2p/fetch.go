package p2p

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Fetch errors.
var (
	ErrNoPeers = errors.New("no peer can provide the blob")
	ErrStalled = errors.New("fetch made no progress")
	ErrClosed  = errors.New("p2p node is closed")
	// ErrTooLarge: the blob's manifest claims more bytes than the caller expects (blobstore.WithExpectedSize).
	ErrTooLarge = errors.New("blob larger than expected")
)

// fetchParams tune the swarm fetch (docs/design.md 6.7); tests shorten the timeouts.
type fetchParams struct {
	perPeer int // GET_CHUNKS requests in flight per peer (1 for a peer with a negative score)
	// perWhole, if larger, is perPeer for a peer that holds the whole blob when its workers start: on a lone
	// source a deeper pipe keeps both ends' cores busy (docs/design.md 3.12); a seed shared with partial peers
	// gets one request at a time anyway (seedLike), whatever its worker count.
	perWhole       int
	chunksPerReq   int           // chunks per GET_CHUNKS request
	requestTimeout time.Duration // deadline of one GET_CHUNKS request
	rpcTimeout     time.Duration // deadline of GET_MANIFEST and HAVE
	haveRefresh    time.Duration // how often partial peers are asked HAVE again
	stallTimeout   time.Duration // fail when no chunk arrived for this long
	sourceTimeout  time.Duration // fail sooner when a missing chunk has no holder and nothing arrived for this long
	maxFailures    int           // consecutive failed requests before a peer is dropped from the fetch
	// cutThrough: watch peers with WATCH_HAVE2, take their arriving chunks, and serve the chunks this node is
	// receiving while they arrive (docs/design.md 6.7, 6.8).
	cutThrough bool
}

var defaultFetchParams = fetchParams{
	perPeer:        2,
	perWhole:       4,
	chunksPerReq:   1,
	requestTimeout: 30 * time.Second,
	rpcTimeout:     10 * time.Second,
	haveRefresh:    500 * time.Millisecond,
	stallTimeout:   60 * time.Second,
	sourceTimeout:  15 * time.Second,
	maxFailures:    3,
	cutThrough:     true,
}

// pickWindow is how many of the first unrequested missing chunks a request may start at (pick).
const pickWindow = 16

// Score changes.
const (
	scoreBadData = -100 // sent a chunk or manifest that does not match its hash
	scoreFailure = -5   // a request failed or timed out
	scoreChunk   = 1    // per chunk served
)

// flight is the state of one transfer of a blob, shared by every concurrent Fetch of it in this process through
// Node.flights (internal/flightgroup: the transfer is cancelled when its last Fetch leaves).
type flight struct {
	blob cid.Cid

	mu    sync.Mutex // guards peers, open and t
	peers []peer.ID
	// open: a caller asked for every connected peer (Fetch with no peers, FetchAll); peers that connect while the
	// transfer runs join it (joinTransfers).
	open bool
	t    *transfer

	// maxSize is the smallest size a caller expects (blobstore.WithExpectedSize); 0: none. A manifest claiming
	// more ends the transfer before any chunk.
	maxSize uint64

	wmu      sync.Mutex // guards watchers and reported
	watchers map[*watcher]bool
	reported int64
}

// watcher is one Fetch's progress callback.
type watcher struct{ fn func(done, total int64) }

// initFlights sets up the node's fetch single flight: transfers run on the node's context and wait group, and
// none starts once the node is closing.
func (n *Node) initFlights() {
	n.flights.New = func(blob cid.Cid) *flight {
		return &flight{blob: blob, watchers: map[*watcher]bool{}}
	}
	n.flights.Context = func(context.Context) context.Context { return n.ctx }
	n.flights.Start = func(run func()) error {
		if !n.spawn(run) {
			return ErrClosed
		}
		return nil
	}
}

// Fetch downloads blob into the store from the given peers (all connected peers when from is empty, and those
// that connect while it runs, as FetchAll), verifying every chunk, and commits it. Chunks already in the store
// are kept, so a fetch interrupted by a crash or cancel resumes. Concurrent Fetch calls for one blob share one
// transfer (their peers are pooled); cancelling one caller's ctx ends only that caller's wait unless it was the
// last. progress, if not nil, gets the bytes held so far and the blob size, increasing, never concurrently, and
// not after Fetch has returned.
func (n *Node) Fetch(ctx context.Context, blob cid.Cid, from []peer.ID, progress func(done, total int64)) error {
	return n.fetchFrom(ctx, blob, from, len(from) == 0, progress)
}

// FetchAll is Fetch from the named peers (holders that may need a direct dial) and every peer connected now or
// while the transfer runs: on a LAN whose hosts are still meeting each other when a rollout starts, a receiver
// swarms with every peer it gets to know (docs/design.md 6.8).
func (n *Node) FetchAll(ctx context.Context, blob cid.Cid, named []peer.ID, progress func(done, total int64)) error {
	return n.fetchFrom(ctx, blob, named, true, progress)
}

func (n *Node) fetchFrom(ctx context.Context, blob cid.Cid, from []peer.ID, open bool, progress func(done, total int64)) error {
	if err := checkBlobCID(blob); err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	// No new transfer starts once the node is closing (ErrClosed, initFlights); a caller joining a transfer
	// that Close is cancelling gets its error, as the callers already waiting do.
	var (
		f *flight
		w *watcher
	)
	if progress != nil {
		w = &watcher{fn: progress}
	}
	limit, limited := blobstore.ExpectedSize(ctx)
	join := func(fl *flight) {
		f = fl
		if open {
			fl.mu.Lock()
			fl.open = true
			fl.mu.Unlock()
		}
		if limited {
			fl.mu.Lock()
			if fl.maxSize == 0 || limit < fl.maxSize {
				fl.maxSize = limit
			}
			fl.mu.Unlock()
		}
		fl.addPeers(from)
		if w != nil {
			fl.wmu.Lock()
			fl.watchers[w] = true
			fl.wmu.Unlock()
		}
	}
	_, _, err := n.flights.Do(ctx, blob, join, n.fetch)
	if f != nil && w != nil {
		f.wmu.Lock()
		delete(f.watchers, w)
		f.wmu.Unlock()
	}
	return err
}

func (f *flight) addPeers(ps []peer.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range ps {
		if !slices.Contains(f.peers, p) {
			f.peers = append(f.peers, p)
		}
	}
	if f.t != nil {
		f.t.addPeers(ps) // a caller joining a running transfer adds its peers to it
	}
}

func (f *flight) report(done, total int64) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if done < f.reported {
		return
	}
	f.reported = done
	for w := range f.watchers {
		w.fn(done, total)
	}
}

// candidates returns ps, and every connected peer if open, best score first.
func (n *Node) candidates(ps []peer.ID, open bool) []peer.ID {
	ps = slices.Clone(ps)
	if open {
		for _, p := range n.h.Network().Peers() {
			if !slices.Contains(ps, p) {
				ps = append(ps, p)
			}
		}
	}
	ps = slices.DeleteFunc(ps, func(p peer.ID) bool { return p == n.ID() })
	rand.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
	slices.SortStableFunc(ps, func(a, b peer.ID) int { return n.score(b) - n.score(a) })
	return ps
}

func (n *Node) fetch(ctx context.Context, f *flight) (struct{}, error) {
	return struct{}{}, n.transferBlob(ctx, f)
}

// transferBlob runs one flight: the manifest, then transfers until the blob commits.
func (n *Node) transferBlob(ctx context.Context, f *flight) error {
	m, err := n.manifest(ctx, f)
	if err != nil {
		return err
	}
	f.mu.Lock()
	limit := f.maxSize
	f.mu.Unlock()
	if limit > 0 && m.Size > limit {
		return fmt.Errorf("fetch %s: %w: its manifest claims %d bytes, expected %d", f.blob, ErrTooLarge, m.Size, limit)
	}
	total := int64(m.Size)
	if ok, err := n.store.Has(ctx, f.blob); err != nil {
		return fmt.Errorf("fetch %s: %w", f.blob, err)
	} else if ok {
		f.report(total, total)
		return nil
	}
	if err := n.store.BeginPartial(ctx, m); err != nil {
		return fmt.Errorf("fetch %s: %w", f.blob, err)
	}
	// A chunk found corrupt at Commit is deleted by the store; one more transfer fetches it again.
	for attempt := 0; ; attempt++ {
		have, err := n.store.HaveChunks(ctx, f.blob)
		if err != nil {
			return fmt.Errorf("fetch %s: %w", f.blob, err)
		}
		t := newTransfer(ctx, n, f.blob, m, have, func(done int64) { f.report(done, total) })
		f.report(t.done, total)
		f.mu.Lock()
		f.t = t // from here on, callers joining the flight add their peers to t
		ps, open := slices.Clone(f.peers), f.open
		f.mu.Unlock()
		t.addPeers(n.candidates(ps, open))
		if open {
			t.wg.Go(func() { n.dialForTransfer(t.ctx) })
		}
		err = t.run()
		t.logDone()
		f.mu.Lock()
		f.t = nil
		f.mu.Unlock()
		if err != nil {
			return fmt.Errorf("fetch %s: %w", f.blob, err)
		}
		err = n.store.Commit(ctx, f.blob)
		if err == nil {
			break
		}
		if !errors.Is(err, blobstore.ErrInvalidData) || attempt > 0 {
			return fmt.Errorf("fetch %s: %w", f.blob, err)
		}
		n.log.Warn("stored chunk corrupt at commit; fetching it again", "blob", f.blob, "err", err)
	}
	// What the blob is for is not p2p's to decide: the agent checks it against this host and indexes its records.
	return nil
}

// manifest returns blob's manifest from the store (a resumed fetch) or else from the first peer that has it,
// checked against the CID.
func (n *Node) manifest(ctx context.Context, f *flight) (*blobstore.Manifest, error) {
	m, err := n.store.Manifest(ctx, f.blob)
	if err == nil {
		return m, nil
	}
	if !errors.Is(err, blobstore.ErrNotFound) {
		return nil, fmt.Errorf("fetch %s: %w", f.blob, err)
	}
	// Rank outside f.mu: candidates takes n.mu, which no lock ordering puts after f.mu.
	f.mu.Lock()
	peers, open := slices.Clone(f.peers), f.open
	f.mu.Unlock()
	ps := n.candidates(peers, open)
	// The named peers first (a record's producers): they hold the blob, while most other peers of a rollout that
	// has just begun do not have its manifest yet, and each of them asked first cost a round trip at the start.
	unnamed := func(p peer.ID) int {
		if slices.Contains(peers, p) {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(ps, func(a, b peer.ID) int { return cmp.Compare(unnamed(a), unnamed(b)) })
	if len(ps) == 0 {
		return nil, fmt.Errorf("fetch %s: %w: no peers", f.blob, ErrNoPeers)
	}
	var errs []error
	// The candidates were named as holders just now (a record, a flight's DONE): a dial that failed earlier, under
	// load or before the peer listened, must not leave its backoff between a waiter and the blob it waited for.
	dctx := network.WithForceDirectDial(ctx, "fetch a named holder's manifest")
	for _, p := range ps {
		m, err := getManifest(dctx, n.h, p, f.blob, n.fp.rpcTimeout)
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, blobstore.ErrInvalidData) || errors.Is(err, blobstore.ErrInvalidManifest) {
			n.adjustScore(p, scoreBadData)
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
	}
	return nil, fmt.Errorf("fetch %s: %w: manifest: %w", f.blob, ErrNoPeers, errors.Join(errs...))
}

// transfer moves the missing chunks of one blob from a set of peers into the store.
type transfer struct {
	n      *Node
	blob   cid.Cid
	m      *blobstore.Manifest
	p      fetchParams
	ctx    context.Context
	cancel context.CancelCauseFunc
	report func(done int64)
	wg     sync.WaitGroup

	mu           sync.Mutex
	cond         *sync.Cond    // signalled on every state change a waiting worker may care about
	have         []bool        // chunk is stored
	assigned     []uint8       // requests in flight for the chunk
	since        []time.Time   // when the chunk's oldest request in flight started
	chunkTime    time.Duration // moving average of one chunk request's duration (0: none finished yet)
	avail        []uint16      // live peers holding the chunk
	missing      int
	low          int // every chunk before it is stored
	done         int64
	lastProgress time.Time
	lastHave     time.Time // a peer last announced a chunk it had not held
	peers        map[peer.ID]*fpeer
	live         int
	self         peer.ID   // this node
	arriving     *arrivals // the chunks this node is receiving (swarm_arriving.go), for pick's slow copies
	own          []bool    // chunks this node owns in the seed scatter (swarm_seed.go), for the fetchers in ownKey
	ownKey       string    // the fetchers, sorted, joined
	shares       int       // fetchers in ownKey: chunk i is in share i mod shares
	weight       []uint64  // this node's weight of each chunk (the order it takes other shares' chunks in)
	began        time.Time
	fetched      int        // chunks missing at the start
	requested    int        // chunk requests in flight
	dups         int        // requests for a chunk another request was fetching already
	copies       [rules]int // chunks requested again, by the rule that chose them (ruleFree unused)
	inVain       [rules]int // chunks received whole after another copy was stored, by the rule of their request
}

// copyRule is why pick chose a chunk: free (no request was fetching it), or a copy of one in flight because that
// request was slow, or to fill the end game (logDone counts each rule's copies and those that arrived in vain).
type copyRule uint8

const (
	ruleFree copyRule = iota
	ruleSlow
	ruleFill
	rules
)

// fpeer is one peer's state within a transfer.
type fpeer struct {
	id       peer.ID
	have     []bool // nil until its first HAVE
	held     int    // chunks set in have
	inflight map[int]bool
	dropped  bool
	failures int
	found    bool // fp has answered HAVE for the blob at least once (it holds or fetches it)
	// arr[i]: when fp announced chunk i arriving (ARRIVING, cut-through) and has not announced it stored; zero:
	// not arriving. nil until its first ARRIVING; arrN counts the non-zero entries.
	arr  []time.Time
	arrN int
	// refused[i]: until when chunk i is not asked of fp, a full holder that answered NO_CHUNK because the chunk
	// has left it for another receiver while others have not (swarm_served.go); nil until the first refusal.
	refused []time.Time
}

// refuseBackoff is how long a chunk a full holder refused is not asked of it again: its HAVE from the receiver it
// went to arrives first, or the holder has sent every chunk by then and serves it.
const refuseBackoff = 2 * time.Second

// whole reports whether fp is known to hold every chunk; call with t.mu held.
func (fp *fpeer) whole() bool { return fp.have != nil && !slices.Contains(fp.have, false) }

// serves reports whether fp holds chunk i, or is receiving it, and has not refused it recently (now).
func (fp *fpeer) serves(i int, now time.Time) bool {
	return fp.has(i) && (fp.refused == nil || !now.Before(fp.refused[i]))
}

// has reports whether fp holds chunk i or has announced it arriving: such a chunk counts in t.avail.
func (fp *fpeer) has(i int) bool {
	return (fp.have != nil && fp.have[i]) || fp.arriving(i)
}

// arriving reports whether fp has announced chunk i arriving and not stored.
func (fp *fpeer) arriving(i int) bool { return fp.arr != nil && !fp.arr[i].IsZero() }

func newTransfer(ctx context.Context, n *Node, blob cid.Cid, m *blobstore.Manifest, have []bool, report func(int64)) *transfer {
	t := &transfer{
		n: n, self: n.ID(), blob: blob, m: m, p: n.fp, report: report, arriving: &n.srv.arriving,
		have: have, assigned: make([]uint8, len(have)), avail: make([]uint16, len(have)), since: make([]time.Time, len(have)),
		peers: map[peer.ID]*fpeer{}, lastProgress: time.Now(), lastHave: time.Now(), began: time.Now(),
	}
	t.cond = sync.NewCond(&t.mu)
	t.ctx, t.cancel = context.WithCancelCause(ctx)
	for i, h := range have {
		if h {
			t.done += int64(m.ChunkLen(i))
		} else {
			t.missing++
		}
	}
	t.fetched = t.missing
	return t
}

// addPeers starts fetching from peers not yet in the transfer.
func (t *transfer) addPeers(ps []peer.ID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range ps {
		if p == t.n.ID() || t.peers[p] != nil || t.ctx.Err() != nil {
			continue
		}
		fp := &fpeer{id: p, inflight: map[int]bool{}}
		t.peers[p] = fp
		t.live++
		t.wg.Go(func() { t.runPeer(fp) })
	}
}

// run waits until every chunk is stored, the transfer fails or ctx ends, then stops all workers.
func (t *transfer) run() error {
	stop := context.AfterFunc(t.ctx, func() {
		t.mu.Lock()
		t.cond.Broadcast()
		t.mu.Unlock()
	})
	defer stop()
	t.wg.Go(t.watchdog)
	t.mu.Lock()
	if t.live == 0 && t.missing > 0 {
		t.cancel(fmt.Errorf("%w: no peers", ErrNoPeers))
	}
	for t.missing > 0 && t.ctx.Err() == nil {
		t.cond.Wait()
	}
	t.mu.Unlock()
	t.cancel(nil)
	t.wg.Wait()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.missing == 0 {
		return nil
	}
	return context.Cause(t.ctx)
}

// watchdog fails the transfer when no chunk has arrived for stallTimeout, and wakes the waiting workers every tick.
func (t *transfer) watchdog() {
	tick := time.NewTicker(min(time.Second, t.p.stallTimeout/4))
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
			t.mu.Lock()
			idle := time.Since(t.lastProgress)
			quiet := min(idle, time.Since(t.lastHave))
			orphan := t.orphan()
			t.expireArriving(time.Now())
			t.cond.Broadcast() // choices that depend on time (slow requests, shares' firsts) are made again
			t.mu.Unlock()
			if idle > t.p.stallTimeout {
				t.cancel(fmt.Errorf("%w for %s", ErrStalled, idle.Round(time.Second)))
				return
			}
			// A chunk no live peer holds (the seed left before it had sent it) while nothing arrives and no peer
			// announces anything: waiting longer cannot help.
			if orphan >= 0 && quiet > t.p.sourceTimeout {
				t.cancel(fmt.Errorf("%w: chunk %d is held by no live peer and nothing arrived for %s", ErrNoPeers, orphan,
					quiet.Round(time.Second)))
				return
			}
		}
	}
}

// orphan returns a missing chunk that no live peer holds and no request is fetching, or -1. Only once every live
// peer has sent its bitmap.
func (t *transfer) orphan() int {
	for _, p := range t.peers {
		if !p.dropped && p.have == nil {
			return -1
		}
	}
	for i := t.low; i < len(t.have); i++ {
		if !t.have[i] && t.avail[i] == 0 && t.assigned[i] == 0 {
			return i
		}
	}
	return -1
}

// runPeer follows fp's HAVE bitmap, runs its request workers once the first bitmap is in, and keeps following
// the bitmap while fp lacks chunks (it may be fetching the blob too): pushed through WATCH_HAVE, or, from a peer
// that does not support it, polled with GET_HAVE every haveRefresh.
func (t *transfer) runPeer(fp *fpeer) {
	// The connection manager trims idle connections; not one this transfer is using. The tag names the blob so
	// that another transfer's end does not lift this one's protection.
	tag := "npu-agent-fetch-" + t.blob.String()
	t.n.h.ConnManager().Protect(fp.id, tag)
	defer t.n.h.ConnManager().Unprotect(fp.id, tag)
	var workers sync.WaitGroup
	defer workers.Wait()
	start := sync.OnceFunc(func() {
		k := t.p.perPeer
		t.mu.Lock()
		if fp.whole() {
			k = max(k, t.p.perWhole)
		}
		t.mu.Unlock()
		if t.n.score(fp.id) < 0 {
			k = 1
		}
		for range k {
			workers.Go(func() { t.worker(fp) })
		}
	})
	watch := msgWatchHave // 0 once fp has answered that it has no watch: GET_HAVE polls
	if t.p.cutThrough {
		watch = msgWatchHave2
	}
	tick := time.NewTicker(t.p.haveRefresh)
	defer tick.Stop()
	for {
		t.mu.Lock()
		full := fp.whole()
		stop := fp.dropped || t.missing == 0
		t.mu.Unlock()
		if stop {
			return
		}
		if !full && watch != 0 {
			err := t.watch(fp, watch, start)
			switch {
			case t.ctx.Err() != nil:
				return
			case errors.Is(err, errNoWatch) && watch == msgWatchHave2:
				watch = msgWatchHave // a version without cut-through: its WATCH_HAVE at once
				continue
			case errors.Is(err, errNoWatch):
				watch = 0
			case errors.Is(err, blobstore.ErrNotFound):
				t.setHaveFrom(fp, make([]bool, len(t.have)), false) // not (yet) fetching it; watch again later
			case err != nil && !errors.Is(err, ErrBusy):
				t.failed(fp, err)
			}
		}
		if !full && watch == 0 {
			have, err := getHave(t.ctx, t.n.h, fp.id, t.blob, len(t.have), t.p.rpcTimeout)
			switch {
			case t.ctx.Err() != nil:
				return
			case errors.Is(err, blobstore.ErrNotFound):
				t.setHaveFrom(fp, make([]bool, len(t.have)), false) // not (yet) fetching it; ask again later
			case err != nil:
				t.failed(fp, err)
			default:
				t.setHave(fp, have)
			}
		}
		t.mu.Lock()
		ready := fp.have != nil
		t.mu.Unlock()
		if ready {
			start()
		}
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (t *transfer) setHave(fp *fpeer, have []bool) { t.setHaveFrom(fp, have, true) }

// setHaveFrom records fp's bitmap; found: fp holds the blob or part of it (it answered HAVE, not "not found").
func (t *transfer) setHaveFrom(fp *fpeer, have []bool, found bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if fp.dropped {
		return
	}
	fp.found = fp.found || found
	held := 0
	for i, h := range have {
		old := fp.has(i)
		if h && fp.arriving(i) { // stored at fp now
			fp.arr[i] = time.Time{}
			fp.arrN--
		}
		if now := h || fp.arriving(i); now && !old {
			t.avail[i]++
			t.lastHave = time.Now()
		} else if !now && old {
			t.avail[i]--
		}
		if h {
			held++
		}
	}
	fp.have, fp.held = have, held
	t.cond.Broadcast()
}

// worker requests ranges from fp one after the other over one stream, kept while requests succeed so that
// its flow-control window stays open.
func (t *transfer) worker(fp *fpeer) {
	var st network.Stream
	defer func() {
		if st != nil {
			st.Close()
		}
	}()
	for {
		r, rule, ok, wait := t.next(fp, false)
		if wait && st != nil && t.isSeedLike(fp) {
			// Nothing to ask the seed for now: close the stream, so that the seed counts the last response as
			// delivered (6.8 "seed sends once"; the seed may leave once every chunk is) and holds no idle stream.
			st.Close()
			st = nil
		}
		if wait {
			r, rule, ok, _ = t.next(fp, true)
		}
		if !ok {
			return
		}
		began := time.Now()
		err := t.request(fp, &st, r, rule)
		t.release(fp, r)
		if err == nil {
			t.timed(time.Since(began) / time.Duration(r.Count))
		}
		if err != nil {
			t.failed(fp, err)
			if errors.Is(err, ErrBusy) {
				select {
				case <-t.ctx.Done():
				case <-time.After(time.Duration(100+rand.IntN(400)) * time.Millisecond):
				}
			}
			continue
		}
		t.mu.Lock()
		fp.failures = 0
		t.mu.Unlock()
	}
}

// isSeedLike is seedLike under t.mu.
func (t *transfer) isSeedLike(fp *fpeer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seedLike(fp)
}

// next blocks until there is a range for fp to request and marks it in flight; false when fp should stop. With
// block false it does not wait: wait true says it would have.
func (t *transfer) next(fp *fpeer, block bool) (r chunkRange, rule copyRule, ok, wait bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if t.ctx.Err() != nil || t.missing == 0 || fp.dropped {
			return chunkRange{}, ruleFree, false, false
		}
		if !block {
			if len(fp.inflight) > 0 && t.seedLike(fp) {
				return chunkRange{}, ruleFree, false, true
			}
			if r, rule, ok := t.pick(fp); ok {
				t.mark(fp, r, rule)
				return r, rule, true, false
			}
			return chunkRange{}, ruleFree, false, true
		}
		if len(fp.inflight) > 0 && t.seedLike(fp) {
			t.cond.Wait()
			continue
		}
		if r, rule, ok := t.pick(fp); ok {
			t.mark(fp, r, rule)
			return r, rule, true, false
		}
		t.cond.Wait()
	}
}

// mark records r, chosen by rule, as in flight from fp.
func (t *transfer) mark(fp *fpeer, r chunkRange, rule copyRule) {
	now := time.Now()
	if rule != ruleFree {
		t.copies[rule] += int(r.Count)
	}
	for i := r.First; i < r.First+r.Count; i++ {
		if t.assigned[i] == 0 {
			t.since[i] = now
		} else {
			t.dups++
		}
		t.assigned[i]++
		t.requested++
		fp.inflight[int(i)] = true
	}
}

// seedLike reports whether fp holds the whole blob while another live peer holds part of it, or has not yet
// answered HAVE, or (in the transfer's first startGrace) answered that it does not have the blob. Such a peer is
// most likely the seed that every receiver of a fleet starts from, and it gets one request at a time: its uplink is
// shared by every receiver, so fewer chunks in flight each get through sooner and spread from the receivers that
// hold them, rather than the seed sending many chunks slowly to everyone at once. A lone source keeps every worker
// busy. A peer yet to answer, or not fetching yet, may be another receiver starting a moment later: counting it
// keeps the first receivers of a fleet from asking the seed for perWhole chunks at once, which then arrived (and
// were forwarded) at a quarter of the pace for the first 2-4 s of the 12-host run.
func (t *transfer) seedLike(fp *fpeer) bool {
	n := len(t.have)
	if fp.held < n {
		return false
	}
	young := time.Since(t.began) < startGrace
	for _, p := range t.peers {
		if p == fp || p.dropped || p.held == n {
			continue
		}
		if p.have == nil || p.found || young {
			return true
		}
	}
	return false
}

// startGrace: how long after a transfer starts a peer that does not have the blob yet counts as a receiver about
// to fetch it (seedLike): a fleet's receivers start their fetches within a few hundred milliseconds of each other.
const startGrace = time.Second

// pick chooses the chunk fp should send next: a missing chunk fp holds that no request is fetching, the rarest
// (fewest live peers holding it); among equally rare ones, one in the front window (the first pickWindow missing
// chunks no request is fetching) if any; among those, one uniformly at random. It extends the chunk with the
// following ones fp can serve under the same condition, up to chunksPerReq. When every missing chunk is already
// requested (the end game) and fewer than endGameFill requests are in flight, it duplicates a chunk requested from a
// single other peer longer than slowAfter ago, chosen at random.
//
// Rarity first spreads a seed's chunks over the receivers of a fleet. The front window makes chunks arrive
// nearly in order where rarity does not decide (one source), so the blob's file fills nearly sequentially.
// The choice among equals must be uniform: receivers starting together from one seed choose from the same rarest
// chunks, and a biased choice (such as the first candidate after a random start, which favours chunks that follow
// long runs of non-candidates) makes them fetch the same chunks from the seed while others wait.
func (t *transfer) pick(fp *fpeer) (chunkRange, copyRule, bool) {
	if fp.have == nil {
		return chunkRange{}, ruleFree, false
	}
	n := len(t.have)
	now := time.Now()
	free := func(i int) bool { return !t.have[i] && t.assigned[i] == 0 && fp.serves(i, now) }
	dup := func(i int) bool { return !t.have[i] && t.assigned[i] == 1 && fp.serves(i, now) && !fp.inflight[i] }
	for t.low < n && t.have[t.low] {
		t.low++
	}
	// Rarity, and among equally rare chunks one fp holds verified before one still arriving there (cut-through).
	rarity := func(i int) int {
		if fp.arriving(i) {
			return 2*int(t.avail[i]) + 1
		}
		return 2 * int(t.avail[i])
	}
	anyFree, rarest := false, -1
	for i := t.low; i < n; i++ {
		if !t.have[i] && t.assigned[i] == 0 {
			anyFree = true
		}
		if free(i) && (rarest < 0 || rarity(i) < rarity(rarest)) {
			rarest = i
		}
	}
	ok, rule := free, ruleFree
	var best int
	if rarest >= 0 && t.seedLike(fp) {
		if i, ok := t.pickFromSeed(fp); ok {
			return chunkRange{First: uint32(i), Count: 1}, ruleFree, true
		}
		// While chunks that only full holders have are on their way, the rest is left to the receivers that hold
		// it and the seed gets only the duplicates below (a slow request, or the end game). Once every chunk has
		// left the full holders, their uplinks would idle: then they serve the rarest like any peer.
		if t.seedOnlyLeft() {
			rarest = -1
		}
	}
	if rarest >= 0 {
		var front, all reservoir
		window := 0 // unrequested missing chunks so far: the front window is the first pickWindow of them
		for i := t.low; i < n; i++ {
			if !t.have[i] && t.assigned[i] == 0 {
				window++
			}
			if free(i) && rarity(i) == rarity(rarest) {
				all.add(i)
				if window <= pickWindow {
					front.add(i)
				}
			}
		}
		best = all.pick
		if front.n > 0 {
			best = front.pick
		}
	} else {
		// Nothing left for fp alone. Duplicate a chunk requested from one other peer only when its request has
		// taken much longer than a chunk usually takes (slowAfter): fp's link does not sit idle behind another
		// peer's slow (or departed) uplink. With endGameFill or more in flight, only once nothing of the blob flows
		// in; below it (the end game's last requests), whether or not its bytes trickle in.
		if anyFree && t.seedLike(fp) {
			// The seed's uplink is the scarce one: it sends what no partial peer holds, and duplicates only in
			// the end game.
			return chunkRange{}, ruleFree, false
		}
		// While bytes of the blob still flow in, a request is slow because this node's downlink is shared (a
		// half-rate host's every request; at 24 hosts, ten forwards at once), not because its sender stopped: a
		// copy would only take bytes from the requests that flow (at 24 hosts a per-chunk test let 207 chunks a
		// run arrive in vain; 6.8). Below endGameFill in the end game the downlink would idle, so a slow request is
		// copied even while its bytes trickle in (a sender holding a last chunk at a crawl), a seed-like peer
		// included; copying younger ones there took bytes from other receivers' last chunks (6.9).
		slow, flowing := t.slowAfter(), false
		rule = ruleFill
		if anyFree || t.requested >= endGameFill {
			flowing, rule = t.arriving.flowing(t.blob, now.Add(-flowWindow)), ruleSlow
		}
		ok = func(i int) bool { return !flowing && dup(i) && now.Sub(t.since[i]) > slow }
		var any reservoir
		for i := t.low; i < n; i++ {
			if ok(i) {
				any.add(i)
			}
		}
		if any.n == 0 {
			return chunkRange{}, ruleFree, false
		}
		best = any.pick
	}
	r := chunkRange{First: uint32(best), Count: 1}
	for j := best + 1; j < n && int(r.Count) < t.p.chunksPerReq && ok(j); j++ {
		r.Count++
	}
	return r, rule, true
}

// flowWindow: no request is copied as slow while bytes of the blob arrived within it (pick).
const flowWindow = minSlowAfter

// endGameFill is how many chunk requests in flight keep this node's downlink busy: below it, a slow request is
// copied even while bytes of the blob flow in.
const endGameFill = 4

// Bounds of slowAfter.
const (
	minSlowAfter = 500 * time.Millisecond
	maxSlowAfter = 10 * time.Second
)

// slowAfter is how long a chunk request may run before an idle worker of another peer holding the chunk requests
// it too: four times the average chunk request, within [minSlowAfter, maxSlowAfter].
func (t *transfer) slowAfter() time.Duration {
	if t.chunkTime == 0 {
		return maxSlowAfter
	}
	return min(max(4*t.chunkTime, minSlowAfter), maxSlowAfter)
}

// reservoir picks one of the values added to it, each with equal probability, without storing them.
type reservoir struct {
	n    int
	pick int
}

func (r *reservoir) add(i int) {
	if r.n++; rand.IntN(r.n) == 0 {
		r.pick = i
	}
}

// timed folds one chunk's request duration into the moving average.
func (t *transfer) timed(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.chunkTime == 0 {
		t.chunkTime = d
	} else {
		t.chunkTime += (d - t.chunkTime) / 8
	}
}

// release ends r's assignment to fp and wakes workers that may now pick its unfetched chunks.
func (t *transfer) release(fp *fpeer, r chunkRange) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := r.First; i < r.First+r.Count; i++ {
		t.assigned[i]--
		t.requested--
		delete(fp.inflight, int(i))
	}
	t.cond.Broadcast()
}

// errBadChunk marks a chunk that failed verification: the sending peer is dropped.
var errBadChunk = errors.New("peer sent a chunk that does not match its hash")

// request fetches range r from fp over *st (opened if nil, reset and cleared on any error) and stores each
// chunk as it arrives.
func (t *transfer) request(fp *fpeer, st *network.Stream, r chunkRange, rule copyRule) (err error) {
	if *st == nil {
		ctx, cancel := context.WithTimeout(t.ctx, t.p.rpcTimeout)
		s, err := t.n.h.NewStream(ctx, fp.id, ChunkProtocol)
		cancel()
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
	rs := []chunkRange{r}
	if err := writeFrame(s, msgGetChunks, encodeGetChunks(t.blob, rs)); err != nil {
		return err
	}
	served := 0
	defer func() { t.n.adjustScore(fp.id, served*scoreChunk) }()
	return readChunksSummed(s, t.m, rs, t.beginArrival, func(i int, data []byte, sum [32]byte) error {
		if data == nil {
			t.noChunk(fp, i)
			return nil
		}
		if t.already(i, rule) { // the end game got it from another peer first
			return nil
		}
		if err := putChunk(t.ctx, t.n.store, t.blob, i, data, sum); err != nil {
			if errors.Is(err, blobstore.ErrInvalidData) {
				t.n.onBadChunk(fp.id)
				return fmt.Errorf("%w: chunk %d: %w", errBadChunk, i, err)
			}
			// The store failing (disk full, closed) ends the whole transfer.
			t.cancel(fmt.Errorf("store chunk %d: %w", i, err))
			return err
		}
		served++
		t.stored(i, rule)
		return nil
	})
}

// transferDoneMsg is logged when a transfer has every chunk, with what its schedule cost (internal/fleetbench
// sums it over a fleet's receivers).
const transferDoneMsg = "blob transfer has every chunk"

// logDone logs a complete transfer's counts: requests that duplicated one in flight and copies received in vain.
func (t *transfer) logDone() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.missing > 0 {
		return
	}
	wasted := 0 // every chunk received in vain, whatever the rule of its request
	for _, n := range t.inVain {
		wasted += n
	}
	t.n.log.Info(transferDoneMsg, "blob", t.blob, "chunks", t.fetched, "duplicate_requests", t.dups,
		"wasted_chunks", wasted, "slow_copies", t.copies[ruleSlow], "slow_wasted", t.inVain[ruleSlow],
		"fill_copies", t.copies[ruleFill], "fill_wasted", t.inVain[ruleFill], "took", time.Since(t.began).Round(time.Millisecond))
}

// already reports whether chunk i, just received whole by a request chosen by rule, was stored from another copy
// first (counted as wasted).
func (t *transfer) already(i int, rule copyRule) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.have[i] {
		t.inVain[rule]++
	}
	return t.have[i]
}

func (t *transfer) stored(i int, rule copyRule) {
	t.mu.Lock()
	if t.have[i] {
		t.inVain[rule]++
		t.mu.Unlock()
		return
	}
	t.have[i] = true
	t.missing--
	t.done += int64(t.m.ChunkLen(i))
	t.lastProgress = time.Now()
	done := t.done
	t.cond.Broadcast()
	t.mu.Unlock()
	t.n.srv.storedChunk(t.blob, i) // push it to the peers watching this blob
	t.report(done)
}

// noChunk records that fp no longer claims chunk i, or, from a peer holding the whole blob (a seed that has sent
// the chunk to another receiver), that it is not to be asked for it for refuseBackoff.
func (t *transfer) noChunk(fp *fpeer, i int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !fp.dropped && fp.have != nil && fp.held == len(t.have) {
		if fp.refused == nil {
			fp.refused = make([]time.Time, len(t.have))
		}
		fp.refused[i] = time.Now().Add(refuseBackoff)
		return
	}
	if !fp.dropped && fp.has(i) {
		if fp.have[i] {
			fp.have[i] = false
			fp.held--
		} else {
			fp.arr[i] = time.Time{}
			fp.arrN--
		}
		t.avail[i]--
	}
}

// failed accounts a failed request of fp: bad data drops it at once, anything else after maxFailures in a row
// or when it has disconnected.
func (t *transfer) failed(fp *fpeer, err error) {
	if t.ctx.Err() != nil {
		return
	}
	var drop bool
	switch {
	case errors.Is(err, errBadChunk):
		t.n.adjustScore(fp.id, scoreBadData)
		drop = true
	case errors.Is(err, ErrBusy):
		return
	case errors.Is(err, blobstore.ErrNotFound):
		drop = true // it deleted the blob
	default:
		t.n.adjustScore(fp.id, scoreFailure)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	fp.failures++
	if fp.failures >= t.p.maxFailures || t.n.h.Network().Connectedness(fp.id) != network.Connected {
		drop = true
	}
	if !drop || fp.dropped {
		return
	}
	t.n.log.Warn("peer dropped from fetch", "blob", t.blob, "peer", fp.id, "err", err)
	for i := range t.have {
		if fp.has(i) {
			t.avail[i]--
		}
	}
	fp.dropped = true
	if t.live--; t.live == 0 {
		t.cancel(fmt.Errorf("%w: every peer failed, last %s: %w", ErrNoPeers, fp.id, err))
	}
	t.cond.Broadcast()
}
