package p2p

import (
	"context"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
)

// Seed sends once (docs/design.md 6.8, "seed sends once"): a node serving a blob it held complete before it served
// any chunk of it (the seed of a fleet distribution) sends each chunk once while some chunk has not left it yet;
// a request for a chunk already sent gets NO_CHUNK, and the receiver takes it from the peer it went to. Once every
// chunk has been sent, the seed serves anything again (the end game, receivers that lost a chunk). A chunk counts
// as delivered once the client has read its whole response: the client's next request on the stream, or its clean
// close, proves it (6.7: a client reads the whole response before writing the next request).
const maxSeedBlobs = 64 // blobs tracked at once; the oldest is forgotten (it then serves every request)

// seedServed tracks the chunks sent of each blob this node seeds.
type seedServed struct {
	mu    sync.Mutex
	blobs map[cid.Cid]*seedBlob
	order []cid.Cid // oldest first
}

// seedBlob is one blob's state. seed false: the blob was partial here when first served (this node is a receiver
// that forwards); nothing is refused.
type seedBlob struct {
	seed        bool
	sent        []bool // a response carrying the chunk was written (or is being written)
	unsent      int
	delivered   []bool
	undelivered int
	began       time.Time     // the first chunk's send
	allSent     time.Duration // from began to the last chunk's first send
	resent      int64         // chunks sent again after every chunk had been sent once
	refused     int64         // requests answered NO_CHUNK because the chunk had been sent and others had not
}

// SeedStats is what a seeding node knows of one blob's chunks (Node.SeedStats).
type SeedStats struct {
	Seed         bool  // the blob was complete here before it was first served
	Chunks       int   // chunks in the blob (0: not tracked)
	Sent         int   // distinct chunks sent at least once
	Delivered    int   // distinct chunks a client has read whole
	Resent       int64 // chunk sends beyond the first of each chunk
	Refused      int64 // requests refused because the chunk had left already and others had not
	AllSent      bool
	AllDelivered bool
}

// state returns blob's entry, creating it from the store's bitmap on the first request.
func (s *seedServed) state(ctx context.Context, srv *server, blob cid.Cid) *seedBlob {
	s.mu.Lock()
	b := s.blobs[blob]
	s.mu.Unlock()
	if b != nil {
		return b
	}
	have, err := srv.store.HaveChunks(ctx, blob)
	if err != nil {
		return nil // not held: every chunk gets NO_CHUNK anyway
	}
	nb := &seedBlob{seed: true}
	for _, h := range have {
		nb.seed = nb.seed && h
	}
	if nb.seed {
		nb.sent, nb.unsent = make([]bool, len(have)), len(have)
		nb.delivered, nb.undelivered = make([]bool, len(have)), len(have)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.blobs[blob]; b != nil {
		return b
	}
	if s.blobs == nil {
		s.blobs = map[cid.Cid]*seedBlob{}
	}
	if len(s.order) >= maxSeedBlobs {
		delete(s.blobs, s.order[0])
		s.order = s.order[1:]
	}
	s.blobs[blob] = nb
	s.order = append(s.order, blob)
	return nb
}

// take decides whether chunk i of b may be sent now; first: this is its first send.
func (s *seedServed) take(b *seedBlob, i int) (ok, first bool) {
	if b == nil || !b.seed || i < 0 || i >= len(b.sent) {
		return true, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !b.sent[i]:
		if b.began.IsZero() {
			b.began = time.Now()
		}
		b.sent[i] = true
		if b.unsent--; b.unsent == 0 {
			b.allSent = time.Since(b.began)
		}
		return true, true
	case b.unsent > 0:
		b.refused++
		return false, false
	default:
		return true, false
	}
}

// again counts a chunk of b sent once more, after its write succeeded.
func (s *seedServed) again(b *seedBlob) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b.resent++
}

// untake undoes a first send whose write failed: the chunk has not left.
func (s *seedServed) untake(b *seedBlob, i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.sent[i] {
		b.sent[i] = false
		b.unsent++
	}
}

// deliver marks chunks read whole by a client; true when the last undelivered chunk of b was among them.
func (s *seedServed) deliver(b *seedBlob, idx []int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	last := false
	for _, i := range idx {
		if !b.delivered[i] {
			b.delivered[i] = true
			b.undelivered--
			last = b.undelivered == 0
		}
	}
	return last
}

func (s *seedServed) stats(blob cid.Cid) SeedStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.blobs[blob]
	if b == nil {
		return SeedStats{}
	}
	n := len(b.sent)
	return SeedStats{Seed: b.seed, Chunks: n, Sent: n - b.unsent, Delivered: n - b.undelivered, Resent: b.resent,
		Refused: b.refused, AllSent: b.seed && b.unsent == 0, AllDelivered: b.seed && b.undelivered == 0}
}

// pendingDelivery is what one stream's last response carried of seeded blobs, confirmed by the client's next request.
type pendingDelivery struct {
	b    *seedBlob
	blob cid.Cid
	idx  []int
}

// confirm records p's chunks as delivered and empties it.
func (s *server) confirm(p *pendingDelivery) {
	if p.b == nil || len(p.idx) == 0 {
		return
	}
	if s.seeds.deliver(p.b, p.idx) {
		st := s.seeds.stats(p.blob)
		s.seeds.mu.Lock()
		took, sent := time.Since(p.b.began), p.b.allSent
		s.seeds.mu.Unlock()
		s.log.Info("every chunk of the blob delivered to peers at least once", "blob", p.blob, "chunks", st.Chunks,
			"resent", st.Resent, "refused", st.Refused, "all_sent_after", sent.Round(time.Millisecond),
			"all_delivered_after", took.Round(time.Millisecond))
	}
	p.idx = p.idx[:0]
}

// SeedStats reports what this node knows of the chunks it sent of blob as a seed (zero when it has not served it
// since it held it complete, or forgot it).
func (n *Node) SeedStats(blob cid.Cid) SeedStats { return n.srv.seeds.stats(blob) }
