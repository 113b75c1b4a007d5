package p2p

import (
	"context"
	"errors"
	"github.com/ipfs/go-cid"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/internal/cputime"
)

const benchStreamProtocol = "/npu-agent/bench/stream/1"

func benchSize(b *testing.B) int64 {
	s := os.Getenv("NPU_BENCH_SIZE")
	if s == "" {
		return 256 << 20
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("NPU_BENCH_SIZE=%q: want a positive byte count", s)
	}
	return n
}

// benchStore is what the benchmark needs of a store: the chunk side, plus seeding and cleaning up.
type benchStore interface {
	blobstore.ChunkStore
	Put(ctx context.Context, r io.Reader) (*blobstore.Manifest, error)
	Delete(ctx context.Context, c cid.Cid) error
	Close() error
}

// benchNode starts a node on a badger store, or on memory if mem (to see the protocol's cost alone).
func benchNode(b *testing.B, mem bool) (*Node, benchStore) {
	dir := b.TempDir()
	var st benchStore = newMemStore()
	if !mem {
		bs, err := badgerstore.Open(filepath.Join(dir, "store"), badgerstore.Options{Logger: testLog})
		if err != nil {
			b.Fatal(err)
		}
		st = bs
	}
	n, err := New(context.Background(), loopbackConfig(filepath.Join(dir, "p2p")), st, testLog)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		n.Close()
		st.Close()
	})
	return n, st
}

// BenchmarkFetch measures one swarm fetch between two nodes over loopback against a plain libp2p stream
// carrying the same number of bytes between the same hosts, and reports the ratio as fetch/stream. The badger
// case is the product; the mem case shows what the protocol alone costs.
func BenchmarkFetch(b *testing.B) {
	b.Run("badger", func(b *testing.B) { benchFetch(b, false) })
	b.Run("mem", func(b *testing.B) { benchFetch(b, true) })
}

func benchFetch(b *testing.B, mem bool) {
	size := benchSize(b)
	seed, seedStore := benchNode(b, mem)
	f, fStore := benchNode(b, mem)
	ctx := context.Background()
	m, err := seedStore.Put(ctx, io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
	if err != nil {
		b.Fatal(err)
	}
	blob := m.CID()
	seed.Host().SetStreamHandler(benchStreamProtocol, func(st network.Stream) {
		defer st.Close()
		buf := make([]byte, 1<<20)
		for left := size; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := st.Write(buf[:n]); err != nil {
				st.Reset()
				return
			}
			left -= n
		}
	})
	if err := f.Host().Connect(ctx, peer.AddrInfo{ID: seed.ID(), Addrs: seed.Host().Addrs()}); err != nil {
		b.Fatal(err)
	}
	streamCopy := func() (time.Duration, time.Duration) {
		start, cpu := time.Now(), cputime.Self()
		st, err := f.Host().NewStream(ctx, seed.ID(), benchStreamProtocol)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		n, err := io.Copy(io.Discard, st)
		if err != nil || n != size {
			b.Fatalf("stream copy: %d bytes, %v", n, err)
		}
		return time.Since(start), cputime.Self() - cpu
	}
	streamCopy() // warm up the connection's windows

	var fetchTime, streamTime, fetchCPU, streamCPU time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if err := fStore.Delete(ctx, blob); err != nil && !errors.Is(err, blobstore.ErrNotFound) {
			b.Fatal(err)
		}
		if !mem { // finish the delete's value-log reclaim, which would otherwise run during the fetch
			if _, err := fStore.(blobstore.Store).GC(ctx, math.MaxUint64, nil); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		start, cpu := time.Now(), cputime.Self()
		if err := f.Fetch(ctx, blob, []peer.ID{seed.ID()}, nil); err != nil {
			b.Fatal(err)
		}
		fetchTime += time.Since(start)
		fetchCPU += cputime.Self() - cpu
		b.StopTimer()
		wall, cpu := streamCopy()
		streamTime += wall
		streamCPU += cpu
		b.StartTimer()
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(fetchTime), "fetch-MB/s")
	b.ReportMetric(mbps(streamTime), "stream-MB/s")
	b.ReportMetric(streamTime.Seconds()/fetchTime.Seconds(), "fetch/stream")
	// CPU time of the whole process (both nodes) per byte moved: what the machine's other load cannot skew.
	perByte := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(size) / float64(b.N) }
	b.ReportMetric(perByte(fetchCPU), "fetch-cpu-ns/B")
	b.ReportMetric(perByte(streamCPU), "stream-cpu-ns/B")
}
