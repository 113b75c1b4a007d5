//go:build linux

package e2e

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/config"
)

func TestMetricValue(t *testing.T) {
	t.Parallel()
	exposition := []byte(`# HELP npu_agent_compiles_total Local compiles, by result (ok, error).
# TYPE npu_agent_compiles_total counter
npu_agent_compiles_total{result="error"} 0
npu_agent_compiles_total{result="ok"} 2
npu_agent_compiles_total_extra{result="ok"} 9
npu_agent_peers_connected 6 1700000000000
npu_agent_broken NaNx
`)
	tests := []struct {
		series string
		want   float64
		err    error
	}{
		{`npu_agent_compiles_total{result="ok"}`, 2, nil},
		{`npu_agent_compiles_total{result="error"}`, 0, nil},
		{`npu_agent_peers_connected`, 6, nil},
		{`npu_agent_compiles_total`, 0, ErrMetric},
		{`npu_agent_broken`, 0, ErrMetric},
		{`npu_agent_absent`, 0, ErrMetric},
	}
	for _, tc := range tests {
		got, err := MetricValue(exposition, tc.series)
		if !errors.Is(err, tc.err) || (err == nil && got != tc.want) {
			t.Errorf("MetricValue(%s) = %v, %v; want %v, %v", tc.series, got, err, tc.want, tc.err)
		}
	}
}

func FuzzMetricValue(f *testing.F) {
	f.Add([]byte("a{b=\"c\"} 1\n"), `a{b="c"}`)
	f.Add([]byte("a 1e3 12\n"), "a")
	f.Add([]byte("a \n"), "a")
	f.Fuzz(func(t *testing.T, exposition []byte, series string) {
		if _, err := MetricValue(exposition, series); err != nil && !errors.Is(err, ErrMetric) {
			t.Fatalf("error %v is not ErrMetric", err)
		}
	})
}

func TestLogMsg(t *testing.T) {
	t.Parallel()
	tests := []struct {
		msg, line string
		want      bool
	}{
		{"compiling", "time=2026-01-01T00:00:00Z level=INFO msg=compiling backend=sim model=abc\n", true},
		{"compiling", "time=x level=INFO msg=compiling", true},
		{"compiling", "time=x level=INFO msg=compiled blob=b\n", false},
		{"compiled", "time=x level=INFO msg=compiled blob=b\n", true},
		{"compiling", `time=x level=INFO msg="no peer could serve a compatible blob; compiling" err=x`, false},
		{"compiling", "time=x level=INFO msg=compilingX\n", false},
		{"no peer could serve", `time=x level=INFO msg="no peer could serve" a=b`, true},
	}
	for _, tc := range tests {
		if got := LogMsg(tc.msg)(tc.line); got != tc.want {
			t.Errorf("LogMsg(%q)(%q) = %t, want %t", tc.msg, tc.line, got, tc.want)
		}
	}
}

// TestConfigLoads: the files a daemon is started with are what config and compat load, with the values asked for.
func TestConfigLoads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "fleet.key")
	if err := WriteFleetKey(key); err != nil {
		t.Fatal(err)
	}
	c := Config{
		Dir: filepath.Join(dir, `odd "dir" h0`), Fingerprint: LunarLake, CompileTime: 2500 * time.Millisecond,
		BlobSize: 48 << 20, P2P: true, FleetKeyFile: key, LeaseTTL: 3 * time.Second, Deadline: time.Minute,
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"config.yaml": c.yaml(), "fingerprint.yaml": c.Fingerprint.YAML()} {
		if err := os.WriteFile(filepath.Join(c.Dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(filepath.Join(c.Dir, "config.yaml"), nil)
	if err != nil {
		t.Fatalf("config.Load: %v\n%s", err, c.yaml())
	}
	if cfg.DataDir != filepath.Join(c.Dir, "data") || cfg.SocketPath() != filepath.Join(c.Dir, "run", "api.sock") ||
		cfg.Compiler.Backend != "sim" || cfg.Compiler.Sim.CompileTime != c.CompileTime ||
		int64(cfg.Compiler.Sim.BlobSize) != c.BlobSize || !cfg.P2P.Enabled || !cfg.P2P.MDNS ||
		cfg.P2P.FleetKeyFile != key || cfg.Flight.LeaseTTL != c.LeaseTTL || cfg.Flight.Deadline != c.Deadline ||
		cfg.Flight.Window != config.Default().Flight.Window || cfg.Store.GCInterval != 0 {
		t.Errorf("config loaded as %+v from\n%s", cfg, c.yaml())
	}
	o, err := compat.LoadOverride(cfg.FingerprintOverride)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := o.Apply(compat.Fingerprint{})
	if err != nil {
		t.Fatal(err)
	}
	if fp.Arch != "4000" || fp.FirmwareMI != "11.4" || fp.MaxTiles != 6 || fp.CompilerType != "PLUGIN" {
		t.Errorf("fingerprint loaded as %+v", fp)
	}
}

// TestWriteModelIDs: models written under different names are different models to npu-agent.
func TestWriteModelIDs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ids := map[string]bool{}
	for _, name := range []string{"a", "b"} {
		path, err := WriteModel(dir, name, 100)
		if err != nil {
			t.Fatal(err)
		}
		m, err := compile.LoadModel(path)
		if err != nil {
			t.Fatal(err)
		}
		ids[m.ID] = true
	}
	if len(ids) != 2 {
		t.Errorf("two models, %d IDs", len(ids))
	}
}

// TestConfigLoopback: a daemon configured for a machine without a lab listens on 127.0.0.1 at its port, without
// mDNS, and dials its static peers.
func TestConfigLoopback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	peerAddr := "/ip4/127.0.0.1/tcp/4998/p2p/" + id.String()
	c := Config{Dir: dir, Fingerprint: LunarLake, P2P: true, Loopback: true, Port: 4999, Peers: []string{peerAddr}}
	for name, b := range map[string][]byte{"config.yaml": c.yaml(), "fingerprint.yaml": c.Fingerprint.YAML()} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(filepath.Join(dir, "config.yaml"), nil)
	if err != nil {
		t.Fatalf("config.Load: %v\n%s", err, c.yaml())
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v\n%s", err, c.yaml())
	}
	if !slices.Equal(cfg.P2P.Listen, []string{"/ip4/127.0.0.1/tcp/4999"}) || cfg.P2P.MDNS || !cfg.P2P.AllowLoopback ||
		!slices.Equal(cfg.P2P.Peers, []string{peerAddr}) {
		t.Errorf("p2p config loaded as %+v from\n%s", cfg.P2P, c.yaml())
	}
}
