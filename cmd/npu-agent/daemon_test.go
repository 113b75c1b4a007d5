package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/config"
)

// startDaemon runs the daemon in-process on a fresh data dir with the simulator and returns its socket.
func startDaemon(t testing.TB, f fixture, mod func(*config.Config)) string {
	t.Helper()
	cfg := config.Default()
	cfg.DataDir = filepath.Join(f.dir, "data")
	cfg.RuntimeDir = filepath.Join(f.dir, "run")
	cfg.FingerprintOverride = f.fp
	cfg.Compiler.Backend = "sim"
	cfg.Compiler.Sim.CompileTime = 10 * time.Millisecond
	cfg.P2P.Enabled = false
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runDaemon(ctx, cfg, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("daemon did not stop within 20s")
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := api.Dial(ctx, cfg.SocketPath())
		if err == nil {
			c.Close()
			return cfg.SocketPath()
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon socket not answering: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDaemonServesLoader: a stock HTTP client ensures a blob over the unix socket, and the Python client imports
// the returned path through the stand-in openvino module without compiling; every copy is byte-identical.
func TestDaemonServesLoader(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	f := newFixture(t)
	sock := startDaemon(t, f, nil)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}

	body := `{"model":"` + f.model + `","profile":{"device":"NPU","shapes":{"x":[1,8]}}}`
	resp, err := hc.Post("http://npu-agent/v1/ensure", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var ens struct {
		CID    map[string]string `json:"cid"`
		Path   string            `json:"path"`
		Source string            `json:"source"`
		SHA256 string            `json:"sha256"`
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("ensure: %s: %s", resp.Status, raw)
	}
	if err := json.Unmarshal(raw, &ens); err != nil {
		t.Fatalf("ensure answer %s: %v", raw, err)
	}
	if ens.Source != "compiled" || ens.CID["/"] == "" {
		t.Fatalf("ensure answer %s", raw)
	}
	onDisk, err := os.ReadFile(ens.Path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(onDisk); hex.EncodeToString(sum[:]) != ens.SHA256 {
		t.Fatalf("file at %s does not hash to the answered sha256", ens.Path)
	}
	resp, err = hc.Get("http://npu-agent/v1/blobs/" + ens.CID["/"])
	if err != nil {
		t.Fatal(err)
	}
	streamed, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(streamed, onDisk) {
		t.Fatalf("streamed blob (%d bytes) differs from the materialised file (%d bytes)", len(streamed), len(onDisk))
	}

	// The application side: three lines of Python.
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	calls := filepath.Join(f.dir, "ov-calls.jsonl")
	script := `import hashlib, sys, openvino, npu_agent
cm = npu_agent.compile_model(openvino.Core(), sys.argv[1], shapes={"x": [1, 8]}, socket=sys.argv[2])
print(hashlib.sha256(cm.export_model()).hexdigest())`
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", "-c", script, f.model, sock)
	cmd.Env = append(os.Environ(),
		"PYTHONPATH="+filepath.Join(root, "compile/testdata/fakeov")+":"+filepath.Join(root, "clients/python"),
		"PYTHONDONTWRITEBYTECODE=1", "FAKEOV_CALLS="+calls)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python client: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != ens.SHA256 {
		t.Fatalf("python imported a blob with sha256 %s, the store's is %s", got, ens.SHA256)
	}
	log, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), `"call": "import_model"`) || strings.Contains(string(log), `"call": "compile_model"`) {
		t.Fatalf("python client should import, not compile; openvino calls:\n%s", log)
	}
}
