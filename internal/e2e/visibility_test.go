//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
)

// TestFleetWaitVisible: two daemons of one class see each other's hostname and version in `peers`, then fetch the
// same blob at once. One compiles; the other waits for it and fetches it. The waiter's `fetch --json` prints its
// job as JSON lines on stderr (waiting for the compiler, named by ID and hostname, then fetching),
// each daemon logs its single-flight decision (compiling here; waiting for peer X's compile, once; waited for it;
// fetched from peers),
// and the metrics count it: a fleet wait and the fetched chunks on the waiter, the served chunks on the compiler.
func TestFleetWaitVisible(t *testing.T) {
	requireLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startPair(ctx, t, pairOptions{compileTime: 2 * time.Second, window: 300 * time.Millisecond, noSeed: true})
	// Each learns the other's member record (hostname and npu-agent version) before the fetches, so the waiter
	// names its compiler by hostname.
	statuses := make([]api.Status, 2)
	for i, d := range []*Daemon{p.v, p.h} {
		var err error
		if statuses[i], err = d.API().Status(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range []*Daemon{p.v, p.h} {
		other := statuses[1-i]
		cli := &storeCLI{t: t, ctx: ctx, bin: d.bin, config: d.ConfigPath}
		var peers []api.Peer
		for end := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			cli.json(0, &peers, "peers")
			if len(peers) == 1 && peers[0].ID == other.PeerID && peers[0].Hostname == other.Hostname &&
				peers[0].Version == other.Version {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("%s: peers --json %+v, want %s with hostname %q and version %q", d.Name, peers, other.PeerID,
					other.Hostname, other.Version)
			}
		}
		cmd := d.command(ctx, "--config", d.ConfigPath, "peers")
		cmd.Env = daemonEnv()
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "VERSION") || !strings.Contains(string(out), " "+other.Version+" ") {
			t.Errorf("%s: peers table %q (%v) lacks the VERSION column with %q", d.Name, out, err, other.Version)
		}
	}

	type result struct {
		res    FetchResult
		jobs   []api.Job
		stderr string
	}
	results := make([]chan result, 2)
	for i, d := range []*Daemon{p.v, p.h} {
		results[i] = make(chan result, 1)
		go func() {
			cli := &storeCLI{t: t, ctx: ctx, bin: d.bin, config: d.ConfigPath}
			out, errOut := cli.runNoFail("fetch", "--model", p.model, "--shape", testShape)
			var r result
			r.stderr = errOut
			_ = json.Unmarshal([]byte(out), &r.res)
			sc := bufio.NewScanner(strings.NewReader(errOut))
			for sc.Scan() {
				var j api.Job
				if json.Unmarshal(sc.Bytes(), &j) == nil && j.Kind != "" {
					r.jobs = append(r.jobs, j)
				}
			}
			results[i] <- r
		}()
	}
	got := []result{<-results[0], <-results[1]}
	compiler, waiter := 0, 1
	if got[1].res.Source == "compiled" {
		compiler, waiter = 1, 0
	}
	daemons := []*Daemon{p.v, p.h}
	if got[compiler].res.Source != "compiled" || got[waiter].res.Source != "peer" || got[waiter].res.SHA256 != got[compiler].res.SHA256 {
		t.Fatalf("fetches: %+v (stderr %s) and %+v (stderr %s), want one compiled, one from the peer",
			got[0].res, got[0].stderr, got[1].res, got[1].stderr)
	}
	st, err := daemons[compiler].API().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	compilerID := st.PeerID
	compilerHost := st.Hostname

	chunks := float64((got[compiler].res.Size + blobstore.ChunkSize - 1) / blobstore.ChunkSize)
	// The waiter's progress: a wait job naming the compiler (its lease is heard long before its 2 s compile
	// ends; status is polled every 500 ms), then a fetch job from the compiler with chunk counts, receiving from
	// at most the one other daemon.
	var sawWait, sawFetch bool
	for _, j := range got[waiter].jobs {
		sawWait = sawWait || j.Kind == "wait" && j.From == compilerID && j.FromHostname == compilerHost
		sawFetch = sawFetch || j.Kind == "fetch" && j.From == compilerID && float64(j.Chunks) == chunks
		if j.Peers > 1 {
			t.Errorf("job %+v receives from %d peers; there is one other daemon", j, j.Peers)
		}
	}
	if !sawWait {
		t.Errorf("the waiter's fetch --json printed no wait job naming %s (%s): %q", compilerID, compilerHost,
			got[waiter].stderr)
	}
	if !sawFetch {
		t.Logf("no fetch job seen (the fetch may finish between two polls): %q", got[waiter].stderr)
	}

	for _, c := range []struct {
		d    *Daemon
		line string
		peer string
	}{
		{daemons[compiler], "single flight: compiling here", ""},
		{daemons[waiter], "single flight: waiting for a peer's compile", compilerID},
		{daemons[waiter], "single flight: waited for a peer's compile", compilerID},
		{daemons[waiter], "fetched from peers", compilerID},
	} {
		n, err := c.d.CountLog(func(l string) bool {
			return LogMsg(c.line)(l) && (c.peer == "" || strings.Contains(l, c.peer))
		})
		if err != nil || n != 1 {
			t.Errorf("%s: %d log lines %q naming %q (%v)", c.d.Name, n, c.line, c.peer, err)
		}
	}
	for _, c := range []struct {
		d      *Daemon
		series string
		want   float64
	}{
		{daemons[waiter], `npu_agent_singleflight_waits_total{scope="fleet"}`, 1},
		{daemons[compiler], `npu_agent_singleflight_waits_total{scope="fleet"}`, 0},
		{daemons[waiter], `npu_agent_chunks_fetched_total`, chunks},
		{daemons[compiler], `npu_agent_chunks_fetched_total`, 0},
		{daemons[compiler], `npu_agent_chunks_served_total`, chunks},
	} {
		if v, err := c.d.Metric(ctx, c.series); err != nil || v != c.want {
			t.Errorf("%s: %s = %v, want %v (%v)", c.d.Name, c.series, v, c.want, err)
		}
	}
}
