//go:build linux

package hostile

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api/server"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

// The upload scenarios need deadlines and limits shorter than the daemon's defaults, so they run the daemon's
// real components (server.Server on a unix socket, server.Service, the agent, a badger store) in the test process.

type inproc struct {
	socket  string
	scratch string
}

func startInproc(t *testing.T, opts server.Options, store badgerstore.Options) *inproc {
	t.Helper()
	st, err := badgerstore.Open(t.TempDir(), store)
	if err != nil {
		t.Fatal(err)
	}
	host := compat.Fingerprint{OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64"}
	sim, err := compile.NewSim(host, compile.SimOptions{PayloadSize: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{Store: st, Backend: sim, Host: host, Producer: "test", WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "api.sock")
	ln, err := server.ListenUnix(socket)
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := server.NewServer(&server.Service{Agent: a}, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return")
		}
		st.Close()
	})
	return &inproc{socket: socket, scratch: a.ScratchDir()}
}

func modelFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(p, []byte("onnx model"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func scratchEmpty(t *testing.T, dir string) {
	t.Helper()
	for i := 0; i < 50; i++ { // the handler removes its spool file as it returns
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Error("spool files left in the scratch directory")
}

// TestHostileClientStalledUploads: 200 uploads that send 1 KiB of a claimed 10 MiB and stall. At most the
// per-client bound are taken (the rest are answered 429 at once); each taken one fails when its body has sent
// nothing for the idle deadline, its spool file is removed, and the server's goroutines return to where they were.
func TestHostileClientStalledUploads(t *testing.T) {
	t.Parallel()
	const idle, perClient, total = 300 * time.Millisecond, 16, 200
	s := startInproc(t, server.Options{BodyIdleTimeout: idle, MaxPerClient: perClient}, badgerstore.Options{})
	g0 := runtime.NumGoroutine()
	c := &Client{Socket: s.socket}
	model := modelFile(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conns := make([]net.Conn, 0, total)
	for i := 0; i < total; i++ {
		conn, err := c.StalledUpload(ctx, model, 10<<20, 1<<10)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var busy, slow int
	for _, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			head := make([]byte, 64)
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, _ := io.ReadFull(conn, head)
			took, err := WaitClosed(conn, 10*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if strings.Contains(string(head[:n]), " 429 ") {
				busy++
			}
			if err != nil || took > 5*time.Second {
				slow++
			}
		}()
	}
	wg.Wait()
	t.Logf("%d stalled uploads: %d answered 429, all closed after %v", total, busy, time.Since(start))
	if slow > 0 {
		t.Errorf("%d stalled uploads still open after 5 s", slow)
	}
	if busy < total-perClient {
		t.Errorf("%d uploads answered 429; want at least %d (bound %d per client)", busy, total-perClient, perClient)
	}
	scratchEmpty(t, s.scratch)
	var g int
	for i := 0; i < 100; i++ {
		if g = runtime.NumGoroutine(); g <= g0+5 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if g > g0+5 {
		t.Errorf("goroutines: %d before, %d after", g0, g)
	}
}

// TestHostileClientOversizedUpload: a chunked upload past the configured bound is cut there (413) and its spool
// file removed; one that claims too much is refused from its headers.
func TestHostileClientOversizedUpload(t *testing.T) {
	t.Parallel()
	s := startInproc(t, server.Options{MaxUpload: 1 << 20}, badgerstore.Options{})
	c := &Client{Socket: s.socket}
	model := modelFile(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	z := &ZeroReader{}
	a, err := c.Put(ctx, model, io.LimitReader(z, 64<<20))
	if err != nil && a.Status == 0 {
		t.Logf("the server closed the connection mid-body: %v", err)
	} else if a.Status != http.StatusRequestEntityTooLarge || a.Code != "too_large" {
		t.Errorf("endless upload: %d %s; want 413 too_large", a.Status, a.Body)
	}
	t.Logf("endless upload: the client sent %d bytes before the answer", z.N.Load())
	conn, err := c.StalledUpload(ctx, model, 2<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	head := make([]byte, 12)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, head); err != nil || !strings.Contains(string(head), "413") {
		t.Errorf("claimed 2 MiB over a 1 MiB bound: %q %v", head, err)
	}
	scratchEmpty(t, s.scratch)
}

// TestHostileClientUploadNoSpace: with the store's free-space reserve above the free space, an upload is refused
// (507 no_space) before it spools, with or without a Content-Length.
func TestHostileClientUploadNoSpace(t *testing.T) {
	t.Parallel()
	s := startInproc(t, server.Options{}, badgerstore.Options{MinFreeSpace: 1 << 60})
	c := &Client{Socket: s.socket}
	model := modelFile(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, body := range []io.Reader{strings.NewReader("blob with a length"), io.LimitReader(&ZeroReader{}, 8<<20)} {
		a, err := c.Put(ctx, model, body)
		if err != nil && a.Status == 0 {
			t.Logf("the server closed the connection mid-body: %v", err)
			continue
		}
		if a.Status != http.StatusInsufficientStorage || a.Code != "no_space" {
			t.Errorf("upload without space: %d %s; want 507 no_space", a.Status, a.Body)
		}
	}
	scratchEmpty(t, s.scratch)
}
