package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDocumentedEnv: every environment variable README.md and docs/operations.md mention works with every command
// that reads the config (config check prints the effective values; status finds the daemon by NPU_AGENT_SOCKET).
func TestDocumentedEnv(t *testing.T) {
	f := newFixture(t)
	key := filepath.Join(f.dir, "fleet.key")
	if err := os.WriteFile(key, []byte("/key/swarm/psk/1.0.0/\n/base16/\n"+strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(f.dir, "other.yaml")
	if err := os.WriteFile(other, []byte("log_level: warn\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		env, value string
		check      func(m map[string]any) bool
	}{
		{"NPU_AGENT_CONFIG", other, func(m map[string]any) bool { return m["log_level"] == "warn" }},
		{"NPU_AGENT_SOCKET", "/tmp/elsewhere.sock", func(m map[string]any) bool { return sub(m, "api")["socket"] == "/tmp/elsewhere.sock" }},
		{"NPU_AGENT_LOG_LEVEL", "debug", func(m map[string]any) bool { return m["log_level"] == "debug" }},
		{"NPU_AGENT_STORE_QUOTA", "50GiB", func(m map[string]any) bool { return sub(m, "store")["quota"] == "50GiB" }},
		{"NPU_AGENT_P2P_FLEET_KEY_FILE", key, func(m map[string]any) bool { return sub(m, "p2p")["fleet_key_file"] == key }},
		{"NPU_AGENT_P2P_PEERS", "/ip4/10.0.0.5/tcp/4801/p2p/12D3KooWJSEKwrqiCTEf23m13QEBnnT1mdyzU3Faz2wgcEA58iYr,/ip4/10.0.0.6/tcp/4801/p2p/12D3KooWAcjKcsefWDZXHNWE9fk9PhAxWuuxe1aZ4ip74MzkfaXL", func(m map[string]any) bool {
			l, _ := sub(m, "p2p")["peers"].([]any)
			return len(l) == 2
		}},
		{"NPU_AGENT_ROLLOUT_THRESHOLD", "0", func(m map[string]any) bool { return sub(m, "rollout")["threshold"] == float64(0) }},
		{"NPU_AGENT_STORE_GC_INTERVAL", "1h", func(m map[string]any) bool { return sub(m, "store")["gc_interval"] == "1h0m0s" }},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			t.Setenv(tt.env, tt.value)
			args := []string{"--json", "config", "check"}
			if tt.env != "NPU_AGENT_CONFIG" {
				args = append([]string{"--config", filepath.Join(f.dir, "cfg.yaml")}, args...)
			}
			out, errOut, code := run(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(out), &m); err != nil {
				t.Fatal(err)
			}
			if !tt.check(m) {
				t.Errorf("%s=%s not in effect: %s", tt.env, tt.value, out)
			}
		})
	}
	t.Run("NPU_AGENT_SOCKET reaches the daemon", func(t *testing.T) {
		sock := startDaemon(t, f, nil)
		t.Setenv("NPU_AGENT_SOCKET", sock)
		if _, errOut, code := run(t, "--config", "/dev/null", "status"); code != 0 {
			t.Fatalf("status: exit %d: %s", code, errOut)
		}
	})
	t.Run("unknown variable", func(t *testing.T) {
		t.Setenv("NPU_AGENT_STORE_QUTA", "1GiB")
		_, errOut, code := run(t, "--config", filepath.Join(f.dir, "cfg.yaml"), "ls")
		if code != exitUsage || !strings.Contains(errOut, "NPU_AGENT_STORE_QUOTA") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})
}

func sub(m map[string]any, key string) map[string]any {
	s, _ := m[key].(map[string]any)
	return s
}

// TestVersionAndBuildInfo: --version prints the version; the daemon's /metrics has npu_agent_build_info.
func TestVersionAndBuildInfo(t *testing.T) {
	out, _, code := run(t, "--version")
	if code != 0 || strings.TrimSpace(out) != "npu-agent "+version {
		t.Fatalf("--version: exit %d: %q", code, out)
	}
	f := newFixture(t)
	sock := startDaemon(t, f, nil)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://npu-agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	want := `npu_agent_build_info{goversion="` + runtime.Version() + `",version="` + version + `"} 1`
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}
