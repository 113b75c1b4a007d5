package badgerstore

import (
	"context"
	"crypto/rand"
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

// errChunkMissing marks a chunk that is not stored: expected for a partial blob, corruption for a complete one.
var errChunkMissing = errors.New("chunk missing")

// readHashed appends chunk i of m, read from f, to dst after re-hashing it against its digest.
func readHashed(f *os.File, d [32]byte, m *blobstore.Manifest, i int, dst []byte) ([]byte, error) {
	start := len(dst)
	out, err := preadChunk(f, m, i, dst)
	if err != nil {
		return dst[:start], err
	}
	if sha256.Sum256(out[start:]) != m.Chunks[i] {
		return dst[:start], fmt.Errorf("%w: %s", blobstore.ErrInvalidData, chunkID(d, m, i))
	}
	return out, nil
}

// chunkResult is one checked chunk (data in a pooled buffer) or the error reading it.
type chunkResult struct {
	idx  int
	buf  *[]byte
	data []byte
	err  error
}

// chunkStream reads the chunks of a blob file in order, readWindow ahead, each checked against its CRC32C.
type chunkStream struct {
	s       *Store
	cancel  context.CancelFunc
	results chan chan chunkResult
	wg      sync.WaitGroup
}

func (s *Store) streamChunks(ctx context.Context, f *os.File, d [32]byte, m *blobstore.Manifest, have []bool, crcs []uint32) *chunkStream {
	ctx, cancel := context.WithCancel(ctx)
	cs := &chunkStream{s: s, cancel: cancel, results: make(chan chan chunkResult, readWindow)}
	cs.wg.Go(func() {
		defer close(cs.results)
		for i := range m.Chunks {
			slot := make(chan chunkResult, 1)
			select {
			case cs.results <- slot:
			case <-ctx.Done():
				return
			}
			cs.wg.Go(func() {
				if err := ctx.Err(); err != nil {
					slot <- chunkResult{idx: i, err: err}
					return
				}
				if !have[i] {
					slot <- chunkResult{idx: i, err: fmt.Errorf("%s: %w", chunkID(d, m, i), errChunkMissing)}
					return
				}
				buf := s.getBuf()
				data, err := checkCRC(f, d, m, i, (*buf)[:0], crcs[i])
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

// reader streams a complete blob from its file, every chunk checked against its stored CRC32C (not re-hashed:
// it was verified on arrival; the checksum finds damage since).
type reader struct {
	s      *Store
	ctx    context.Context
	f      *os.File
	d      [32]byte
	m      *blobstore.Manifest
	have   []bool
	crcs   []uint32
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
	f, m, st, err := s.openBlob(d)
	if err == nil && st != stateComplete {
		f.Close()
		err = fmt.Errorf("open %s: %w", c, blobstore.ErrIncomplete)
	}
	if errors.Is(err, errFileMissing) && st == stateComplete {
		return nil, s.quarantine(d, m, -1, err)
	}
	if err != nil {
		return nil, err
	}
	var have []bool
	var crcs []uint32
	if err := s.db.View(func(txn *badger.Txn) error {
		have, crcs, err = chunkCRCs(txn, d, m)
		return err
	}); err != nil {
		f.Close()
		return nil, err
	}
	if err := s.touch(d); err != nil {
		f.Close()
		return nil, err
	}
	s.readersMu.Lock()
	s.readers[d]++
	s.readersMu.Unlock()
	return &reader{s: s, ctx: ctx, f: f, d: d, m: m, have: have, crcs: crcs}, nil
}

func (r *reader) Size() uint64 { return r.m.Size }

// fill makes cur hold unread bytes, or sets r.err.
func (r *reader) fill() bool {
	for r.err == nil && r.off == len(r.cur.data) {
		if r.closed {
			r.err = errors.New("read of a closed blob reader")
			return false
		}
		if r.s.isClosed() {
			r.err = ErrClosed
			return false
		}
		if r.cur.buf != nil {
			r.s.putBuf(r.cur.buf)
			r.cur = chunkResult{}
		}
		if r.stream == nil {
			r.stream = r.s.streamChunks(r.ctx, r.f, r.d, r.m, r.have, r.crcs)
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

// WriteTo writes the rest of the blob to w, chunk by chunk, each checked before it is written.
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
	r.f.Close()
	r.s.readersMu.Lock()
	if r.s.readers[r.d]--; r.s.readers[r.d] <= 0 {
		delete(r.s.readers, r.d)
	}
	r.s.readersMu.Unlock()
	return nil
}

var _ blobstore.Filer = (*Store)(nil)

// BlobFile returns the path of a complete blob's file, blobs/<cid>: read-only (0444), in a directory readable by
// the store's group, never rewritten in place while complete. It counts as an access.
func (s *Store) BlobFile(ctx context.Context, c cid.Cid) (string, error) {
	if err := s.enter(); err != nil {
		return "", err
	}
	defer s.leave()
	d, err := digestOf(c)
	if err != nil {
		return "", err
	}
	f, m, st, err := s.openBlob(d)
	if errors.Is(err, errFileMissing) && st == stateComplete {
		return "", s.quarantine(d, m, -1, err)
	}
	if err != nil {
		return "", err
	}
	f.Close()
	if st != stateComplete {
		return "", fmt.Errorf("blob file %s: %w", c, blobstore.ErrIncomplete)
	}
	if err := s.touch(d); err != nil {
		return "", err
	}
	return s.blobPath(d), nil
}

// Export puts a complete blob at path atomically. On the store's filesystem that is a hard link to the stored
// file (read-only, no byte copied); elsewhere a copy, checked against the stored checksums as it is read, written
// to a file in path's directory that is unnamed while written (Linux O_TMPFILE, else a temp file removed on any
// error), synced, renamed over path, and the directory synced.
func (s *Store) Export(ctx context.Context, c cid.Cid, path string) (err error) {
	p, err := s.BlobFile(ctx, c)
	if err != nil {
		return err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if ok, err := linkInto(p, dir, base, path); ok || err != nil {
		if err != nil {
			return fmt.Errorf("export %s: %w", c, err)
		}
		return nil
	}
	r, err := s.Open(ctx, c)
	if err != nil {
		return err
	}
	defer r.Close()
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

// linkInto hard-links src as path (through a temporary name in dir, renamed over path), without syncing dir: on
// ext4 that fsync waits for the journal, which holds the blob's own writeback (Commit syncs it in the background,
// docs/design.md 3.5 and 3.6). ok is false, with no error, when the link cannot be made (another filesystem, links
// refused): the caller copies instead.
func linkInto(src, dir, base, path string) (ok bool, err error) {
	if st, err := os.Stat(path); err == nil {
		if sst, err := os.Stat(src); err == nil && os.SameFile(st, sst) {
			return true, nil // already this very file
		}
	}
	tmp := filepath.Join(dir, "."+base+".tmp-"+rand.Text())
	if err := os.Link(src, tmp); err != nil {
		if _, serr := os.Stat(dir); serr != nil {
			return false, serr // a missing directory is an error, not a reason to copy
		}
		return false, nil
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, nil // not synced: see Export
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

// ReadChunk appends chunk i of a complete or partial blob to dst, re-hashed against its digest. It counts as an
// access.
func (s *Store) ReadChunk(ctx context.Context, blob cid.Cid, i int, dst []byte) ([]byte, error) {
	return s.readChunkOf(blob, i, dst, true)
}

// ServeChunk is ReadChunk for a peer, which hashes every chunk it receives: the bytes are checked against the
// CRC32C stored when the chunk arrived, not re-hashed, so damage on disk is still ErrInvalidData (and quarantines
// the blob) and not served, at a fifteenth of sha256's CPU. It counts as an access.
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
	f, m, st, err := s.openBlob(d)
	if errors.Is(err, errFileMissing) && st == stateComplete {
		return dst, s.quarantine(d, m, -1, err)
	}
	if err != nil {
		return dst, err
	}
	defer f.Close()
	if i < 0 || i >= len(m.Chunks) {
		return dst, fmt.Errorf("%w: chunk %d of %s, which has %d", blobstore.ErrNotFound, i, blob, len(m.Chunks))
	}
	var out []byte
	if rehash {
		var ok bool
		err = s.db.View(func(txn *badger.Txn) error {
			_, ok, err = storedCRC(txn, d, i)
			return err
		})
		if err == nil && !ok {
			err = fmt.Errorf("%s: %w", chunkID(d, m, i), errChunkMissing)
		}
		if err == nil {
			out, err = readHashed(f, d, m, i, dst)
		}
	} else {
		out, err = s.readChecked(f, d, m, i, dst)
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
