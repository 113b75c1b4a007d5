//go:build linux

package hostile

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/internal/e2e"
	"github.com/npu-agent/npu-agent/rollout"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	binDir    string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostile-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func npuAgent(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		binPath, buildErr = e2e.Build(ctx, binDir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// daemon is one real `npu-agent daemon` (p2p off, simulated compiler, rollouts on, api.tcp with a token).
type daemon struct {
	dir, socket, tcp, token string
	dataDir, fleetKey       string
	cmd                     *exec.Cmd
	log                     *bytes.Buffer
	done                    chan struct{}
}

// secret is what the daemon's own files hold in these tests: no answer may contain it.
const secret = "TOP-SECRET-daemon-key-material-0123456789"

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startDaemon(t *testing.T) *daemon {
	t.Helper()
	bin := npuAgent(t)
	dir := t.TempDir()
	d := &daemon{dir: dir, socket: filepath.Join(dir, "run", "api.sock"), tcp: freePort(t),
		token: "tok-" + strings.Repeat("x", 28), dataDir: filepath.Join(dir, "data"),
		fleetKey: filepath.Join(dir, "etc", "fleet.key"), log: &bytes.Buffer{}, done: make(chan struct{})}
	_, pub := rollout.GenerateKey()
	files := map[string]string{
		filepath.Join(dir, "etc", "fingerprint.yaml"): string(e2e.LunarLake.YAML()),
		filepath.Join(dir, "etc", "api.token"):        d.token + "\n",
		d.fleetKey:                                    secret,
		filepath.Join(d.dataDir, "identity.key"):      secret,
	}
	for p, body := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	q := strconv.Quote
	cfg := fmt.Sprintf(`data_dir: %s
runtime_dir: %s
fingerprint_override: %s
log_level: "debug"
store:
  gc_interval: 0s
compiler:
  backend: sim
  sim:
    compile_time: 10ms
    blob_size: 65536
p2p:
  enabled: false
  fleet_key_file: %s
api:
  tcp: %s
  token_file: %s
rollout:
  trusted_keys: [%s]
`, q(d.dataDir), q(filepath.Join(dir, "run")), q(filepath.Join(dir, "etc", "fingerprint.yaml")), q(d.fleetKey),
		q(d.tcp), q(filepath.Join(dir, "etc", "api.token")), q(rollout.FormatPublicKey(pub)))
	cfgPath := filepath.Join(dir, "etc", "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(bin, "--config", cfgPath, "daemon")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NPU_AGENT_") {
			d.cmd.Env = append(d.cmd.Env, kv)
		}
	}
	d.cmd.Stdout, d.cmd.Stderr = lockedWriter{w: d.log}, lockedWriter{w: d.log}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(os.Interrupt)
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			logMu.Lock()
			t.Logf("daemon log:\n%s", tail(d.log.String(), 8<<10))
			logMu.Unlock()
		}
	})
	c := api.NewClient(d.socket)
	defer c.Close()
	for i := 0; i < 300; i++ { // 30 s
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Health(ctx)
		cancel()
		if err == nil {
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("daemon exited: %s", tail(d.log.String(), 4<<10))
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatal("daemon did not answer within 30 s")
	return nil
}

var logMu sync.Mutex

type lockedWriter struct{ w io.Writer }

func (l lockedWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return l.w.Write(p)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (d *daemon) socketClient() *Client { return &Client{Socket: d.socket} }

// metric reads one series from the daemon's /metrics over its socket.
func (d *daemon) metric(t *testing.T, series string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := d.socketClient().Do(ctx, http.MethodGet, "/metrics", "", nil)
	if err != nil || a.Status != http.StatusOK {
		t.Fatalf("metrics: %v %d", err, a.Status)
	}
	v, err := e2e.MetricValue(a.Body, series)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// storeEmpty asserts that nothing was stored: no blob, no record.
func (d *daemon) storeEmpty(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := api.NewClient(d.socket)
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Store.Blobs != 0 || st.Store.Partial != 0 || st.Store.Records != 0 {
		t.Errorf("store after the attack: %d blobs, %d partial, %d records; want none", st.Store.Blobs, st.Store.Partial, st.Store.Records)
	}
}

func noLeak(t *testing.T, name string, a Answer) {
	t.Helper()
	if bytes.Contains(a.Body, []byte(secret)) {
		t.Errorf("%s: the answer holds the secret: %s", name, a.Body)
	}
}

// TestHostileClientSymlinkIntoDaemonFiles: a socket client (here as the daemon's own uid, the worst case) names
// symlinks to the daemon's identity key, fleet key and token file as model paths, through every endpoint that
// takes a path. Each is refused with not_permitted; nothing is stored and no answer holds the bytes.
func TestHostileClientSymlinkIntoDaemonFiles(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	evil := t.TempDir()
	targets := map[string]string{
		"identity key": filepath.Join(d.dataDir, "identity.key"),
		"fleet key":    d.fleetKey,
		"token file":   filepath.Join(d.dir, "etc", "api.token"),
		"data dir":     d.dataDir + "/../data/identity.key",
	}
	c := d.socketClient()
	i := 0
	for name, target := range targets {
		for _, onnx := range []bool{false, true} {
			i++
			p, err := SymlinkModel(evil, "m"+strconv.Itoa(i), target, onnx)
			if err != nil {
				t.Fatal(err)
			}
			for _, ep := range []struct {
				name string
				do   func(context.Context) (Answer, error)
			}{
				{"ensure", func(ctx context.Context) (Answer, error) { return c.Ensure(ctx, p) }},
				{"rollout source", func(ctx context.Context) (Answer, error) { return c.AddSource(ctx, p) }},
				{"put", func(ctx context.Context) (Answer, error) { return c.Put(ctx, p, strings.NewReader("blob")) }},
			} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				a, err := ep.do(ctx)
				cancel()
				what := fmt.Sprintf("%s via %s (onnx %t)", name, ep.name, onnx)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if a.Status != http.StatusForbidden || a.Code != "not_permitted" {
					t.Errorf("%s: %d %s %s; want 403 not_permitted", what, a.Status, a.Code, a.Body)
				}
				noLeak(t, what, a)
			}
		}
	}
	d.storeEmpty(t)
}

// TestHostileClientSpecialFiles: 200 requests naming a FIFO (no writer) and /dev/zero each fail at once; the
// daemon's threads and goroutines stay bounded.
func TestHostileClientSpecialFiles(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	dir := t.TempDir()
	fifo, err := FIFOModel(dir, "fifo")
	if err != nil {
		t.Fatal(err)
	}
	zero, err := SymlinkModel(dir, "zero", "/dev/zero", true)
	if err != nil {
		t.Fatal(err)
	}
	threads0 := d.metric(t, "go_threads")
	c := d.socketClient()
	const total, parallel = 200, 40 // under the per-client bound of 64
	var wg sync.WaitGroup
	errs := make(chan string, total)
	sem := make(chan struct{}, parallel)
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p := fifo
			if i%4 == 3 {
				p = zero
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			a, err := c.Ensure(ctx, p)
			switch {
			case err != nil:
				errs <- fmt.Sprintf("%s: %v", p, err)
			case a.Status != http.StatusUnprocessableEntity || a.Code != "invalid_model":
				errs <- fmt.Sprintf("%s: %d %s", p, a.Status, a.Body)
			case a.Elapsed > 2*time.Second:
				errs <- fmt.Sprintf("%s: answered after %v", p, a.Elapsed)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	threads, goroutines := d.metric(t, "go_threads"), d.metric(t, "go_goroutines")
	t.Logf("after %d special-file requests: %v threads (before %v), %v goroutines", total, threads, threads0, goroutines)
	if threads > threads0+16 {
		t.Errorf("threads grew from %v to %v", threads0, threads)
	}
	if goroutines > 200 {
		t.Errorf("%v goroutines after the requests", goroutines)
	}
	d.storeEmpty(t)
}

// TestHostileClientHashingStopsWithClient: a client asks for a 4 GiB (sparse) model and leaves after 200 ms; the
// daemon stops hashing it (its CPU time stops growing).
func TestHostileClientHashingStopsWithClient(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	p := filepath.Join(t.TempDir(), "big.onnx")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err = d.socketClient().Ensure(ctx, p)
	cancel()
	if err == nil {
		t.Fatal("a 4 GiB model hashed in 200 ms; the test needs a slower hash")
	}
	time.Sleep(300 * time.Millisecond)
	cpu0 := d.metric(t, "process_cpu_seconds_total")
	time.Sleep(1500 * time.Millisecond)
	cpu1 := d.metric(t, "process_cpu_seconds_total")
	t.Logf("daemon CPU in the 1.5 s after the client left: %.2f s", cpu1-cpu0)
	if cpu1-cpu0 > 0.5 {
		t.Errorf("the daemon used %.2f s of CPU in 1.5 s after the client left: still hashing", cpu1-cpu0)
	}
}

// TestHostileClientTCPWithoutToken: over api.tcp, only /metrics and /v1/healthz answer without the token; every
// other endpoint is 401 with no token or a wrong one, and nothing is stored.
func TestHostileClientTCPWithoutToken(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	model := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(model, []byte("onnx"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token, method, path string
		want                int
	}{
		{"", http.MethodGet, "/metrics", http.StatusOK},
		{"", http.MethodGet, "/v1/healthz", http.StatusOK},
		{"", http.MethodGet, "/v1/status", http.StatusUnauthorized},
		{"", http.MethodGet, "/v1/jobs", http.StatusUnauthorized},
		{"", http.MethodPost, "/v1/blobs", http.StatusUnauthorized},
		{"", http.MethodPost, "/v1/ensure", http.StatusUnauthorized},
		{"", http.MethodPost, "/v1/rollouts/sources", http.StatusUnauthorized},
		{"wrong-token-wrong-token", http.MethodGet, "/v1/status", http.StatusUnauthorized},
		{d.token + "x", http.MethodGet, "/v1/status", http.StatusUnauthorized},
		{d.token, http.MethodGet, "/v1/status", http.StatusOK},
		{d.token, http.MethodGet, "/v1/jobs", http.StatusOK},
		{d.token, http.MethodPost, "/v1/jobs", http.StatusMethodNotAllowed},
	} {
		c := &Client{TCP: d.tcp, Token: tc.token}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var a Answer
		var err error
		if tc.path == "/v1/blobs" {
			a, err = c.Put(ctx, model, strings.NewReader("NOT A BLOB"))
		} else {
			a, err = c.Do(ctx, tc.method, tc.path, "application/json", nil)
		}
		cancel()
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		if a.Status != tc.want || (tc.want == http.StatusUnauthorized && a.Code != "unauthorized") {
			t.Errorf("%s %s with token %q: %d %s; want %d", tc.method, tc.path, tc.token, a.Status, a.Body, tc.want)
		}
	}
	// The Go client sends the token of NPU_AGENT_API_TOKEN_FILE.
	tc := api.NewTCPClient(d.tcp)
	tc.SetToken(d.token)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tc.Status(ctx); err != nil {
		t.Errorf("Go client with the token: %v", err)
	}
	d.storeEmpty(t)
}

// TestHostileClientStalledAndOversized: stalled request headers are dropped after the header deadline; an
// upload claiming more than the limit is refused before its body is read; an endless body is cut at the limit.
func TestHostileClientStalledAndOversized(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.socketClient()
	model := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(model, []byte("onnx"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const stalled = 100
	conns := make([]net.Conn, 0, stalled)
	for i := 0; i < stalled; i++ {
		conn, err := c.StalledHeaders(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	fds := d.metric(t, "process_open_fds")
	a, err := c.Put(ctx, model, io.LimitReader(&ZeroReader{}, 1)) // sanity: the daemon still answers
	if err != nil || a.Status == 0 {
		t.Fatalf("daemon under %d stalled connections: %v", stalled, err)
	}
	// 65 GiB claimed: refused from the headers.
	conn, err := c.StalledUpload(ctx, model, 65<<30, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if took, err := WaitClosed(conn, 5*time.Second); err != nil {
		t.Errorf("oversized upload: %v", err)
	} else {
		t.Logf("oversized upload refused in %v", took)
	}
	var last time.Duration
	for i, conn := range conns {
		took, err := WaitClosed(conn, 15*time.Second)
		if err != nil {
			t.Fatalf("stalled headers %d: %v", i, err)
		}
		last = max(last, took)
	}
	after := d.metric(t, "process_open_fds")
	t.Logf("%d stalled header connections: %v fds open while stalled, all closed after %v, %v fds after", stalled, fds, last, after)
	if after > fds-stalled/2 {
		t.Errorf("fds: %v while stalled, %v after", fds, after)
	}
	d.storeEmpty(t)
}
