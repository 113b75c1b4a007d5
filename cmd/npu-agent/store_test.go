package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

// writeRolloutHistory records, as rollout/engine does, that version 3 of rollout kiosk needs blob.
func writeRolloutHistory(t *testing.T, dataDir, blob string) {
	t.Helper()
	m := &rollout.Manifest{Name: "kiosk", Version: 3, Created: time.Unix(1e9, 0).UTC(), Expires: time.Unix(2e9, 0).UTC(),
		Model: rollout.SourceModel{ID: "bafkmodel", Files: []rollout.SourceFile{
			{Role: compile.RoleXML, Name: "m.xml", Size: 6, SHA256: strings.Repeat("a", 64), Blob: blob}}},
		Profiles: []compile.Profile{{Device: "NPU"}}}
	b, err := json.Marshal(map[string]any{"versions": []any{map[string]any{"manifest": m}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(dataDir, "rollouts", "resolved")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kiosk"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStoreMaintenance drives ls, gc, pin, unpin, rm and verify without a daemon and through one (the daemon
// holds the store's lock, so the second mode works only through the API): gc removes nothing without a quota or
// target, plans with --dry-run, never removes pinned blobs; unpinning a rollout's blob needs --force.
func TestStoreMaintenance(t *testing.T) {
	t.Setenv("NPU_AGENT_COMPILER_SIM_COMPILE_TIME", "1ms")
	for _, mode := range []string{"local", "daemon"} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t)
			if mode == "daemon" {
				startDaemon(t, f, nil)
			}
			// cli returns stdout with --json, else stdout and stderr.
			cli := func(wantCode int, args ...string) string {
				t.Helper()
				out, errOut, code := run(t, f.args(args...)...)
				if code != wantCode {
					t.Fatalf("%v: exit %d, want %d: %s%s", args, code, wantCode, out, errOut)
				}
				if args[0] == "--json" {
					return out
				}
				return out + errOut
			}
			var cids []string
			for _, shape := range []string{"x=1,8", "x=1,16"} {
				var r fetchResult
				if err := json.Unmarshal([]byte(cli(0, "--json", "fetch", "--model", f.model, "--shape", shape)), &r); err != nil {
					t.Fatal(err)
				}
				cids = append(cids, r.CID)
			}
			keep, drop := cids[0], cids[1]
			writeRolloutHistory(t, filepath.Join(f.dir, "data"), keep)
			ls := func() []api.StoredBlob {
				var out []api.StoredBlob
				if err := json.Unmarshal([]byte(cli(0, "--json", "ls")), &out); err != nil {
					t.Fatal(err)
				}
				return out
			}
			gc := func(args ...string) api.GCResponse {
				var out api.GCResponse
				if err := json.Unmarshal([]byte(cli(0, append([]string{"--json", "gc"}, args...)...)), &out); err != nil {
					t.Fatal(err)
				}
				return out
			}

			cli(0, "pin", keep)
			if res := gc(); len(res.Removed) != 0 || res.Target != nil || !strings.Contains(res.Note, "no quota") {
				t.Fatalf("gc without quota or target: %+v", res)
			}
			if res := gc("--dry-run", "--target", "0"); !slices.Equal(res.Removed, []string{drop}) || !res.DryRun {
				t.Fatalf("gc --dry-run --target 0: %+v, want only %s", res, drop)
			}
			if n := len(ls()); n != 2 {
				t.Fatalf("after the dry run %d blobs, want 2", n)
			}
			if res := gc("--target", "0"); !slices.Equal(res.Removed, []string{drop}) || res.Kept != 1 {
				t.Fatalf("gc --target 0: %+v", res)
			}
			blobs := ls()
			if len(blobs) != 1 || blobs[0].CID != keep || !blobs[0].Pinned || !slices.Equal(blobs[0].PinnedBy, []string{"kiosk version 3"}) {
				t.Fatalf("ls after gc: %+v", blobs)
			}
			if out := cli(exitError, "unpin", keep); !strings.Contains(out, "kiosk version 3") || !strings.Contains(out, "--force") {
				t.Fatalf("unpin of a rollout's blob: %s", out)
			}
			cli(exitError, "rm", keep) // still pinned
			if out := cli(0, "unpin", "--force", keep); !strings.Contains(out, "warning") {
				t.Fatalf("unpin --force: %s", out)
			}
			cli(0, "rm", keep)
			if out := cli(0, "verify"); !strings.Contains(out, "verified 0 blobs") {
				t.Fatalf("verify: %s", out)
			}
		})
	}
}

// TestInspectIncompatible: inspect exits 4 for a blob this host cannot load, and judges with the running
// daemon's fingerprint when one runs.
func TestInspectIncompatible(t *testing.T) {
	t.Setenv("NPU_AGENT_COMPILER_SIM_COMPILE_TIME", "1ms")
	f := newFixture(t)
	blob := filepath.Join(f.dir, "out.blob")
	if _, errOut, code := run(t, f.args("fetch", "--model", f.model, "--out", blob)...); code != 0 {
		t.Fatalf("fetch: %d %s", code, errOut)
	}
	other := filepath.Join(f.dir, "other.yaml")
	if err := os.WriteFile(other, []byte(strings.Replace(fpA, `arch: "4000"`, `arch: "5010"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", filepath.Join(f.dir, "cfg.yaml"), "--data-dir", filepath.Join(f.dir, "data"), "--fingerprint-override", other, "inspect", blob}
	if out, errOut, code := run(t, args...); code != exitIncompatible || !strings.Contains(out, "incompatible") {
		t.Fatalf("inspect on another arch: exit %d: %s %s", code, out, errOut)
	}
	startDaemon(t, f, nil) // its fingerprint is fpA's
	if out, errOut, code := run(t, args...); code != 0 || !strings.Contains(out, "compatible") {
		t.Fatalf("inspect through the daemon: exit %d: %s %s", code, out, errOut)
	}
}

// TestStoreOwnerOnly: without a daemon, a store command refuses a store that belongs to another user (it would
// leave files that user's daemon cannot open) and says how to do it instead.
func TestStoreOwnerOnly(t *testing.T) {
	f := newFixture(t)
	data := filepath.Join(f.dir, "data")
	if os.Geteuid() == 0 {
		if err := os.MkdirAll(data, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(data, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	} else {
		data = "/" // root's
	}
	for _, cmd := range [][]string{{"ls"}, {"gc", "--target", "0"}, {"verify"}, {"fetch", "--model", f.model}} {
		args := append([]string{"--config", filepath.Join(f.dir, "cfg.yaml"), "--data-dir", data, "--compiler", "sim",
			"--fingerprint-override", f.fp}, cmd...)
		_, errOut, code := run(t, args...)
		if code != exitError || !strings.Contains(errOut, "belongs to user") || !strings.Contains(errOut, "systemctl start npu-agent") {
			t.Errorf("%v: exit %d: %s", cmd, code, errOut)
		}
	}
	if ents, _ := os.ReadDir(data); data != "/" && len(ents) != 0 {
		t.Errorf("refused commands left %d entries in the data directory", len(ents))
	}
}
