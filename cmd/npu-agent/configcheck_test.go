package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/npu-agent/npu-agent/config"
)

// `config check` runs the daemon's own validation and reports every problem at once; the daemon refuses the
// same config before it opens a file, a socket or a port.
func TestConfigCheckIsTheDaemonsValidation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A port taken by the test shows whether the daemon listened before failing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfgPath := filepath.Join(dir, "c.yaml")
	body := "data_dir: " + filepath.Join(dir, "data") + "\n" +
		"runtime_dir: " + filepath.Join(dir, "run") + "\n" +
		"p2p:\n  listen: [\"/ip4/127.0.0.1/tcp/" + itoa(port) + "\", \"/ip4/not-an-ip/tcp/1\"]\n" +
		"  allowlist: [\"not-a-peer-id\"]\n" +
		"rollout:\n  trusted_keys: [\"npu-agent-ed25519:bm90IGEga2V5\"]\n"
	if err := os.WriteFile(cfgPath, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(t, "--config", cfgPath, "config", "check")
	if code != 2 {
		t.Fatalf("config check exit %d, want 2; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{"p2p.listen", "not-an-ip", "p2p.allowlist", "rollout.trusted_keys"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("config check does not report %s:\n%s", want, stderr)
		}
	}

	cfg, err := config.Load(cfgPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = runDaemon(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if exitCode(err) != 2 {
		t.Fatalf("daemon: %v (exit %d), want a config error (exit 2)", err, exitCode(err))
	}
	for _, p := range []string{cfg.DataDir, cfg.SocketPath()} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("the daemon created %s before refusing its config (%v)", p, err)
		}
	}
	// The port is free: nothing listened on it.
	l2, err := net.Listen("tcp", "127.0.0.1:"+itoa(port))
	if err != nil {
		t.Errorf("the daemon listened on p2p.listen before refusing its config: %v", err)
	} else {
		l2.Close()
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
