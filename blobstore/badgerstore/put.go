package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// putChunk is one chunk on its way through a Put: read, hashed whole and alone, written. Its buffer goes back to
// the pool when both the whole-blob hasher and the writer are done with it.
type putChunk struct {
	idx    int
	buf    *[]byte
	data   []byte
	digest [32]byte
	crc    uint32
	refs   atomic.Int32
}

// put is the state of one Put.
type put struct {
	s      *Store
	ctx    context.Context
	cancel context.CancelCauseFunc
	slots  chan struct{} // bounds chunks in flight (memory)
	f      *os.File      // the blob's file, unnamed (or tmp/) until published
	flush  *flusher

	digests [][32]byte // by index; written by the writer goroutine only
	crcs    []uint32
}

// Put streams r into a new file in tmp/ (unnamed where the filesystem allows, so a crash leaves nothing),
// hashing every byte twice (whole blob and chunk, in parallel stages) and writing each chunk once. Memory is
// bounded by putBuffers chunks. The blob becomes visible only after its file is synced, read-only and named
// blobs/<cid>, and its chunk keys are synced: then one transaction writes its manifest key.
func (s *Store) Put(ctx context.Context, r io.Reader) (*blobstore.Manifest, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	f, tmpName, err := createHidden(s.tmpDir, "put")
	if err != nil {
		return nil, fmt.Errorf("put: %w", err)
	}
	p := &put{s: s, ctx: ctx, cancel: cancel, slots: make(chan struct{}, putBuffers), f: f}
	m, err := p.run(r, tmpName)
	f.Close()
	if tmpName != "" {
		os.Remove(tmpName) // published under its name, or failed: either way the temporary name goes
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (p *put) fail(err error) { p.cancel(err) }

// err is the first failure of any stage, or the caller's context error.
func (p *put) err() error { return context.Cause(p.ctx) }

func (p *put) release(c *putChunk) {
	if c.refs.Add(-1) == 0 {
		p.s.putBuf(c.buf)
		<-p.slots
	}
}

func (p *put) run(r io.Reader, tmpName string) (*blobstore.Manifest, error) {
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
					c.crc = chunkCRC(c.data)
				}
				writeCh <- c // buffered for every chunk in flight: never blocks for long
			}
		})
	}
	wg.Go(func() {
		hashers.Wait()
		close(writeCh)
	})
	p.flush = newFlusher(func() error { startWriteback(p.f); return nil })
	wg.Go(func() { p.write(writeCh) })

	var size uint64
	p.read(r, &size, wholeCh, hashCh)
	close(wholeCh)
	close(hashCh)
	wg.Wait()
	p.flush.close()
	if err := p.err(); err != nil {
		return nil, fmt.Errorf("put: %w", err)
	}
	m := &blobstore.Manifest{Size: size, ChunkSize: blobstore.ChunkSize, Chunks: p.digests}
	copy(m.SHA256[:], whole.Sum(nil))
	if len(m.Chunks) != m.NumChunks() {
		return nil, fmt.Errorf("put: %d chunk digests for %d bytes", len(m.Chunks), size) // a bug, not input
	}
	if err := p.f.Sync(); err != nil {
		return nil, fmt.Errorf("put: sync: %w", err)
	}
	if err := p.f.Chmod(0o444); err != nil {
		return nil, fmt.Errorf("put: %w", err)
	}
	if err := p.publish(m, tmpName); err != nil {
		return nil, fmt.Errorf("put: %w", err)
	}
	return m, nil
}

// publish makes the written, synced file the blob: chunk keys (synced), the file named blobs/<cid>, then the
// manifest key in one transaction that also drops a partial key of the same blob (a put completes a fetch).
func (p *put) publish(m *blobstore.Manifest, tmpName string) error {
	s := p.s
	enc := m.Encode()
	d := sha256.Sum256(enc)
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.viewState(d)
	if err != nil {
		return err
	}
	if st == stateComplete {
		return s.update(func(txn *badger.Txn) error { return s.setAccess(txn, d, s.opts.now()) })
	}
	keys := make([][]byte, len(m.Chunks))
	vals := make([][]byte, len(m.Chunks))
	for i := range m.Chunks {
		keys[i], vals[i] = haveKey(d, i), encodeCRC(p.crcs[i])
	}
	if err := s.setKeys(keys, vals); err != nil {
		return fmt.Errorf("write chunk keys: %w", err)
	}
	if err := s.db.Sync(); err != nil {
		return err
	}
	if err := publish(p.f, tmpName, s.blobPath(d)); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(s.blobDir); err != nil {
		return err
	}
	err = s.update(func(txn *badger.Txn) error {
		if err := txn.Set(key(prefixManifest, d), enc); err != nil {
			return err
		}
		if err := txn.Delete(key(prefixPartial, d)); err != nil {
			return err
		}
		if err := setStamp(txn, d, s.blobPath(d), s.opts.now()); err != nil { // Put hashed every chunk it wrote
			return err
		}
		return s.setAccess(txn, d, s.opts.now())
	})
	if err == nil {
		err = s.db.Sync()
	}
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if st == statePartial {
		if err := os.Remove(s.partialPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("blob store: remove the partial file a put completed", "err", err)
		}
	}
	s.dropFill(d)
	return nil
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

// write writes each chunk at its offset in the file (pwrite; chunks come from two hashers, not quite in order),
// after checking free space, and starts writeback every 64 MiB.
func (p *put) write(in <-chan *putChunk) {
	for c := range in {
		if p.ctx.Err() != nil {
			p.release(c)
			continue
		}
		for len(p.digests) <= c.idx {
			p.digests = append(p.digests, [32]byte{})
			p.crcs = append(p.crcs, 0)
		}
		p.digests[c.idx], p.crcs[c.idx] = c.digest, c.crc
		err := p.s.checkSpace(uint64(len(c.data)))
		if err == nil {
			_, err = p.f.WriteAt(c.data, int64(c.idx)*blobstore.ChunkSize)
		}
		if err != nil {
			p.fail(fmt.Errorf("write chunk %d: %w", c.idx, err))
		} else {
			p.flush.add(len(c.data))
		}
		p.release(c)
	}
}
