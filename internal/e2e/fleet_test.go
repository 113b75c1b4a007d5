//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

// labPrefix names this package's labs; TestMain removes those of killed runs.
const labPrefix = "e2e"

// npuAgent is the binary TestMain builds; empty when the lab tests cannot run here.
var npuAgent string

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if testing.Short() || labSkipReason() != "" {
		return m.Run() // the lab tests skip or fail with the reason
	}
	dir, err := os.MkdirTemp("", "npu-agent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if npuAgent, err = Build(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := netlab.CleanupStale(labPrefix); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: removing stale labs:", err)
		return 1
	}
	return m.Run()
}

// labSkipReason says why namespace labs cannot be built here, or "".
func labSkipReason() string {
	if err := netlab.Available(); err != nil {
		return err.Error()
	}
	return ""
}

// requireLab skips the test where labs cannot be built, except in CI (CI set), where that is a failure: CI runs
// as root precisely so that these tests run.
func requireLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end fleet test: skipped in -short mode")
	}
	if reason := labSkipReason(); reason != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but the end-to-end fleet tests cannot run: %s", reason)
		}
		t.Skipf("end-to-end fleet test needs network namespaces: %s", reason)
	}
	if npuAgent == "" {
		t.Fatal("npu-agent binary was not built")
	}
}

// newLab builds a lab of cfg (under the tests' prefix) that is closed when the test ends.
func newLab(ctx context.Context, t *testing.T, cfg netlab.Config) *netlab.Lab {
	t.Helper()
	cfg.Prefix = labPrefix
	lab, err := netlab.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("closing lab: %v", err)
		}
	})
	return lab
}

// The two compatibility classes of the test fleets. Class A mixes firmware MI 11.4 and 11.6 with two driver
// versions (one class: only the MI major must be equal), so only an 11.4 host's blob serves the whole class;
// class B is another NPU architecture.
var (
	classA114 = LunarLake
	classA116 = func() Fingerprint { f := LunarLake; f.FirmwareMI, f.DriverVersion = "11.6", "1750000000"; return f }()
	classB    = func() Fingerprint { f := LunarLake; f.Arch = "5010"; return f }()
)

// member is one host of a test fleet.
type member struct {
	class string
	fp    Fingerprint
}

// testFleet is a set of daemons on one lab, all with the same model to fetch.
type testFleet struct {
	t       *testing.T
	lab     *netlab.Lab
	members []member
	daemons []*Daemon
	model   string
	killed  map[int]bool

	dir      string // the test's files: fleet key, models, one directory per daemon
	fleetKey string
	o        fleetOptions
}

const testShape = "x=1,8"

// fleetOptions are what the tests vary.
type fleetOptions struct {
	compileTime time.Duration
	blobSize    int64
	leaseTTL    time.Duration
	trustedKeys []string // operator keys the daemons follow rollouts of
	extraHosts  int      // lab hosts left free for daemons started later (startMember) and helpers
	rate        string   // every host's link rate (tc syntax); "" unshaped
	// seedCompileTime, if set, is host 0's compile time instead of compileTime: the fault tests let the seed
	// compile the blob quickly and give every other host a compile too long to finish, so they must fetch.
	seedCompileTime time.Duration
	// configure, if set, adjusts host i's config before its daemon starts.
	configure func(i int, c *Config)
}

// standardMembers: 7 hosts, classes interleaved over the lab.
var standardMembers = []member{
	{"A", classA114}, {"B", classB}, {"A", classA116}, {"B", classB}, {"A", classA114}, {"B", classB}, {"A", classA116},
}

// startFleet builds a lab with one daemon per member (and o.extraHosts hosts left free for startMember), waits
// until every daemon's API answers and every daemon sees every other as a connected peer. Everything is stopped
// and removed when the test ends; if the test failed, every daemon's log is printed.
func startFleet(ctx context.Context, t *testing.T, members []member, o fleetOptions) *testFleet {
	t.Helper()
	lab := newLab(ctx, t, netlab.Config{Hosts: len(members) + o.extraHosts, Rate: o.rate})
	dir := t.TempDir()
	key := filepath.Join(dir, "fleet.key")
	if err := WriteFleetKey(key); err != nil {
		t.Fatal(err)
	}
	model, err := WriteModel(dir, "e2e-"+strings.ToLower(t.Name()), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	f := &testFleet{t: t, lab: lab, model: model, killed: map[int]bool{}, dir: dir, fleetKey: key, o: o}
	t.Cleanup(f.stop)
	for _, m := range members {
		f.startMember(ctx, m)
	}
	for _, d := range f.daemons {
		if err := d.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range f.daemons {
		if err := d.WaitPeers(ctx, len(members)-1); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// startMember starts a daemon for m on the next free host of the lab and returns it; it does not wait for it.
func (f *testFleet) startMember(ctx context.Context, m member) *Daemon {
	f.t.Helper()
	i := len(f.daemons)
	ct := f.o.compileTime
	if i == 0 && f.o.seedCompileTime > 0 {
		ct = f.o.seedCompileTime
	}
	cfg := Config{
		Binary: npuAgent, Dir: filepath.Join(f.dir, fmt.Sprintf("h%d", i)), Fingerprint: m.fp,
		CompileTime: ct, BlobSize: f.o.blobSize, P2P: true, FleetKeyFile: f.fleetKey,
		LeaseTTL: f.o.leaseTTL, Deadline: 5 * time.Minute, TrustedKeys: f.o.trustedKeys,
	}
	if f.o.configure != nil {
		f.o.configure(i, &cfg)
	}
	d, err := Start(ctx, f.lab, i, cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.members = append(f.members, m)
	f.daemons = append(f.daemons, d)
	return d
}

// stop stops every daemon that was not killed, checking that each shuts down cleanly, and prints their logs if
// the test failed.
func (f *testFleet) stop() {
	var wg sync.WaitGroup
	errs := make([]error, len(f.daemons))
	for i, d := range f.daemons {
		if f.killed[i] {
			continue
		}
		wg.Go(func() { errs[i] = d.Stop() })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			f.t.Error(err)
		}
	}
	if f.t.Failed() {
		for i, d := range f.daemons {
			f.t.Logf("=== log of %s (class %s, killed %t):\n%s", d.Name, f.members[i].class, f.killed[i], d.LogTail())
		}
	}
}

// kill SIGKILLs daemon i.
func (f *testFleet) kill(i int) {
	f.killed[i] = true
	if err := f.daemons[i].Kill(); err != nil {
		f.t.Error(err)
	}
}

// outcome is one host's fetch.
type outcome struct {
	res FetchResult
	err error
}

// fetchAll starts `npu-agent fetch` on every daemon at the same moment (the goroutines are released together by
// closing a channel) and returns a function that waits for all of them.
func (f *testFleet) fetchAll(ctx context.Context) (wait func() []outcome) {
	out := make([]outcome, len(f.daemons))
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i, d := range f.daemons {
		wg.Go(func() {
			<-release
			out[i].res, out[i].err = d.Fetch(ctx, f.model, testShape)
		})
	}
	close(release)
	return func() []outcome {
		wg.Wait()
		return out
	}
}

// checkServed checks the fetches of every host not killed: each succeeded, its file hashes to the answered
// sha256, each class has exactly one "compiled" and otherwise "peer", every host of a class has the same blob,
// and the classes' blobs differ. It returns the compiling host of each class that compiled exactly once.
func (f *testFleet) checkServed(out []outcome) map[string]int {
	t := f.t
	t.Helper()
	compiler := map[string]int{}
	compiled := map[string][]string{}
	sums := map[string]string{}
	for i, o := range out {
		if f.killed[i] {
			continue
		}
		name, class := f.daemons[i].Name, f.members[i].class
		if o.err != nil {
			t.Errorf("%s (class %s): %v", name, class, o.err)
			continue
		}
		switch o.res.Source {
		case "compiled":
			compiled[class] = append(compiled[class], name)
			compiler[class] = i
		case "peer":
		default:
			t.Errorf("%s (class %s): source %q, want compiled or peer", name, class, o.res.Source)
		}
		got, err := fileSHA256(o.res.Path)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if got != o.res.SHA256 {
			t.Errorf("%s: %s hashes to %s, the fetch answered %s", name, o.res.Path, got, o.res.SHA256)
		}
		if want, ok := sums[class]; !ok {
			sums[class] = o.res.SHA256
		} else if o.res.SHA256 != want {
			t.Errorf("%s (class %s): blob %s differs from its class's %s", name, class, o.res.SHA256, want)
		}
	}
	for _, class := range []string{"A", "B"} {
		if n := len(compiled[class]); n != 1 {
			t.Errorf("class %s: %d hosts compiled (%s), want exactly one", class, n, strings.Join(compiled[class], ", "))
			delete(compiler, class)
		}
	}
	if sums["A"] != "" && sums["A"] == sums["B"] {
		t.Errorf("classes A and B got the same blob %s", sums["A"])
	}
	return compiler
}

// checkCompileCounts cross-checks the fetch answers with each surviving daemon's own account: the compiles it
// counts in /metrics and the "compiled" lines it logged.
func (f *testFleet) checkCompileCounts(ctx context.Context, compiler map[string]int) {
	t := f.t
	t.Helper()
	for i, d := range f.daemons {
		if f.killed[i] {
			continue
		}
		c, ok := compiler[f.members[i].class]
		if !ok {
			continue // checkServed reported the class already
		}
		want := 0.0
		if c == i {
			want = 1
		}
		got, err := d.Metric(ctx, `npu_agent_compiles_total{result="ok"}`)
		if err != nil {
			t.Error(err)
		} else if got != want {
			t.Errorf("%s: npu_agent_compiles_total{result=\"ok\"} = %v, want %v", d.Name, got, want)
		}
		n, err := d.CountLog(LogMsg("compiled"))
		if err != nil {
			t.Error(err)
		} else if float64(n) != want {
			t.Errorf("%s: %d \"compiled\" log lines, want %v", d.Name, n, want)
		}
	}
}

func fileSHA256(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// TestFleetCompilesOncePerClass: seven daemons in two compatibility classes ask for the same model at the same
// moment; each class compiles exactly once and every other host fetches that blob from a peer.
func TestFleetCompilesOncePerClass(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	f := startFleet(ctx, t, standardMembers, fleetOptions{compileTime: 2500 * time.Millisecond, blobSize: 48 << 20})

	start := time.Now()
	out := f.fetchAll(ctx)()
	t.Logf("all fetches returned after %s", time.Since(start).Round(time.Millisecond))
	if ctx.Err() != nil {
		t.Fatalf("fetches did not finish in time: %v", ctx.Err())
	}
	compiler := f.checkServed(out)
	if i, ok := compiler["A"]; ok && f.members[i].fp.FirmwareMI != "11.4" {
		t.Errorf("class A was compiled on %s (MI %s), whose blob the MI 11.4 hosts cannot load", f.daemons[i].Name, f.members[i].fp.FirmwareMI)
	}
	f.checkCompileCounts(ctx, compiler)
}

// TestFleetCompilerKilled: the same fleet with a long compile; as soon as each class's elected compiler logs that
// it is compiling, its daemon is SIGKILLed. Every surviving host must still be served: one survivor per class takes
// over the compile and the rest fetch its blob.
func TestFleetCompilerKilled(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	f := startFleet(ctx, t, standardMembers, fleetOptions{compileTime: 8 * time.Second, blobSize: 32 << 20, leaseTTL: 3 * time.Second})

	wait := f.fetchAll(ctx)
	first := map[string]int{}
	for _, class := range []string{"A", "B"} {
		i, err := f.firstCompiling(ctx, class)
		if err != nil {
			t.Error(err)
			continue
		}
		first[class] = i
		t.Logf("class %s: %s is compiling; killing it", class, f.daemons[i].Name)
		f.kill(i)
	}
	out := wait()
	if ctx.Err() != nil {
		t.Fatalf("fetches did not finish in time: %v", ctx.Err())
	}
	for class, i := range first {
		if out[i].err == nil {
			t.Errorf("class %s: the fetch on killed %s succeeded (%s); it was killed too late to test a takeover", class, f.daemons[i].Name, out[i].res.Source)
		}
	}
	compiler := f.checkServed(out)
	f.checkCompileCounts(ctx, compiler)
}

// firstCompiling waits until a daemon of class logs that it is compiling and returns it.
func (f *testFleet) firstCompiling(ctx context.Context, class string) (int, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		for i, d := range f.daemons {
			if f.members[i].class != class || f.killed[i] {
				continue
			}
			if n, err := d.CountLog(LogMsg("compiling")); err != nil {
				return -1, err
			} else if n > 0 {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("class %s: no daemon logged %q: %w", class, "compiling", ctx.Err())
		case <-tick.C:
		}
	}
}
