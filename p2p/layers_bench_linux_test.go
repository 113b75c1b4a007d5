//go:build linux

package p2p

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"golang.org/x/sys/unix"

	"github.com/npu-agent/npu-agent/internal/cputime"
)

// BenchmarkStreamLayers: what each layer beneath the chunk protocol costs per byte, one bulk transfer over
// loopback with both ends in this process (docs/benchmarks.md "CPU per byte (wave 7)"): plain TCP (what aria2
// sends), TLS 1.3 over it (what libp2p's TLS security does to every byte), and yamux over TLS as libp2p configures
// it. Writes are whole chunks (1 MiB) as the server writes them;
// reads go into a chunk buffer as readChunk's do. cpu-ns/B is the process's CPU per byte, halved: per end.
// The paced cases cap the sender's TCP at 100 Mbit/s (SO_MAX_PACING_RATE), the fleet benchmark's link rate: bytes
// then arrive a few segments at a time, as on the benchmark's links, and each arrival wakes the reader.
func BenchmarkStreamLayers(b *testing.B) {
	layers := []struct {
		name string
		wrap func(tb testing.TB, c net.Conn, server bool) io.ReadWriteCloser
	}{
		{"tcp", func(_ testing.TB, c net.Conn, _ bool) io.ReadWriteCloser { return c }},
		{"tls", func(tb testing.TB, c net.Conn, server bool) io.ReadWriteCloser { return benchTLS(tb, c, server) }},
		{"tls+yamux-libp2p", func(tb testing.TB, c net.Conn, server bool) io.ReadWriteCloser {
			return benchYamux(tb, yamux.DefaultTransport, benchTLS(tb, c, server), server)
		}},
	}
	for _, paced := range []bool{false, true} {
		for _, l := range layers {
			name := l.name
			if paced {
				name += "-100mbit"
			}
			b.Run(name, func(b *testing.B) { benchLayer(b, l.wrap, paced) })
		}
	}
}

// benchLayer moves b.N transfers of benchLayerSize (paced: a quarter of it) over loopback through wrap.
func benchLayer(b *testing.B, wrap func(tb testing.TB, c net.Conn, server bool) io.ReadWriteCloser, paced bool) {
	size := benchLayerSize
	if paced {
		size /= 4
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	sent, done := make(chan error, 1), make(chan struct{})
	defer close(done)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sent <- err
			return
		}
		if paced {
			if err := pace(c, 100e6/8); err != nil {
				sent <- err
				return
			}
		}
		w := wrap(b, c, true)
		defer func() { <-done; w.Close() }() // yamux drops what the reader has not taken when closed
		buf := make([]byte, 1<<20)
		for range (b.N + 1) * size / len(buf) {
			if _, err := w.Write(buf); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	r := wrap(b, c, false)
	defer r.Close()
	buf := make([]byte, 1<<20)
	read := func() {
		for left := size; left > 0; {
			n, err := r.Read(buf[:min(left, len(buf))])
			if err != nil {
				b.Fatal(err)
			}
			left -= n
		}
	}
	read() // handshake, windows grown
	b.SetBytes(int64(size))
	b.ResetTimer()
	start, cpu := time.Now(), cputime.Self()
	for range b.N {
		read()
	}
	wall, used := time.Since(start), cputime.Self()-cpu
	b.StopTimer()
	if err := <-sent; err != nil {
		b.Fatal(err)
	}
	bytes := float64(size) * float64(b.N)
	b.ReportMetric(bytes/wall.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(used.Nanoseconds())/bytes/2, "cpu-ns/B-per-end")
}

const benchLayerSize = 64 << 20

// pace caps the TCP sending rate of c at bytesPerSec.
func pace(c net.Conn, bytesPerSec int) error {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, bytesPerSec)
	}); err != nil {
		return err
	}
	return serr
}

// benchTLS runs a TLS 1.3 handshake on c with a throwaway certificate, as libp2p's TLS security would.
func benchTLS(tb testing.TB, c net.Conn, server bool) *tls.Conn {
	if !server {
		return tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Server(c, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS13})
}

// benchYamux opens (client) or accepts (server) one yamux stream over c.
func benchYamux(tb testing.TB, t *yamux.Transport, c net.Conn, server bool) io.ReadWriteCloser {
	mc, err := t.NewConn(c, server, nil)
	if err != nil {
		tb.Fatal(err)
	}
	var st network.MuxedStream
	if server {
		st, err = mc.AcceptStream()
	} else {
		st, err = mc.OpenStream(context.Background())
		if err == nil {
			_, err = st.Write([]byte{0}) // yamux announces a stream with its first frame
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
	if server {
		var one [1]byte
		if _, err := io.ReadFull(st, one[:]); err != nil {
			tb.Fatal(err)
		}
	}
	return muxedRWC{st, mc}
}

// muxedRWC is a yamux stream whose Close also closes its connection.
type muxedRWC struct {
	network.MuxedStream
	conn network.MuxedConn
}

func (m muxedRWC) Close() error { m.MuxedStream.Close(); return m.conn.Close() }
