package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/config"
)

// TestPublishAndRollback drives rollouts as an operator would on one machine: keygen, a daemon trusting the key,
// publish, status until ready, a new model, a rollback to the first, and the errors an operator meets.
func TestPublishAndRollback(t *testing.T) {
	f := newFixture(t)
	key := filepath.Join(f.dir, "operator.key")
	out, errOut, code := run(t, "--json", "keygen", "--out", key)
	if code != exitOK {
		t.Fatalf("keygen: exit %d: %s", code, errOut)
	}
	var kg struct {
		PublicKey string `json:"public_key"`
		KeyID     string `json:"key_id"`
	}
	if err := json.Unmarshal([]byte(out), &kg); err != nil || !strings.HasPrefix(kg.PublicKey, "npu-agent-ed25519:") {
		t.Fatalf("keygen printed %q: %v", out, err)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, st.Mode())
	}
	if _, _, code := run(t, "keygen", "--out", key); code == exitOK {
		t.Fatal("keygen replaced an existing key")
	}

	cfgPath := filepath.Join(f.dir, "config.yaml")
	yaml := "data_dir: " + strconv.Quote(filepath.Join(f.dir, "data")) + "\nruntime_dir: " + strconv.Quote(filepath.Join(f.dir, "run")) +
		"\nfingerprint_override: " + strconv.Quote(f.fp) + "\ncompiler:\n  backend: sim\n  sim:\n    compile_time: 10ms\n" +
		"p2p:\n  enabled: false\nrollout:\n  trusted_keys: [" + strconv.Quote(kg.PublicKey) + "]\n  tags: [\"site=berlin\"]\n"
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	startDaemon(t, f, func(c *config.Config) { *c = cfg })
	cli := func(args ...string) (string, string, int) {
		return run(t, append([]string{"--config", cfgPath}, args...)...)
	}
	publish := func(version int, model string) int {
		t.Helper()
		_, errOut, code := cli("--json", "publish", "--key", key, "--name", "kiosk", "--version", strconv.Itoa(version),
			"--model", model, "--shape", "x=1,8", "--select", "tag:site=berlin", "--expires", "1h")
		if code != exitOK {
			t.Logf("publish version %d: exit %d: %s", version, code, errOut)
		}
		return code
	}
	waitReady := func(version uint64) api.RolloutStatus {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			out, errOut, code := cli("--json", "rollout", "status", "kiosk")
			var st api.RolloutStatus
			if code == exitOK && json.Unmarshal([]byte(out), &st) == nil && len(st.Peers) == 1 &&
				st.Peers[0].Version == version && st.Peers[0].State == "ready" {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("version %d not ready: exit %d %s %s", version, code, out, errOut)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	if code := publish(1, f.model); code != exitOK {
		t.Fatal("publish version 1 failed")
	}
	v1 := waitReady(1)
	if !v1.Peers[0].Self || v1.Summary.Ready != 1 {
		t.Errorf("status %+v", v1)
	}
	other := filepath.Join(f.dir, "other.xml")
	for name, body := range map[string]string{"other.xml": "<net name='other'/>", "other.bin": strings.Repeat("o", 3000)} {
		if err := os.WriteFile(filepath.Join(f.dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if code := publish(2, other); code != exitOK {
		t.Fatal("publish version 2 failed")
	}
	v2 := waitReady(2)
	if v2.ModelID == v1.ModelID {
		t.Fatal("version 2 has the model of version 1")
	}
	// Rollback: version 3 names the first model again.
	if code := publish(3, f.model); code != exitOK {
		t.Fatal("publish version 3 failed")
	}
	if v3 := waitReady(3); v3.ModelID != v1.ModelID || v3.Previous != 2 {
		t.Errorf("version 3: model %s (want %s), previous %d", v3.ModelID, v1.ModelID, v3.Previous)
	}
	out, _, code = cli("rollout", "ls")
	if code != exitOK || !strings.Contains(out, "kiosk") || !strings.Contains(out, "ready") {
		t.Errorf("rollout ls: exit %d:\n%s", code, out)
	}
	out, _, code = cli("rollout", "status", "kiosk")
	if code != exitOK || !strings.Contains(out, "kiosk version 3: 1 ready") || !strings.Contains(out, "(this host)") {
		t.Errorf("rollout status: exit %d:\n%s", code, out)
	}

	// What an operator can get wrong.
	if code := publish(2, other); code != exitRejected {
		t.Errorf("republishing an older version: exit %d, want %d", code, exitRejected)
	}
	if _, _, code := cli("rollout", "status", "nope"); code != exitNotFound {
		t.Errorf("status of an unknown rollout: exit %d, want %d", code, exitNotFound)
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := publish(4, f.model); code != exitUsage {
		t.Errorf("publish with a world-readable key: exit %d, want %d", code, exitUsage)
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	stranger := filepath.Join(f.dir, "stranger.key")
	if _, _, code := run(t, "keygen", "--out", stranger); code != exitOK {
		t.Fatal("keygen")
	}
	if _, errOut, code := cli("publish", "--key", stranger, "--name", "kiosk", "--version", "9", "--model", f.model); code != exitRejected ||
		!strings.Contains(errOut, "unknown keys") {
		t.Errorf("publish with an untrusted key: exit %d: %s", code, errOut)
	}
	if _, _, code := cli("publish", "--key", key, "--name", "Bad Name", "--version", "9", "--model", f.model); code != exitUsage {
		t.Errorf("publish with a bad name: exit %d, want %d", code, exitUsage)
	}
}
