//go:build unix

package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
)

// TestCacheLsPrune drives `cache ls` and `cache prune` without a daemon and through one: an entry of the
// application's build is kept, one of an older build is stale; --dry-run removes nothing; --json and the table
// say the same.
func TestCacheLsPrune(t *testing.T) {
	for _, mode := range []string{"local", "daemon"} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t)
			dir := filepath.Join(f.dir, "cache")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			blob := ovcachetest.Blob(ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4), 1000, 1)
			for name, build := range map[string]string{"11.blob": ovcachetest.Build, "22.blob": "2026.1.0-1-older"} {
				e := ovcachetest.Entry(ovcache.Header{Build: build, FileInfo: "0"}, false, blob)
				if err := os.WriteFile(filepath.Join(dir, name), e, 0o440); err != nil {
					t.Fatal(err)
				}
			}
			cfg := "runtime_dir: " + strconv.Quote(filepath.Join(f.dir, "run")) + "\novcache:\n  dirs:\n    - path: " +
				strconv.Quote(dir) + "\n      openvino_build: " + strconv.Quote(ovcachetest.Build) + "\n"
			if err := os.WriteFile(filepath.Join(f.dir, "cfg.yaml"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			// 11.blob was written by this agent from blob `fleetBlob`, which version 3 of rollout kiosk names
			// (the sharer's remembered state, as it writes it): its model is the rollout's.
			st, err := os.Stat(filepath.Join(dir, "11.blob"))
			if err != nil {
				t.Fatal(err)
			}
			fleetBlob := "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
			state, _ := json.Marshal(map[string]any{"populated": map[string]any{
				"11.blob": map[string]any{"blob": fleetBlob, "ino": st.Sys().(*syscall.Stat_t).Ino}}})
			stateDir := filepath.Join(f.dir, "data", "ovcache")
			if err := os.MkdirAll(stateDir, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(stateDir, "ovcache-"+hex.EncodeToString([]byte(dir))[:64]+".json"), state, 0o640); err != nil {
				t.Fatal(err)
			}
			writeRolloutHistory(t, filepath.Join(f.dir, "data"), fleetBlob)
			if mode == "daemon" {
				startDaemon(t, f, func(c *config.Config) {
					c.OVCache.Dirs = []config.CacheDir{{Path: dir, OpenVINOBuild: ovcachetest.Build}}
				})
			}
			cli := func(args ...string) string {
				t.Helper()
				out, errOut, code := run(t, f.args(args...)...)
				if code != 0 {
					t.Fatalf("%v: exit %d: %s%s", args, code, out, errOut)
				}
				return out
			}
			ls := func() []api.CacheEntry {
				var out []api.CacheEntry
				if err := json.Unmarshal([]byte(cli("--json", "cache", "ls")), &out); err != nil {
					t.Fatal(err)
				}
				return out
			}
			got := ls()
			if len(got) != 2 || got[0].Name != "11.blob" || got[0].Stale || got[0].Build != ovcachetest.Build ||
				got[1].Name != "22.blob" || !got[1].Stale || !strings.Contains(got[1].Reason, "this host runs") ||
				got[0].Size == 0 || got[0].LastUse.IsZero() || got[0].Blob != fleetBlob || got[0].Model != "rollout kiosk version 3" ||
				got[1].Blob != "" || got[1].Model != "" {
				t.Fatalf("cache ls: %+v", got)
			}
			if table := cli("cache", "ls"); !strings.Contains(table, "stale: ") || !strings.Contains(table, "22.blob") {
				t.Errorf("cache ls table:\n%s", table)
			}
			prune := func(args ...string) api.CachePruneResponse {
				var out api.CachePruneResponse
				if err := json.Unmarshal([]byte(cli(append([]string{"--json", "cache", "prune"}, args...)...)), &out); err != nil {
					t.Fatal(err)
				}
				return out
			}
			if r := prune("--dry-run"); !r.DryRun || len(r.Removed) != 1 || r.Removed[0].Name != "22.blob" || len(ls()) != 2 {
				t.Fatalf("prune --dry-run: %+v", r)
			}
			if r := prune(); r.DryRun || len(r.Removed) != 1 || r.FreedBytes != got[1].Size {
				t.Fatalf("prune: %+v", r)
			}
			if after := ls(); len(after) != 1 || after[0].Name != "11.blob" {
				t.Fatalf("after prune: %+v", after)
			}
		})
	}
}

// TestPublishCacheEntry: `publish --cache-entry` names an entry the daemon harvested from its shared cache
// directory; the rollout is accepted and prepared (the publisher indexes the entry once). An entry the daemon
// does not hold, or a file that is not an entry, is refused before anything is signed.
func TestPublishCacheEntry(t *testing.T) {
	f := newFixture(t)
	key := filepath.Join(f.dir, "operator.key")
	out, errOut, code := run(t, "--json", "keygen", "--out", key)
	var kg struct {
		PublicKey string `json:"public_key"`
	}
	if code != exitOK || json.Unmarshal([]byte(out), &kg) != nil {
		t.Fatalf("keygen: exit %d: %s%s", code, out, errOut)
	}
	dir, elsewhere := filepath.Join(f.dir, "cache"), filepath.Join(f.dir, "elsewhere")
	for _, d := range []string{dir, elsewhere} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(d string, seed byte) string {
		e := ovcachetest.Entry(ovcache.Header{Build: ovcachetest.Build, FileInfo: "0"}, false,
			ovcachetest.Blob(ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4), 5000, seed))
		p := filepath.Join(d, strconv.Itoa(int(seed))+"1.blob")
		if err := os.WriteFile(p, e, 0o440); err != nil {
			t.Fatal(err)
		}
		return p
	}
	harvested, foreign := entry(dir, 1), entry(elsewhere, 2)
	notEntry := filepath.Join(elsewhere, "31.blob")
	if err := os.WriteFile(notEntry, []byte("<net/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, f, func(c *config.Config) {
		c.Rollout.TrustedKeys = []string{kg.PublicKey}
		c.OVCache.Dirs = []config.CacheDir{{Path: dir, OpenVINOBuild: ovcachetest.Build}}
	})
	cli := func(args ...string) (string, string, int) { return run(t, f.args(args...)...) }
	// The daemon harvests the entry (two looks a second apart).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _, _ := cli("--json", "ls")
		var blobs []api.StoredBlob
		_ = json.Unmarshal([]byte(out), &blobs)
		if slices.ContainsFunc(blobs, func(b api.StoredBlob) bool {
			return len(b.Records) > 0 && b.Records[0].Kind == ovcache.RecordKind
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry not harvested: %s", out)
		}
	}
	publish := func(version int, entries ...string) (string, int) {
		args := []string{"--json", "publish", "--key", key, "--name", "kiosk", "--version", strconv.Itoa(version),
			"--model", f.model, "--shape", "x=1,8", "--expires", "1h"}
		for _, e := range entries {
			args = append(args, "--cache-entry", e)
		}
		_, errOut, code := cli(args...)
		return errOut, code
	}
	for _, bad := range []struct{ path, msg string }{{foreign, "does not hold"}, {notEntry, "header"}} {
		if errOut, code := publish(1, bad.path); code != exitUsage || !strings.Contains(errOut, bad.msg) {
			t.Errorf("publish --cache-entry %s: exit %d, %s; want usage error %q", bad.path, code, errOut, bad.msg)
		}
	}
	if errOut, code := publish(1, harvested); code != exitOK {
		t.Fatalf("publish: exit %d: %s", code, errOut)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, _, code := cli("--json", "rollout", "status", "kiosk")
		var st api.RolloutStatus
		if code == exitOK && json.Unmarshal([]byte(out), &st) == nil && len(st.Peers) == 1 && st.Peers[0].State == "ready" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout not ready: %s", out)
		}
	}
}

// TestCacheBuildFromProbe: a cache directory without openvino_build starts from the build string the OpenVINO
// helper's probe reports (design 5.5, 10.2): an entry of that build is not stale for its build, one of another
// build is; a configured build wins over the probe.
func TestCacheBuildFromProbe(t *testing.T) {
	if _, err := exec.LookPath(compile.DefaultPython); err != nil {
		t.Skip("python3 not installed")
	}
	const probed = "2026.1.0-20500-probed-releases/2026/1"
	fake, err := filepath.Abs(filepath.Join("..", "..", "compile", "testdata", "fakeov"))
	if err != nil {
		t.Fatal(err)
	}
	ov, err := compile.NewOpenVINO("", t.TempDir(), []string{"PYTHONPATH=" + fake, "FAKEOV_VERSION=" + probed})
	if err != nil {
		t.Fatal(err)
	}
	store, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	fp := compat.Fingerprint{OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64"}
	ag, err := agent.New(agent.Options{Store: store, Host: fp, Producer: "test", WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	blob := ovcachetest.Blob(ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4), 1000, 1)
	for name, build := range map[string]string{"1.blob": probed, "2.blob": "2026.1.0-1-other"} {
		e := ovcachetest.Entry(ovcache.Header{Build: build, FileInfo: "0"}, false, blob)
		if err := os.WriteFile(filepath.Join(dir, name), e, 0o440); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		configured string
		stale      map[string]bool
	}{
		{"", map[string]bool{"1.blob": false, "2.blob": true}},
		{"2026.1.0-1-other", map[string]bool{"1.blob": true, "2.blob": false}},
	} {
		cfg := config.Default()
		cfg.DataDir = t.TempDir()
		cfg.OVCache.Dirs = []config.CacheDir{{Path: dir, OpenVINOBuild: tc.configured}}
		s, err := newOVCacheSharer(context.Background(), cfg, ag, ov, nil, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		es, err := s.List(context.Background())
		if err != nil || len(es) != 2 {
			t.Fatalf("List = %+v, %v", es, err)
		}
		for _, e := range es {
			if e.Stale != tc.stale[e.Name] {
				t.Errorf("configured %q: %s stale %v (%s), want %v", tc.configured, e.Name, e.Stale, e.Reason, tc.stale[e.Name])
			}
		}
	}
}
