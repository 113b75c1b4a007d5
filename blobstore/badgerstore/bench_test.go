package badgerstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/cputime"
)

// benchSize is NPU_BENCH_SIZE in bytes (suffixes K, M, G: binary), default 1 GiB.
func benchSize(b *testing.B) int64 {
	v := strings.ToUpper(strings.TrimSpace(os.Getenv("NPU_BENCH_SIZE")))
	if v == "" {
		return 1 << 30
	}
	shift := 0
	switch {
	case strings.HasSuffix(v, "K"):
		shift = 10
	case strings.HasSuffix(v, "M"):
		shift = 20
	case strings.HasSuffix(v, "G"):
		shift = 30
	}
	n, err := strconv.ParseInt(strings.TrimRight(v, "KMG"), 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("NPU_BENCH_SIZE=%q: want a positive size like 1073741824, 256M or 1G", v)
	}
	return n << shift
}

// patternReader yields size deterministic bytes at memory speed: one random chunk-sized block, stamped with the
// block number so that no two chunks are equal (no dedup flatters the store).
type patternReader struct {
	block     []byte
	off, size int64
}

func newPatternReader(size int64) *patternReader {
	block := make([]byte, blobstore.ChunkSize)
	rand.NewChaCha8([32]byte{42}).Read(block)
	return &patternReader{block: block, size: size}
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && r.off < r.size {
		in := r.off % int64(len(r.block))
		if in == 0 {
			binary.LittleEndian.PutUint64(r.block, uint64(r.off/int64(len(r.block))))
		}
		k := copy(p[n:], r.block[in:min(int64(len(r.block)), in+r.size-r.off)])
		n += k
		r.off += int64(k)
	}
	return n, nil
}

// writeFile is the plain baseline of Put: stream into a file and fsync it.
func writeFile(path string, r io.Reader) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, blobstore.ChunkSize)
	if _, err := io.CopyBuffer(struct{ io.Writer }{f}, r, buf); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// copyFile is the plain baseline of Export: copy a file (io.Copy uses copy_file_range on Linux) and fsync it.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BenchmarkStore measures Put and Export of one blob against writing and copying a plain file of the same size
// in the same run, all durable (fsync), and the first hand-off of the stored blob (CheckBlob, one CRC32C pass, then
// BlobFile) against reading the plain file (cat), and reports the ratios (Export is a hard link on one filesystem):
//
//	go test -run '^$' -bench Store -benchtime 1x ./blobstore/badgerstore
func BenchmarkStore(b *testing.B) {
	size := benchSize(b)
	dir := b.TempDir()
	s, err := Open(filepath.Join(dir, "store"), Options{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	mbps := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	timed := func(fn func() error) time.Duration {
		b.Helper()
		start := time.Now()
		if err := fn(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var write, put, cp, export, cat, ensure, recheck time.Duration
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		plain := filepath.Join(dir, fmt.Sprintf("plain-%d", i))
		write += timed(func() error { return writeFile(plain, newPatternReader(size)) })
		var m *blobstore.Manifest
		put += timed(func() (err error) {
			m, err = s.Put(ctx, newPatternReader(size))
			return err
		})
		copied := filepath.Join(dir, fmt.Sprintf("copy-%d", i))
		cp += timed(func() error { return copyFile(copied, plain) })
		cat += timed(func() error { return catFile(plain) })
		handOff := func() error { // the first hand-off in a process: CheckBlob, then the file's path
			if err := s.CheckBlob(ctx, m.CID()); err != nil {
				return err
			}
			_, err := s.BlobFile(ctx, m.CID())
			return err
		}
		ensure += timed(handOff) // the check stamp Put wrote vouches: no read
		// A file whose check stamp no longer vouches for it (a chmod changed its ctime): one CRC32C pass.
		if err := os.Chmod(s.blobPath(sha256.Sum256(m.Encode())), 0o444); err != nil {
			b.Fatal(err)
		}
		recheck += timed(handOff)
		exported := filepath.Join(dir, fmt.Sprintf("export-%d", i))
		export += timed(func() error { return s.Export(ctx, m.CID(), exported) })

		b.StopTimer()
		if st, err := os.Stat(exported); err != nil || st.Size() != size {
			b.Fatalf("export: %v, %v", st, err)
		}
		for _, p := range []string{plain, copied, exported} {
			if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
				b.Fatal(err)
			}
		}
		if err := s.Delete(ctx, m.CID()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(mbps(write/time.Duration(b.N)), "plain-write-MB/s")
	b.ReportMetric(mbps(put/time.Duration(b.N)), "put-MB/s")
	b.ReportMetric(mbps(cp/time.Duration(b.N)), "plain-copy-MB/s")
	b.ReportMetric(mbps(export/time.Duration(b.N)), "export-MB/s")
	b.ReportMetric(write.Seconds()/put.Seconds(), "put/plain-write")
	b.ReportMetric(cp.Seconds()/export.Seconds(), "export/plain-copy")
	b.ReportMetric(mbps(cat/time.Duration(b.N)), "cat-MB/s")
	b.ReportMetric(mbps(ensure/time.Duration(b.N)), "first-handoff-MB/s")
	b.ReportMetric(cat.Seconds()/ensure.Seconds(), "first-handoff/cat")
	b.ReportMetric(float64(ensure.Microseconds())/float64(b.N), "first-handoff-us")
	b.ReportMetric(cat.Seconds()/recheck.Seconds(), "check-pass/cat")
}

// catFile reads a file to the end, as cat does: the baseline of the first hand-off of a stored blob.
func catFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}

// BenchmarkStoreFetch measures the store's side of a fetch: BeginPartial, PutChunk from four goroutines (as the
// fetch's workers call it, nearly in order), Commit. It reports the CPU time per byte (both cores), which the
// machine's other load skews less than the wall time:
//
//	go test -run '^$' -bench StoreFetch -benchtime 4x ./blobstore/badgerstore
func BenchmarkStoreFetch(b *testing.B) {
	size := benchSize(b)
	data, err := io.ReadAll(newPatternReader(size))
	if err != nil {
		b.Fatal(err)
	}
	m := &blobstore.Manifest{Size: uint64(size), ChunkSize: blobstore.ChunkSize, SHA256: sha256.Sum256(data)}
	for off := 0; off < len(data); off += blobstore.ChunkSize {
		m.Chunks = append(m.Chunks, sha256.Sum256(data[off:min(off+blobstore.ChunkSize, len(data))]))
	}
	s, err := Open(filepath.Join(b.TempDir(), "store"), Options{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var cpu time.Duration
	b.SetBytes(size)
	for b.Loop() {
		b.StopTimer()
		if err := s.Delete(ctx, m.CID()); err != nil && !errors.Is(err, blobstore.ErrNotFound) {
			b.Fatal(err)
		}
		if _, err := s.GC(ctx, math.MaxUint64, nil); err != nil { // finish the delete's reclaim first
			b.Fatal(err)
		}
		b.StartTimer()
		start := cputime.Self()
		if err := s.BeginPartial(ctx, m); err != nil {
			b.Fatal(err)
		}
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for i := int(next.Add(1) - 1); i < len(m.Chunks); i = int(next.Add(1) - 1) {
					off := m.ChunkOffset(i)
					if err := s.PutChunk(ctx, m.CID(), i, data[off:off+uint64(m.ChunkLen(i))]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err := s.Commit(ctx, m.CID()); err != nil {
			b.Fatal(err)
		}
		cpu += cputime.Self() - start
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(size)/float64(b.N), "cpu-ns/B")
}
