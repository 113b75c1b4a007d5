//go:build linux

package e2e

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/p2p"
)

// The fetch benchmark measures what a user runs: `npu-agent fetch --out` on a daemon that gets the blob from
// another daemon (separate processes on loopback, fleet key on), against a bare libp2p stream with the same
// security (pnet + TLS) between two processes, in the same run.

const (
	helperStream         = "stream" // serve benchStreamSize bytes on every stream of benchStreamProtocol
	benchStreamProtocol  = "/npu-agent/bench/stream/1"
	benchShape           = "x=1,8"
	benchDefaultSize     = 1 << 30
	benchSampleInterval  = 2 * time.Millisecond
	benchStreamWarmBytes = 64 << 20
)

// benchFetchSize is NPU_BENCH_SIZE (bytes; 4294967296 for the 4 GiB RSS check), 1 GiB by default.
func benchFetchSize(b *testing.B) int64 {
	s := os.Getenv("NPU_BENCH_SIZE")
	if s == "" {
		return benchDefaultSize
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("NPU_BENCH_SIZE=%q: want a positive byte count", s)
	}
	return n
}

// BenchmarkFetchOut: one 1 GiB `npu-agent fetch --out` between two daemons against a bare keyed stream.
// Reported: out-MB/s and stream-MB/s (wall, CLI start to exit / stream open to EOF), fetch/stream, post-transfer-%
// and post-transfer-ms (from the seed's last socket write of the blob to the CLI's exit), the receiving daemon's
// peak RSS (VmHWM) and its anonymous and file-backed RSS after the fetch, CPU ns per byte of each process, and the
// disk the receiver's data dir and the --out file use together (hard links counted once) per blob byte.
// NPU_BENCH_PROFILE=DIR records `perf record -g` of both daemons during the fetch into DIR, and with NPU_BENCH_TRACE=1
// their slow syscalls (`perf trace`).
func BenchmarkFetchOut(b *testing.B) {
	size := benchFetchSize(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dir := b.TempDir()
	bin := cmp.Or(os.Getenv("NPU_BENCH_BIN"), npuAgent) // NPU_BENCH_BIN: compare builds with one test binary
	if bin == "" {
		var err error
		if bin, err = Build(ctx, dir); err != nil {
			b.Fatal(err)
		}
	}
	key := filepath.Join(dir, "fleet.key")
	if err := WriteFleetKey(key); err != nil {
		b.Fatal(err)
	}
	model, err := WriteModel(dir, "bench-fetch", 64<<10)
	if err != nil {
		b.Fatal(err)
	}
	cfg := func(name string) Config {
		return Config{
			Binary: bin, Dir: filepath.Join(dir, name), Fingerprint: LunarLake, CompileTime: 10 * time.Millisecond,
			BlobSize: size, P2P: true, FleetKeyFile: key, Loopback: true, Port: freePort(b), Deadline: 10 * time.Minute,
		}
	}
	seed := startBenchDaemon(ctx, b, cfg("seed"))
	st, err := seed.API().Status(ctx)
	if err != nil {
		b.Fatal(err)
	}
	seedAddr := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", seedPort(b, seed), st.PeerID)
	if out, err := seed.CLI(ctx, "fetch", "--model", model, "--shape", benchShape); err != nil {
		b.Fatalf("seed compile: %v (%s)", err, out)
	}
	stream := startStreamSource(ctx, b, filepath.Join(dir, "stream"), key, size)

	var sum struct {
		out, stream, post time.Duration
		recvCPU, seedCPU  time.Duration
		hwm, anon, file   int64
		disk              int64
	}
	b.SetBytes(size)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		c := cfg(fmt.Sprintf("recv%d", i))
		c.Peers = []string{seedAddr}
		recv := startBenchDaemon(ctx, b, c)
		if err := recv.WaitPeerRecords(ctx, st.PeerID, 1); err != nil {
			b.Fatal(err)
		}
		outPath := filepath.Join(dir, fmt.Sprintf("out%d.blob", i))
		stopProf := startPerf(b, i, seed, recv)
		seedCPU0, recvCPU0 := procCPU(b, seed.PID()), procCPU(b, recv.PID())
		sent := watchWrites(seed.PID(), size)
		b.StartTimer()
		start := time.Now()
		out, err := recv.CLI(ctx, "fetch", "--model", model, "--shape", benchShape, "--out", outPath)
		end := time.Now()
		b.StopTimer()
		lastSent := sent()
		stopProf()
		if err != nil {
			b.Fatalf("fetch --out: %v", err)
		}
		var res FetchResult
		if err := json.Unmarshal(out, &res); err != nil || res.Source != "peer" || res.Size < uint64(size) {
			b.Fatalf("fetch --out answered %.300q (%v); want source peer, at least %d bytes (the blob has a trailer)", out, err, size)
		}
		if lastSent.IsZero() {
			b.Fatalf("the seed's socket writes never reached %d bytes", size)
		}
		if os.Getenv("NPU_BENCH_PROFILE") != "" { // to find the phases in the profiles (perf script's times)
			mono := monotonic()
			at := func(t time.Time) float64 { return (mono - time.Since(t)).Seconds() }
			b.Logf("CLOCK_MONOTONIC: CLI started %.3f, last chunk sent %.3f, CLI exited %.3f", at(start), at(lastSent), at(end))
		}
		sum.out += end.Sub(start)
		sum.post += end.Sub(lastSent)
		sum.seedCPU += procCPU(b, seed.PID()) - seedCPU0
		sum.recvCPU += procCPU(b, recv.PID()) - recvCPU0
		mem := procStatus(b, recv.PID())
		sum.hwm, sum.anon, sum.file = sum.hwm+mem["VmHWM"], sum.anon+mem["RssAnon"], sum.file+mem["RssFile"]
		sum.disk += diskUsed(b, filepath.Join(recv.Dir, "data"), outPath)
		if err := recv.Stop(); err != nil {
			b.Error(err)
		}
		os.RemoveAll(recv.Dir)
		os.Remove(outPath)
		// The bare stream right after, on the same machine state.
		sum.stream += stream.copy(ctx, b)
	}
	n := float64(b.N)
	mbps := func(d time.Duration) float64 { return float64(size) * n / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(sum.out), "out-MB/s")
	b.ReportMetric(mbps(sum.stream), "stream-MB/s")
	b.ReportMetric(sum.stream.Seconds()/sum.out.Seconds(), "fetch/stream")
	b.ReportMetric(100*sum.post.Seconds()/sum.out.Seconds(), "post-transfer-%")
	b.ReportMetric(float64(sum.post.Milliseconds())/n, "post-transfer-ms")
	b.ReportMetric(float64(sum.hwm)/n/(1<<20), "recv-VmHWM-MiB")
	b.ReportMetric(float64(sum.anon)/n/(1<<20), "recv-RssAnon-MiB")
	b.ReportMetric(float64(sum.file)/n/(1<<20), "recv-RssFile-MiB")
	b.ReportMetric(float64(sum.disk)/n/float64(size), "disk/blob")
	perByte := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(size) / n }
	b.ReportMetric(perByte(sum.recvCPU), "recv-cpu-ns/B")
	b.ReportMetric(perByte(sum.seedCPU), "seed-cpu-ns/B")
	b.ReportMetric(perByte(stream.recvCPU), "stream-recv-cpu-ns/B")
	b.ReportMetric(perByte(procCPU(b, stream.pid())-stream.srcCPU0-stream.warmCPU), "stream-send-cpu-ns/B")
}

// startBenchDaemon starts a daemon on this machine and waits for its API; it is stopped when the benchmark ends.
func startBenchDaemon(ctx context.Context, b *testing.B, c Config) *Daemon {
	b.Helper()
	d, err := Start(ctx, nil, 0, c)
	if err != nil {
		b.Fatal(err)
	}
	d.Name = filepath.Base(c.Dir)
	b.Cleanup(func() {
		if exited, _ := d.Exited(); !exited {
			if err := d.Stop(); err != nil {
				b.Error(err)
			}
		}
		if b.Failed() {
			b.Logf("=== log of %s:\n%s", d.Name, d.LogTail())
		}
	})
	if err := d.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	return d
}

// seedPort is the TCP port the daemon's config listens on.
func seedPort(b *testing.B, d *Daemon) int {
	cfg, err := os.ReadFile(d.ConfigPath)
	if err != nil {
		b.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(cfg), "/ip4/127.0.0.1/tcp/")
	if !ok {
		b.Fatalf("no loopback listen address in %s", cfg)
	}
	port, err := strconv.Atoi(rest[:strings.IndexByte(rest, '"')])
	if err != nil {
		b.Fatal(err)
	}
	return port
}

// freePort is a TCP port on 127.0.0.1 free a moment ago.
func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// watchWrites samples /proc/pid/io's wchar (bytes the process passed to write calls: its sockets, nearly all)
// until it has grown by n, and returns a function that stops sampling and returns when that happened (zero if
// it did not). For the seed daemon that is when the last chunk of the blob went onto the loopback connection.
func watchWrites(pid int, n int64) func() time.Time {
	base := procIO(pid)["wchar"]
	stop := make(chan struct{})
	var at time.Time
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(benchSampleInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				if procIO(pid)["wchar"]-base >= n {
					at = now
					return
				}
			}
		}
	})
	return func() time.Time {
		close(stop)
		wg.Wait()
		return at
	}
}

// procIO reads /proc/pid/io; nil if it cannot.
func procIO(pid int) map[string]int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return nil
	}
	m := map[string]int64{}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ": ")
		m[k], _ = strconv.ParseInt(v, 10, 64)
	}
	return m
}

// procStatus reads /proc/pid/status (memory lines in bytes).
func procStatus(b *testing.B, pid int) map[string]int64 {
	m, err := ProcStatus(pid)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// procCPU is the user and system CPU time pid has used.
func procCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) in parentheses; utime and stime are fields 14 and 15.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / hz
}

// diskUsed is the space the files under dir and the extra paths take, each inode counted once.
func diskUsed(b *testing.B, dir string, extra ...string) int64 {
	seen := map[uint64]bool{}
	var total int64
	add := func(path string) error {
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			return err
		}
		if !seen[st.Ino] {
			seen[st.Ino] = true
			total += st.Blocks * 512
		}
		return nil
	}
	err := filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return add(path)
	})
	for _, p := range extra {
		err = errors.Join(err, add(p))
	}
	if err != nil {
		b.Fatal(err)
	}
	return total
}

// startPerf runs `perf record -g` on each daemon when NPU_BENCH_PROFILE names a directory, and `perf trace`
// (syscalls of 2 ms or more) too when NPU_BENCH_TRACE is set, and returns a function that ends the recordings and waits for them.
func startPerf(b *testing.B, i int, daemons ...*Daemon) func() {
	dir := os.Getenv("NPU_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	var cmds []*exec.Cmd
	for _, d := range daemons {
		out := filepath.Join(dir, fmt.Sprintf("%s-%d.perf.data", d.Name, i))
		cmd := exec.Command("perf", "record", "-F", "499", "-g", "-k", "CLOCK_MONOTONIC", "-o", out, "-p", strconv.Itoa(d.PID()))
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Start(); err != nil {
			b.Fatalf("perf record: %v", err)
		}
		cmds = append(cmds, cmd)
		if os.Getenv("NPU_BENCH_TRACE") == "" {
			continue
		}
		// And every syscall of 2 ms or more, with its time: where a daemon waits rather than computes. perf trace
		// costs the daemons about a third of their CPU, so only on demand.
		out = filepath.Join(dir, fmt.Sprintf("%s-%d.trace.txt", d.Name, i))
		cmd = exec.Command("perf", "trace", "--duration", "2", "-T", "-o", out, "-p", strconv.Itoa(d.PID()))
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Start(); err != nil {
			b.Fatalf("perf trace: %v", err)
		}
		cmds = append(cmds, cmd)
	}
	time.Sleep(200 * time.Millisecond) // perf attaches
	return func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
		}
	}
}

// streamBench is the bare-stream baseline: a helper process serving size bytes per stream over a node with the
// fleet key, and a node in this process with the same key reading them.
type streamBench struct {
	cmd     *exec.Cmd
	node    *p2p.Node
	src     peer.ID
	size    int64
	srcCPU0 time.Duration // the helper's CPU when the measured streams began
	warmCPU time.Duration // the helper's CPU during the warm-up streams after that
	recvCPU time.Duration
}

func (s *streamBench) pid() int { return s.cmd.Process.Pid }

// startStreamSource starts the helper and connects a node of this process to it.
func startStreamSource(ctx context.Context, b *testing.B, dir, key string, size int64) *streamBench {
	b.Helper()
	port := freePort(b)
	args, err := json.Marshal(helperArgs{Dir: dir, FleetKey: key, Deadline: 30 * time.Minute, Size: size, Port: port})
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(daemonEnv(), helperEnv+"="+helperStream, helperArgsEnv+"="+string(args))
	stderr := &limitedBuffer{max: maxOutput}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if b.Failed() {
			b.Logf("=== stream helper's log:\n%s", stderr.Bytes())
		}
	})
	var r helperReport
	if line, err := bufio.NewReader(out).ReadBytes('\n'); err != nil || json.Unmarshal(line, &r) != nil {
		b.Fatalf("stream helper: %q %v: %s", line, err, stderr.Bytes())
	}
	src, err := peer.Decode(r.Peer)
	if err != nil {
		b.Fatal(err)
	}
	n, err := streamNode(ctx, filepath.Join(dir, "reader"), key, freePort(b), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	addr := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))
	if err := n.Host().Connect(ctx, peer.AddrInfo{ID: src, Addrs: []ma.Multiaddr{addr}}); err != nil {
		b.Fatal(err)
	}
	s := &streamBench{cmd: cmd, node: n, src: src, size: size}
	s.srcCPU0 = procCPU(b, s.pid())
	return s
}

// copy warms the connection's windows up with a short stream, then reads one stream of size bytes and returns how
// long that took.
func (s *streamBench) copy(ctx context.Context, b *testing.B) time.Duration {
	cpu0 := procCPU(b, s.pid())
	s.read(ctx, b, benchStreamWarmBytes)
	s.warmCPU += procCPU(b, s.pid()) - cpu0
	self := procCPU(b, os.Getpid())
	start := time.Now()
	s.read(ctx, b, s.size)
	d := time.Since(start)
	s.recvCPU += procCPU(b, os.Getpid()) - self
	return d
}

// read opens a stream, asks for n bytes (8 bytes, decimal) and reads them to EOF.
func (s *streamBench) read(ctx context.Context, b *testing.B, n int64) {
	st, err := s.node.Host().NewStream(ctx, s.src, benchStreamProtocol)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if _, err := fmt.Fprintf(st, "%d\n", n); err != nil {
		b.Fatal(err)
	}
	got, err := io.Copy(io.Discard, st)
	if err != nil || got != n {
		b.Fatalf("stream: %d of %d bytes, %v", got, n, err)
	}
}

// streamNode is a fleet member with the fleet key in key, on 127.0.0.1:port, on an empty store under dir.
func streamNode(ctx context.Context, dir, key string, port int, log *slog.Logger) (*p2p.Node, error) {
	cfg := p2p.DefaultConfig(filepath.Join(dir, "p2p"))
	cfg.ListenAddrs = []ma.Multiaddr{ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))}
	cfg.MDNS, cfg.AllowLoopback = false, true
	psk, err := p2p.ReadFleetKey(key)
	if err != nil {
		return nil, err
	}
	cfg.FleetKey = psk
	st, err := badgerstore.Open(filepath.Join(dir, "store"), badgerstore.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	n, err := p2p.New(ctx, cfg, st, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	return n, nil
}

// runStreamSource is the stream helper: it serves as many bytes as each stream asks for until it is stopped.
func runStreamSource(ctx context.Context, a helperArgs, log *slog.Logger) error {
	n, err := streamNode(ctx, a.Dir, a.FleetKey, a.Port, log)
	if err != nil {
		return err
	}
	defer n.Close()
	buf := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(buf)
	n.Host().SetStreamHandler(benchStreamProtocol, func(st network.Stream) {
		defer st.Close()
		line, err := bufio.NewReaderSize(st, 32).ReadString('\n')
		if err != nil {
			st.Reset()
			return
		}
		left, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
		if err != nil || left > a.Size {
			st.Reset()
			return
		}
		for left > 0 {
			k := min(left, int64(len(buf)))
			if _, err := st.Write(buf[:k]); err != nil {
				st.Reset()
				return
			}
			left -= k
		}
	})
	report(helperReport{Peer: n.ID().String()})
	<-ctx.Done()
	return nil
}

// monotonic is CLOCK_MONOTONIC, the clock of `perf record -k CLOCK_MONOTONIC`.
func monotonic() time.Duration {
	var ts syscall.Timespec
	if _, _, e := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		return 0
	}
	return time.Duration(ts.Nano())
}
