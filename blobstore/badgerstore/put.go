package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
)

// putChunk is one chunk on its way through a Put: read, hashed whole and alone, written. Its buffer goes back to
// the pool when both the whole-blob hasher and the badger commit are done with it.
type putChunk struct {
	idx    int
	buf    *[]byte
	data   []byte
	digest [32]byte
	refs   atomic.Int32
}

// put is the state of one Put.
type put struct {
	s      *Store
	ctx    context.Context
	cancel context.CancelCauseFunc
	slots  chan struct{} // bounds chunks in flight (memory)

	flush   *flusher
	digests [][32]byte // chunk digests by index; written by the writer goroutine only
	mine    [][32]byte // digests registered in s.inflight; guarded by s.mu
}

// Put streams r into the store. Reading, whole-blob hashing, chunk hashing and badger writes run in parallel
// stages; memory is bounded by putBuffers chunks. The blob becomes visible only after every chunk is synced.
func (s *Store) Put(ctx context.Context, r io.Reader) (*blobstore.Manifest, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p := &put{s: s, ctx: ctx, cancel: cancel, slots: make(chan struct{}, putBuffers)}
	m, err := p.run(r)
	if err != nil {
		// Drop what this put wrote and no other blob uses; a crash instead leaves it to the sweep at Open.
		var removed int
		var serr error
		s.mu.Lock()
		p.unregisterLocked()
		if len(p.mine) > 0 {
			removed, serr = s.sweepLocked(p.mine)
		}
		s.mu.Unlock()
		if serr != nil {
			s.log.Warn("blob store: remove chunks of a failed put", "err", serr)
		}
		if removed > 0 {
			s.kickReclaim() // a put that ran out of space should give it back without waiting for a gc
		}
		return nil, err
	}
	return m, nil
}

func (p *put) fail(err error) { p.cancel(err) }

// err is the first failure of any stage, or the caller's context error.
func (p *put) err() error {
	if cause := context.Cause(p.ctx); cause != nil {
		return cause
	}
	return nil
}

func (p *put) release(c *putChunk) {
	if c.refs.Add(-1) == 0 {
		p.s.putBuf(c.buf)
		<-p.slots
	}
}

func (p *put) run(r io.Reader) (*blobstore.Manifest, error) {
	wholeCh := make(chan *putChunk, putBuffers)
	hashCh := make(chan *putChunk, putBuffers)
	writeCh := make(chan *putChunk, putBuffers)
	whole := sha256.New()

	var wg sync.WaitGroup
	wg.Go(func() {
		for c := range wholeCh {
			if p.ctx.Err() == nil {
				whole.Write(c.data)
			}
			p.release(c)
		}
	})
	var hashers sync.WaitGroup
	for range 2 {
		hashers.Go(func() {
			for c := range hashCh {
				if p.ctx.Err() == nil {
					c.digest = sha256.Sum256(c.data)
					p.register(c.digest)
				}
				writeCh <- c // buffered for every chunk in flight: never blocks for long
			}
		})
	}
	wg.Go(func() {
		hashers.Wait()
		close(writeCh)
	})
	p.flush = newFlusher(p.s.db.Sync)
	wg.Go(func() { p.write(writeCh) })

	var size uint64
	p.read(r, &size, wholeCh, hashCh)
	close(wholeCh)
	close(hashCh)
	wg.Wait()
	ferr := p.flush.close()
	if err := p.err(); err != nil {
		return nil, fmt.Errorf("put: %w", err)
	}
	if ferr != nil {
		return nil, fmt.Errorf("put: sync chunks: %w", ferr)
	}

	m := &blobstore.Manifest{Size: size, ChunkSize: blobstore.ChunkSize, Chunks: p.digests}
	copy(m.SHA256[:], whole.Sum(nil))
	if len(m.Chunks) != m.NumChunks() {
		return nil, fmt.Errorf("put: %d chunk digests for %d bytes", len(m.Chunks), size) // a bug, not input
	}
	if err := p.s.db.Sync(); err != nil {
		return nil, fmt.Errorf("put: sync chunks: %w", err)
	}
	enc := m.Encode()
	d := sha256.Sum256(enc)
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	err := p.s.update(func(txn *badger.Txn) error {
		if err := txn.Set(key(prefixManifest, d), enc); err != nil {
			return err
		}
		if err := txn.Delete(key(prefixPartial, d)); err != nil { // a put completes a fetch of the same blob
			return err
		}
		return p.s.setAccess(txn, d, p.s.opts.now())
	})
	if err == nil {
		err = p.s.db.Sync()
	}
	if err != nil {
		return nil, fmt.Errorf("put: write manifest: %w", err)
	}
	p.unregisterLocked()
	p.mine = nil // referenced by the manifest now
	p.s.dropPrefix(d)
	return m, nil
}

// read fills chunks from r and hands each to the whole-blob hasher and the chunk hashers.
func (p *put) read(r io.Reader, size *uint64, wholeCh, hashCh chan<- *putChunk) {
	for idx := 0; ; idx++ {
		select {
		case p.slots <- struct{}{}:
		case <-p.ctx.Done():
			return
		}
		buf := p.s.getBuf()
		n, err := io.ReadFull(r, *buf)
		if n > 0 {
			*size += uint64(n)
			if *size > blobstore.MaxBlobSize {
				p.s.putBuf(buf)
				<-p.slots
				p.fail(fmt.Errorf("blob larger than the %d-byte limit", uint64(blobstore.MaxBlobSize)))
				return
			}
			c := &putChunk{idx: idx, buf: buf, data: (*buf)[:n]}
			c.refs.Store(2)
			wholeCh <- c
			hashCh <- c
		} else {
			p.s.putBuf(buf)
			<-p.slots
		}
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return
		case err != nil:
			p.fail(fmt.Errorf("read input: %w", err))
			return
		case p.ctx.Err() != nil:
			return
		}
	}
}

func (p *put) register(d [32]byte) {
	p.s.mu.Lock()
	p.s.inflight[d]++
	p.mine = append(p.mine, d)
	p.s.mu.Unlock()
}

func (p *put) unregisterLocked() {
	for _, d := range p.mine {
		if p.s.inflight[d]--; p.s.inflight[d] <= 0 {
			delete(p.s.inflight, d)
		}
	}
}

// write stores chunks in badger transactions of up to putBatch chunks, committed asynchronously so hashing and
// reading continue while badger writes; it returns when every commit has finished.
func (p *put) write(in <-chan *putChunk) {
	var commits sync.WaitGroup
	var batch []*putChunk
	flush := func() {
		if len(batch) == 0 {
			return
		}
		chunks := batch
		batch = nil
		if err := p.commit(chunks, &commits); err != nil {
			p.fail(err)
			for _, c := range chunks {
				p.release(c)
			}
		}
	}
	for c := range in {
		if p.ctx.Err() != nil {
			p.release(c)
			continue
		}
		for len(p.digests) <= c.idx {
			p.digests = append(p.digests, [32]byte{})
		}
		p.digests[c.idx] = c.digest
		batch = append(batch, c)
		if len(batch) >= putBatch || len(in) == 0 {
			flush()
		}
	}
	flush()
	commits.Wait()
}

func (p *put) commit(chunks []*putChunk, commits *sync.WaitGroup) error {
	var n uint64
	for _, c := range chunks {
		n += uint64(len(c.data))
	}
	if err := p.s.checkSpace(n); err != nil {
		return err
	}
	txn := p.s.db.NewTransaction(true)
	for _, c := range chunks {
		if err := txn.SetEntry(badger.NewEntry(key(prefixChunk, c.digest), c.data)); err != nil {
			txn.Discard()
			return fmt.Errorf("write chunk %d: %w", c.idx, err)
		}
	}
	commits.Add(1)
	p.s.gate.RLock() // released by the callback: reclaim waits for this commit
	txn.CommitWith(func(err error) {
		p.s.gate.RUnlock()
		if err != nil {
			p.fail(fmt.Errorf("write chunks: %w", err))
		}
		for _, c := range chunks {
			p.flush.add(len(c.data))
			p.release(c)
		}
		commits.Done()
	})
	return nil
}
