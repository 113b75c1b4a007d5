package faults

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Data is a deterministic pseudo-random blob of any size, generated chunk by chunk (blobstore.ChunkSize) so that
// it streams and any chunk can be produced on its own: a Put reads it, a fetch stores its chunks out of order.
type Data struct {
	Seed uint64
	Size int64
}

// NumChunks is the number of store chunks of d.
func (d Data) NumChunks() int { return int((d.Size + blobstore.ChunkSize - 1) / blobstore.ChunkSize) }

// Chunk fills buf (at least blobstore.ChunkSize long) with chunk i and returns it.
func (d Data) Chunk(i int, buf []byte) []byte {
	n := min(int64(blobstore.ChunkSize), d.Size-int64(i)*blobstore.ChunkSize)
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], d.Seed)
	binary.LittleEndian.PutUint64(s[8:], uint64(i))
	buf = buf[:n]
	rand.NewChaCha8(s).Read(buf)
	return buf
}

// Reader streams d; progress, if not nil, is called with the bytes handed out so far after each chunk.
func (d Data) Reader(progress func(n int64)) io.Reader {
	return &dataReader{d: d, buf: make([]byte, blobstore.ChunkSize), progress: progress}
}

type dataReader struct {
	d        Data
	buf      []byte
	pending  []byte
	next     int
	off      int64
	progress func(int64)
}

func (r *dataReader) Read(p []byte) (int, error) {
	if len(r.pending) == 0 {
		if r.next >= r.d.NumChunks() {
			return 0, io.EOF
		}
		r.pending = r.d.Chunk(r.next, r.buf)
		r.next++
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	r.off += int64(n)
	if len(r.pending) == 0 && r.progress != nil {
		r.progress(r.off)
	}
	return n, nil
}

// Manifest computes d's manifest independently of any store.
func (d Data) Manifest() *blobstore.Manifest {
	m := &blobstore.Manifest{Size: uint64(d.Size), ChunkSize: blobstore.ChunkSize}
	whole := sha256.New()
	buf := make([]byte, blobstore.ChunkSize)
	for i := range d.NumChunks() {
		c := d.Chunk(i, buf)
		whole.Write(c)
		m.Chunks = append(m.Chunks, sha256.Sum256(c))
	}
	whole.Sum(m.SHA256[:0])
	return m
}

// Check reads r to its end and reports the first difference from d.
func (d Data) Check(r io.Reader) error {
	want := make([]byte, blobstore.ChunkSize)
	got := make([]byte, blobstore.ChunkSize)
	for i := range d.NumChunks() {
		w := d.Chunk(i, want)
		n, err := io.ReadFull(r, got[:len(w)])
		if err != nil {
			return fmt.Errorf("chunk %d: read %d of %d bytes: %w", i, n, len(w), err)
		}
		if !bytes.Equal(got[:n], w) {
			return fmt.Errorf("chunk %d (offset %d) differs", i, int64(i)*blobstore.ChunkSize)
		}
	}
	if n, _ := io.ReadFull(r, got[:1]); n != 0 {
		return fmt.Errorf("more than the %d bytes expected", d.Size)
	}
	return nil
}
