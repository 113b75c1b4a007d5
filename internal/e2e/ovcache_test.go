//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
)

// The issue 14 end-to-end test: real daemons in network namespaces share an application's OpenVINO CACHE_DIR.
// The applications are ovapp (ovcache/ovcachetest/cmd/ovapp) processes, which behave as OpenVINO's cache does.

const (
	otherBuild = "2026.1.0-20100-fedcba98765-releases/2026/1" // the same release, another build
	// ovPoll paces the test's looks at cache directories: the harvest-to-last-peer figure is this precise.
	ovPoll = 10 * time.Millisecond
)

// ovHost is one host of the test: its NPU, its application's build and caching properties.
type ovHost struct {
	name  string
	fp    Fingerprint
	build string
}

// ovapp runs the stand-in application in host i with CACHE_DIR dir and returns what it did.
func (f *testFleet) ovapp(ctx context.Context, bin string, i int, dir string, h ovHost, args ...string) ovcachetest.Result {
	f.t.Helper()
	cmd := f.lab.Command(ctx, i, bin, append([]string{"-cache-dir", dir, "-build", h.build,
		"-model", "e2e model graph and weights", "-prop", "DEVICE_ARCHITECTURE=" + h.fp.Arch,
		"-prop", "NPU_DRIVER_VERSION=" + h.fp.DriverVersion, "-compile-time", "200ms", "-payload", "2000000"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r ovcachetest.Result
	if err == nil {
		err = json.Unmarshal(out, &r)
	}
	if err != nil {
		f.t.Fatalf("ovapp on %s: %v: %s%s", h.name, err, out, stderr.Bytes())
	}
	return r
}

// entries lists the cache entries in dir (names ovcache accepts).
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		if ovcache.ValidName(de.Name()) {
			names = append(names, de.Name())
		}
	}
	return names
}

// logTime is the time= of the first line of d's log that match accepts.
func logTime(d *Daemon, match func(string) bool) (time.Time, error) {
	b, err := readBounded(d.LogPath, maxScan)
	if err != nil {
		return time.Time{}, err
	}
	for line := range strings.Lines(string(b)) {
		if !match(line) {
			continue
		}
		v, ok := strings.CutPrefix(strings.Fields(line)[0], "time=")
		if !ok {
			return time.Time{}, fmt.Errorf("%s: no time in %q", d.Name, line)
		}
		return time.Parse(time.RFC3339Nano, v)
	}
	return time.Time{}, fmt.Errorf("%s: no such log line", d.Name)
}

func allOf(ms ...func(string) bool) func(string) bool {
	return func(l string) bool {
		for _, m := range ms {
			if !m(l) {
				return false
			}
		}
		return true
	}
}

func contains(s string) func(string) bool {
	return func(l string) bool { return strings.Contains(l, s) }
}

// ovMetric is a counter of d's ovcache metrics; a series never incremented is 0.
func ovMetric(ctx context.Context, t *testing.T, d *Daemon, event string) float64 {
	t.Helper()
	v, err := d.Metric(ctx, `npu_agent_ovcache_entries_total{event="`+event+`"}`)
	if errors.Is(err, ErrMetric) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestOVCacheFleet: host A's application compiles with CACHE_DIR set; within seconds B and C (same NPU, same
// OpenVINO build) hold the identical file under the same name and their applications start with a cache hit;
// D (another NPU architecture) and E (another OpenVINO build) get nothing, and their own entries reach nobody;
// an entry C's application rejects is removed and never written again on C.
func TestOVCacheFleet(t *testing.T) {
	requireLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	app := filepath.Join(t.TempDir(), "ovapp")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", app, "github.com/npu-agent/npu-agent/ovcache/ovcachetest/cmd/ovapp").CombinedOutput(); err != nil {
		t.Fatalf("go build ovapp: %v: %s", err, out)
	}
	hosts := []ovHost{
		{"A", classA114, ovcachetest.Build}, {"B", classA114, ovcachetest.Build}, {"C", classA114, ovcachetest.Build},
		{"D", classB, ovcachetest.Build}, {"E", classA114, otherBuild},
	}
	base := t.TempDir()
	dirs := make([]string, len(hosts))
	members := make([]member, len(hosts))
	for i, h := range hosts {
		dirs[i] = filepath.Join(base, "cache-"+h.name)
		if err := os.Mkdir(dirs[i], 0o755); err != nil {
			t.Fatal(err)
		}
		members[i] = member{h.name, h.fp}
	}
	f := startFleet(ctx, t, members, fleetOptions{compileTime: time.Second, blobSize: 1 << 20,
		configure: func(i int, c *Config) { c.OVCacheDirs = []OVCacheDir{{Path: dirs[i], Build: hosts[i].build}} }})
	a, c := f.daemons[0], f.daemons[2]

	// A compiles; B and C receive its entry.
	r := f.ovapp(ctx, app, 0, dirs[0], hosts[0])
	if !r.Compiled || r.Hit {
		t.Fatalf("A's application: %+v, want a compile", r)
	}
	written := time.Now()
	name := r.Name
	want, err := os.ReadFile(filepath.Join(dirs[0], name))
	if err != nil {
		t.Fatal(err)
	}
	present := map[int]time.Time{}
	for len(present) < 2 && ctx.Err() == nil {
		for _, i := range []int{1, 2} {
			if _, ok := present[i]; !ok {
				if _, err := os.Lstat(filepath.Join(dirs[i], name)); err == nil {
					present[i] = time.Now()
				}
			}
		}
		time.Sleep(ovPoll)
	}
	if ctx.Err() != nil {
		t.Fatalf("entry %s reached only %v", name, present)
	}
	last := present[1]
	if present[2].After(last) {
		last = present[2]
	}
	harvested, err := logTime(a, allOf(LogMsg("harvested a cache entry"), contains("entry="+name)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ovcache-figures entry_bytes=%d write_to_harvest=%v harvest_to_last_peer=%v write_to_last_peer=%v",
		len(want), harvested.Sub(written).Round(time.Millisecond), last.Sub(harvested).Round(time.Millisecond),
		last.Sub(written).Round(time.Millisecond))
	if d := last.Sub(harvested); d > 10*time.Second {
		t.Errorf("harvest on A to the entry on the last peer took %v, want seconds", d)
	}
	for _, i := range []int{1, 2} {
		p := filepath.Join(dirs[i], name)
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: entry %s differs from A's (%d bytes, %v)", hosts[i].name, name, len(got), err)
		}
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o440 {
			t.Errorf("%s: entry %v, %v; want mode 0440", hosts[i].name, st, err)
		}
	}

	// B's application starts with a cache hit; C's cannot import the entry: it removes it and compiles its own.
	if r := f.ovapp(ctx, app, 1, dirs[1], hosts[1]); !r.Hit || r.Name != name {
		t.Errorf("B's application: %+v, want a hit on %s", r, name)
	}
	if r := f.ovapp(ctx, app, 2, dirs[2], hosts[2], "-import-fails", "-seed", "7"); !r.Removed || !r.Compiled || r.Name != name {
		t.Errorf("C's application: %+v, want %s removed and compiled", r, name)
	}
	if err := c.WaitLog(ctx, "the rejection", allOf(LogMsg("the application removed an entry written here; not writing it again"), contains("entry="+name))); err != nil {
		t.Fatal(err)
	}
	own, err := os.ReadFile(filepath.Join(dirs[2], name))
	if err != nil || bytes.Equal(own, want) {
		t.Fatalf("C: %s should be its application's own entry (%v)", name, err)
	}
	// C's own entry is harvested; then the user clears it: A's entry must not come back.
	if err := c.WaitLog(ctx, "C's own entry harvested", allOf(LogMsg("harvested a cache entry"), contains("entry="+name))); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dirs[2], name)); err != nil {
		t.Fatal(err)
	}

	// D and E compile their own (other names: other NPU, other build); nobody else gets them.
	for _, i := range []int{3, 4} {
		if r := f.ovapp(ctx, app, i, dirs[i], hosts[i], "-seed", fmt.Sprint(i)); !r.Compiled || r.Name == name {
			t.Errorf("%s's application: %+v, want a compile under another name", hosts[i].name, r)
		}
	}
	for _, i := range []int{3, 4} {
		if err := f.daemons[i].WaitLog(ctx, "its entry harvested", LogMsg("harvested a cache entry")); err != nil {
			t.Fatal(err)
		}
	}
	// Several populate passes (one a second) for anything wrong to show.
	time.Sleep(4 * time.Second)
	for i, h := range hosts {
		got := entries(t, dirs[i])
		var wantNames []string
		switch h.name {
		case "A", "B":
			wantNames = []string{name}
		case "C":
			wantNames = nil // rejected, then cleared by the user: never written again
		default:
			wantNames = got
			if len(got) != 1 || got[0] == name {
				t.Errorf("%s holds %v, want only its own entry", h.name, got)
			}
		}
		if !slices.Equal(got, wantNames) {
			t.Errorf("%s holds %v, want %v", h.name, got, wantNames)
		}
		populated, rejected := ovMetric(ctx, t, f.daemons[i], "populated"), ovMetric(ctx, t, f.daemons[i], "rejected")
		wantPop, wantRej := 0.0, 0.0
		switch h.name {
		case "B":
			wantPop = 1
		case "C":
			wantPop, wantRej = 1, 1
		}
		if populated != wantPop || rejected != wantRej {
			t.Errorf("%s: populated %v, rejected %v; want %v, %v", h.name, populated, rejected, wantPop, wantRej)
		}
	}
}
