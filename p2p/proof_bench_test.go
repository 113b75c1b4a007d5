package p2p

import (
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/npu-agent/npu-agent/internal/cputime"
)

// BenchmarkMembershipStream: what each way of proving membership costs per byte on a bare libp2p stream
// between two nodes over loopback (docs/design.md 6.9): the fleet key (pnet's XSalsa20 under TLS 1.3 on TCP),
// the fleet authority (TLS 1.3 alone after the one-time proof, TCP and QUIC), and no membership at all (TLS 1.3).
// cpu-ns/B is the whole process's CPU (both ends) per byte, halved: per end.
func BenchmarkMembershipStream(b *testing.B) {
	ca := newCA(b)
	tcp := ma.StringCast("/ip4/127.0.0.1/tcp/0")
	quic := ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")
	key := make(pnet.PSK, 32)
	rand.Read(key)
	for _, tc := range []struct {
		name string
		mod  func(tb testing.TB, dir string, c *Config)
	}{
		{"pnet+tls-tcp", func(_ testing.TB, _ string, c *Config) { c.FleetKey = key }},
		{"authority+tls-tcp", func(tb testing.TB, dir string, c *Config) { ca.configure(tb, dir, c) }},
		{"authority+quic", func(tb testing.TB, dir string, c *Config) {
			ca.configure(tb, dir, c)
			c.ListenAddrs = []ma.Multiaddr{quic}
		}},
		{"tls-tcp", func(testing.TB, string, *Config) {}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var nodes [2]*Node
			for i := range nodes {
				dir := b.TempDir()
				c := loopbackConfig(dir)
				c.ListenAddrs = []ma.Multiaddr{tcp}
				tc.mod(b, dir, &c)
				n, err := New(context.Background(), c, newMemStore(), testLog)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { n.Close() })
				nodes[i] = n
			}
			benchStream(b, nodes[0], nodes[1])
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

func benchStream(b *testing.B, src, dst *Node) {
	const size = 64 << 20
	ctx := context.Background()
	src.Host().SetStreamHandler(benchStreamProtocol, func(st network.Stream) {
		defer st.Close()
		buf := make([]byte, 1<<20)
		for left := size; left > 0; left -= len(buf) {
			if _, err := st.Write(buf); err != nil {
				st.Reset()
				return
			}
		}
	})
	if err := dst.Host().Connect(ctx, peer.AddrInfo{ID: src.ID(), Addrs: src.Host().Addrs()}); err != nil {
		b.Fatal(err)
	}
	copyOnce := func() {
		st, err := dst.Host().NewStream(ctx, src.ID(), benchStreamProtocol)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		if n, err := io.Copy(io.Discard, st); err != nil || n != size {
			b.Fatalf("stream: %d bytes, %v", n, err)
		}
	}
	copyOnce() // the proof, and the windows grown
	b.SetBytes(size)
	b.ResetTimer()
	start, cpu := time.Now(), cputime.Self()
	for range b.N {
		copyOnce()
	}
	wall, used := time.Since(start), cputime.Self()-cpu
	b.StopTimer()
	bytes := float64(size) * float64(b.N)
	b.ReportMetric(bytes/wall.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(used.Nanoseconds())/bytes/2, "cpu-ns/B-per-end")
}
