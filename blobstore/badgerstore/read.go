package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// errChunkMissing marks a chunk key that is absent: expected for a partial blob, corruption for a complete one.
var errChunkMissing = errors.New("chunk missing")

// readChunk appends chunk i of m (blob digest d) to dst after checking its length and re-hashing it. The bytes
// handed out are exactly the bytes hashed: they are copied out of badger first.
func (s *Store) readChunk(d [32]byte, m *blobstore.Manifest, i int, dst []byte) ([]byte, error) {
	start := len(dst)
	err := s.chunkValue(d, m, i, func(v []byte) { dst = append(dst, v...) })
	if err != nil {
		return dst[:start], err
	}
	if sha256.Sum256(dst[start:]) != m.Chunks[i] {
		return dst[:start], fmt.Errorf("%w: %s", blobstore.ErrInvalidData, chunkID(d, m, i))
	}
	return dst, nil
}

// chunkValue calls fn with the stored bytes of chunk i of m (blob digest d) after checking their length, not
// their hash. v points into badger's mmapped value log and is valid only during fn. A missing key is
// errChunkMissing; a wrong length or a value badger cannot read (its CRC32C does not match, a truncated value
// log) is ErrInvalidData.
func (s *Store) chunkValue(d [32]byte, m *blobstore.Manifest, i int, fn func(v []byte)) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	n := m.ChunkLen(i)
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixChunk, m.Chunks[i]))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%s: %w", chunkID(d, m, i), errChunkMissing)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", chunkID(d, m, i), err)
		}
		return item.Value(func(v []byte) error {
			if len(v) != n {
				return fmt.Errorf("%w: %s is %d bytes, want %d", blobstore.ErrInvalidData, chunkID(d, m, i), len(v), n)
			}
			fn(v)
			return nil
		})
	})
	// Badger read errors of a value (a checksum mismatch, a truncated or damaged value log) are corruption too.
	if err != nil && !errors.Is(err, errChunkMissing) && !errors.Is(err, blobstore.ErrInvalidData) && !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("%w: %w", blobstore.ErrInvalidData, err)
	}
	return err
}

func chunkID(d [32]byte, m *blobstore.Manifest, i int) string {
	return fmt.Sprintf("chunk %d (%s) of %s", i, blobstore.ChunkCID(m.Chunks[i]), blobstore.DigestCID(d))
}

// chunkResult is one verified chunk (data in a pooled buffer) or the error reading it.
type chunkResult struct {
	idx  int
	buf  *[]byte
	data []byte
	err  error
}

// chunkStream reads the chunks of a blob in order, readWindow ahead, fetching and hashing them in parallel.
type chunkStream struct {
	s       *Store
	cancel  context.CancelFunc
	results chan chan chunkResult
	wg      sync.WaitGroup
}

func (s *Store) streamChunks(ctx context.Context, d [32]byte, m *blobstore.Manifest, from int) *chunkStream {
	ctx, cancel := context.WithCancel(ctx)
	cs := &chunkStream{s: s, cancel: cancel, results: make(chan chan chunkResult, readWindow)}
	cs.wg.Go(func() {
		defer close(cs.results)
		for i := from; i < len(m.Chunks); i++ {
			slot := make(chan chunkResult, 1)
			select {
			case cs.results <- slot:
			case <-ctx.Done():
				return
			}
			cs.wg.Go(func() {
				if err := ctx.Err(); err != nil {
					slot <- chunkResult{err: err}
					return
				}
				buf := s.getBuf()
				data, err := s.readChunk(d, m, i, (*buf)[:0])
				if err != nil {
					s.putBuf(buf)
					slot <- chunkResult{idx: i, err: err}
					return
				}
				slot <- chunkResult{idx: i, buf: buf, data: data}
			})
		}
	})
	return cs
}

// next returns the next chunk in order; io.EOF after the last.
func (cs *chunkStream) next() chunkResult {
	slot, ok := <-cs.results
	if !ok {
		return chunkResult{err: io.EOF}
	}
	return <-slot
}

// close stops the stream, waits for its goroutines and returns their buffers.
func (cs *chunkStream) close() {
	cs.cancel()
	for slot := range cs.results {
		if r := <-slot; r.buf != nil {
			cs.s.putBuf(r.buf)
		}
	}
	cs.wg.Wait()
}

// reader streams a complete blob, verifying every chunk.
type reader struct {
	s      *Store
	ctx    context.Context
	d      [32]byte
	m      *blobstore.Manifest
	stream *chunkStream
	cur    chunkResult // the chunk being read
	off    int         // read offset within cur.data
	err    error       // sticky
	closed bool
}

// Open returns a reader over a complete blob. It counts as an access (Touch).
func (s *Store) Open(ctx context.Context, c cid.Cid) (blobstore.Reader, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return nil, err
	}
	var m *blobstore.Manifest
	err = s.db.View(func(txn *badger.Txn) error {
		var st blobState
		m, st, err = s.manifest(txn, d)
		if err == nil && st != stateComplete {
			err = fmt.Errorf("open %s: %w", c, blobstore.ErrIncomplete)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := s.touch(d); err != nil {
		return nil, err
	}
	s.readersMu.Lock()
	s.readers[d]++
	s.readersMu.Unlock()
	return &reader{s: s, ctx: ctx, d: d, m: m}, nil
}

func (r *reader) Size() uint64 { return r.m.Size }

// fill makes cur hold unread bytes, or sets r.err.
func (r *reader) fill() bool {
	for r.err == nil && r.off == len(r.cur.data) {
		if r.closed {
			r.err = errors.New("read of a closed blob reader")
			return false
		}
		if r.cur.buf != nil {
			r.s.putBuf(r.cur.buf)
			r.cur = chunkResult{}
		}
		if r.stream == nil {
			r.stream = r.s.streamChunks(r.ctx, r.d, r.m, 0)
		}
		r.cur, r.off = r.stream.next(), 0
		if r.cur.err != nil {
			r.err = r.cur.err
			if !errors.Is(r.err, io.EOF) {
				r.err = r.s.quarantine(r.d, r.m, r.cur.idx, r.err)
			}
		}
	}
	return r.err == nil
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !r.fill() {
		return 0, r.err
	}
	n := copy(p, r.cur.data[r.off:])
	r.off += n
	return n, nil
}

// WriteTo writes the rest of the blob to w, chunk by chunk, each verified before it is written.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.fill() {
		n, err := w.Write(r.cur.data[r.off:])
		total += int64(n)
		r.off += n
		if err != nil {
			return total, err
		}
	}
	if errors.Is(r.err, io.EOF) {
		return total, nil
	}
	return total, r.err
}

func (r *reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.stream != nil {
		r.stream.close()
	}
	if r.cur.buf != nil {
		r.s.putBuf(r.cur.buf)
		r.cur = chunkResult{}
	}
	r.s.readersMu.Lock()
	if r.s.readers[r.d]--; r.s.readers[r.d] <= 0 {
		delete(r.s.readers, r.d)
	}
	r.s.readersMu.Unlock()
	return nil
}

// Export writes a complete blob to path atomically: a file in the same directory, unnamed while written (Linux
// O_TMPFILE, else a temp file removed on any error), synced, renamed over path, and the directory synced.
// It does not use internal/atomicfile.Write on purpose: a blob is gigabytes, so the file is unnamed while written
// (a kill leaves nothing to clean up, hidden_linux.go) and synced as it grows (flusher) rather than all at the end.
func (s *Store) Export(ctx context.Context, c cid.Cid, path string) (err error) {
	r, err := s.Open(ctx, c)
	if err != nil {
		return err
	}
	defer r.Close()
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, tmpName, err := createHidden(dir, base)
	if err != nil {
		return fmt.Errorf("export %s: %w", c, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			if tmpName != "" {
				os.Remove(tmpName)
			}
		}
	}()
	fl := newFlusher(f.Sync)
	_, err = r.WriteTo(flushWriter{f, fl})
	if ferr := fl.close(); err == nil && ferr != nil {
		err = fmt.Errorf("sync %s: %w", path, ferr)
	}
	if err != nil {
		return fmt.Errorf("export %s to %s: %w", c, path, err)
	}
	if err := f.Chmod(0o644); err != nil { // a temp file is 0600 and umask applies; the loader may run as another user
		return fmt.Errorf("export %s: %w", c, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("export %s: sync %s: %w", c, path, err)
	}
	if err := publish(f, tmpName, path); err != nil {
		return fmt.Errorf("export %s: %w", c, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export %s: close %s: %w", c, path, err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return fmt.Errorf("export %s: sync directory %s: %w", c, dir, err)
	}
	return nil
}

// flushWriter counts what it writes for a flusher.
type flushWriter struct {
	w io.Writer
	f *flusher
}

func (w flushWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.f.add(n)
	return n, err
}

// ReadChunk appends chunk i of a complete or partial blob to dst, re-verified. It counts as an access.
func (s *Store) ReadChunk(ctx context.Context, blob cid.Cid, i int, dst []byte) ([]byte, error) {
	return s.readChunkOf(blob, i, dst, true)
}

// ServeChunk is ReadChunk for a peer, which hashes every chunk it receives: the bytes are checked against their
// length and badger's CRC32C of the value-log entry (Open sets VerifyValueChecksum), not re-hashed, so damage on
// disk is still ErrInvalidData and not served, at a fifteenth of the CPU. A chunk short enough to be kept in the
// LSM tree instead of the value log has no such checksum and is re-hashed. It counts as an access.
func (s *Store) ServeChunk(ctx context.Context, blob cid.Cid, i int, dst []byte) ([]byte, error) {
	return s.readChunkOf(blob, i, dst, false)
}

func (s *Store) readChunkOf(blob cid.Cid, i int, dst []byte, rehash bool) ([]byte, error) {
	if err := s.enter(); err != nil {
		return dst, err
	}
	defer s.leave()
	d, err := digestOf(blob)
	if err != nil {
		return dst, err
	}
	var m *blobstore.Manifest
	var st blobState
	err = s.db.View(func(txn *badger.Txn) error {
		m, st, err = s.manifest(txn, d)
		return err
	})
	if err != nil {
		return dst, err
	}
	if i < 0 || i >= len(m.Chunks) {
		return dst, fmt.Errorf("%w: chunk %d of %s, which has %d", blobstore.ErrNotFound, i, blob, len(m.Chunks))
	}
	var out []byte
	if rehash || m.ChunkLen(i) < valueThreshold {
		out, err = s.readChunk(d, m, i, dst)
	} else {
		out = dst
		err = s.chunkValue(d, m, i, func(v []byte) { out = append(out, v...) })
	}
	if errors.Is(err, errChunkMissing) && st != stateComplete {
		return dst, fmt.Errorf("%w: %w", blobstore.ErrNotFound, err)
	}
	if err != nil {
		return dst, s.quarantine(d, m, i, err)
	}
	if err := s.touch(d); err != nil {
		return dst, err
	}
	return out, nil
}
