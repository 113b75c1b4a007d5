package p2p

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/internal/cputime"
)

// membershipModes are the ways of joining a fleet BenchmarkMembershipStream compares; the mode's config is
// built from the node's data directory and the fleet's secrets (key and authority, the same for both ends).
var membershipModes = []struct {
	name string
	mod  func(tb testing.TB, fleet benchFleet, dir string, c *Config)
}{
	{"pnet+tls-tcp", func(_ testing.TB, f benchFleet, _ string, c *Config) { c.FleetKey = f.key }},
	{"authority+tls-tcp", func(tb testing.TB, f benchFleet, dir string, c *Config) { f.ca.configure(tb, dir, c) }},
	{"authority+quic", func(tb testing.TB, f benchFleet, dir string, c *Config) {
		f.ca.configure(tb, dir, c)
		c.ListenAddrs = []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")}
	}},
	{"tls-tcp", func(testing.TB, benchFleet, string, *Config) {}},
}

// benchFleet is the fleet's secrets: a fleet key and an authority.
type benchFleet struct {
	key pnet.PSK
	ca  fleetCA
}

func newBenchFleet(tb testing.TB) benchFleet {
	key := make(pnet.PSK, 32)
	rand.Read(key)
	return benchFleet{key, newCA(tb)}
}

// benchNodeIn starts a node of mode in dir (loopback TCP unless the mode says otherwise).
func benchNodeIn(tb testing.TB, f benchFleet, mode int, dir string) *Node {
	c := loopbackConfig(dir)
	c.ListenAddrs = []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}
	membershipModes[mode].mod(tb, f, dir, &c)
	n, err := New(context.Background(), c, newMemStore(), testLog)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// BenchmarkMembershipStream: what each way of proving membership costs per byte on a bare libp2p stream
// between two nodes in this process over loopback (docs/design.md 6.2): the fleet key (pnet's XSalsa20 under
// TLS 1.3 on TCP), the fleet authority (TLS 1.3 alone after the one-time proof, TCP and QUIC), and no membership
// at all (TLS 1.3). cpu-ns/B is the whole process's CPU (both ends) per byte, halved: per end.
func BenchmarkMembershipStream(b *testing.B) {
	f := newBenchFleet(b)
	for mode, m := range membershipModes {
		b.Run(m.name, func(b *testing.B) {
			src, dst := benchNodeIn(b, f, mode, b.TempDir()), benchNodeIn(b, f, mode, b.TempDir())
			b.Cleanup(func() { src.Close(); dst.Close() })
			serveBenchStream(src.Host())
			connectBench(b, dst, src.ID(), src.Host().Addrs())
			used, bytes := benchStream(b, dst, src.ID(), nil)
			b.ReportMetric(float64(used.Nanoseconds())/bytes/2, "cpu-ns/B-per-end")
		})
	}
}

// configure makes c a member of ca's fleet with the identity in dir.
func (ca fleetCA) configure(tb testing.TB, dir string, c *Config) {
	k, err := loadIdentity(dir, testLog)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	c.ServeWithoutFleetKey = false
	c.Authority, c.MemberCert = ca.pub, ca.cert(tb, id, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
}

const benchMembershipSize = 64 << 20

// serveBenchStream answers each stream with benchMembershipSize bytes.
func serveBenchStream(h host.Host) {
	h.SetStreamHandler(benchStreamProtocol, func(st network.Stream) {
		defer st.Close()
		buf := make([]byte, 1<<20)
		for left := benchMembershipSize; left > 0; left -= len(buf) {
			if _, err := st.Write(buf); err != nil {
				st.Reset()
				return
			}
		}
	})
}

func connectBench(b *testing.B, dst *Node, src peer.ID, addrs []ma.Multiaddr) {
	if err := dst.Host().Connect(context.Background(), peer.AddrInfo{ID: src, Addrs: addrs}); err != nil {
		b.Fatal(err)
	}
}

// benchStream reads b.N streams from src after one unmeasured one (the proof, and the windows grown), reports
// MB/s and returns this process's CPU and the bytes read; atStart (if not nil) runs when the measure starts.
func benchStream(b *testing.B, dst *Node, src peer.ID, atStart func()) (time.Duration, float64) {
	ctx := context.Background()
	copyOnce := func() {
		st, err := dst.Host().NewStream(ctx, src, benchStreamProtocol)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		if n, err := io.Copy(io.Discard, st); err != nil || n != benchMembershipSize {
			b.Fatalf("stream: %d bytes, %v", n, err)
		}
	}
	copyOnce()
	if atStart != nil {
		atStart()
	}
	b.SetBytes(benchMembershipSize)
	b.ResetTimer()
	start, cpu := time.Now(), cputime.Self()
	for range b.N {
		copyOnce()
	}
	wall, used := time.Since(start), cputime.Self()-cpu
	b.StopTimer()
	bytes := float64(benchMembershipSize) * float64(b.N)
	b.ReportMetric(bytes/wall.Seconds()/1e6, "MB/s")
	return used, bytes
}

// The two-process form: the sending node runs in a child process (this test binary, running
// TestMembershipStreamSource), so each end's CPU is its own process's.
const (
	benchSourceEnv   = "NPU_P2P_BENCH_SOURCE"
	benchCPUProtocol = "/npu-agent/bench/cpu/1"
)

type benchSourceArgs struct {
	Mode int
	Key  []byte
	Seed []byte // the authority's ed25519 seed
	Dir  string
}

func (f benchFleet) args(mode int, dir string) benchSourceArgs {
	return benchSourceArgs{Mode: mode, Key: f.key, Seed: f.ca.priv.Seed(), Dir: dir}
}

func (a benchSourceArgs) fleet() benchFleet {
	priv := ed25519.NewKeyFromSeed(a.Seed)
	return benchFleet{key: pnet.PSK(a.Key), ca: fleetCA{pub: priv.Public().(ed25519.PublicKey), priv: priv}}
}

// TestMembershipStreamSource is BenchmarkMembershipStreamProcs's sending process; it does nothing in a normal run.
func TestMembershipStreamSource(t *testing.T) {
	raw := os.Getenv(benchSourceEnv)
	if raw == "" {
		t.Skip("the sending process of BenchmarkMembershipStreamProcs")
	}
	var a benchSourceArgs
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		t.Fatal(err)
	}
	n := benchNodeIn(t, a.fleet(), a.Mode, a.Dir)
	serveBenchStream(n.Host())
	n.Host().SetStreamHandler(benchCPUProtocol, func(st network.Stream) {
		defer st.Close()
		fmt.Fprintf(st, "%d\n", cputime.Self().Nanoseconds())
	})
	fmt.Printf("%s %s\n", n.ID(), n.Host().Addrs()[0])
	io.Copy(io.Discard, os.Stdin) // until the benchmark closes it
	n.Close()
	os.Exit(0) // no goleak report in the benchmark's output
}

// BenchmarkMembershipStreamProcs is BenchmarkMembershipStream between two processes: the CPU per byte of each end
// is measured on its own process.
func BenchmarkMembershipStreamProcs(b *testing.B) {
	f := newBenchFleet(b)
	for mode, m := range membershipModes {
		b.Run(m.name, func(b *testing.B) {
			args, err := json.Marshal(f.args(mode, b.TempDir()))
			if err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestMembershipStreamSource$")
			cmd.Env = append(os.Environ(), benchSourceEnv+"="+string(args))
			stdin, err := cmd.StdinPipe()
			if err != nil {
				b.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				stdin.Close()
				done := make(chan struct{})
				go func() { cmd.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					<-done
				}
			})
			var id, addr string
			if _, err := fmt.Fscan(bufio.NewReader(stdout), &id, &addr); err != nil {
				b.Fatalf("source process: %v", err)
			}
			src, err := peer.Decode(id)
			if err != nil {
				b.Fatal(err)
			}
			dst := benchNodeIn(b, f, mode, b.TempDir())
			b.Cleanup(func() { dst.Close() })
			connectBench(b, dst, src, []ma.Multiaddr{ma.StringCast(addr)})
			srcCPU := func() time.Duration {
				st, err := dst.Host().NewStream(context.Background(), src, benchCPUProtocol)
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				var ns int64
				if _, err := fmt.Fscan(st, &ns); err != nil {
					b.Fatal(err)
				}
				return time.Duration(ns)
			}
			var before time.Duration
			used, bytes := benchStream(b, dst, src, func() { before = srcCPU() })
			sent := srcCPU() - before
			b.ReportMetric(float64(used.Nanoseconds())/bytes, "recv-cpu-ns/B")
			b.ReportMetric(float64(sent.Nanoseconds())/bytes, "send-cpu-ns/B")
		})
	}
}
