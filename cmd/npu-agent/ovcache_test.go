package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/compat"
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
				got[0].Size == 0 || got[0].LastUse.IsZero() {
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
