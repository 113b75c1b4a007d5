//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

// scaleMembership is the bound: every host lists every member within it; scaleIdleRSS bounds the mean
// RSS of an idle daemon.
const (
	scaleMembership = 30 * time.Second
	scaleIdleRSS    = 60 << 20
)

// The connection bounds the scale test configures (p2p.conn_low, p2p.conn_high): well below the fleet size, so
// the bound is the connection manager's, not the fleet's.
const (
	scaleConnLow  = 12
	scaleConnHigh = 24
	// scaleConnSettle bounds how long connections may stay above conn_high: libp2p's connection manager trims
	// only connections older than its grace period (30 s), checking every 10 s.
	scaleConnSettle = 60 * time.Second
)

// TestScaleLoopback (`make test-scale`) runs NPU_TEST_SCALE real daemons on loopback, each bootstrapped with
// the 3 daemons before it (static p2p.peers, wrapping around), mDNS off, a fleet key, two compatibility classes
// alternating; checkScale checks the goals.
func TestScaleLoopback(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("NPU_TEST_SCALE"))
	if err != nil || n < 4 {
		t.Skip("NPU_TEST_SCALE (hosts, at least 4) not set: make test-scale")
	}
	if npuAgent == "" {
		t.Skip("npu-agent binary not built (short mode or no lab support)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	f := newScaleFleet(t, nil, n)
	ports := make([]int, n)
	ids := make([]string, n)
	var held []net.Listener
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l) // held until every port is chosen, so no two daemons get the same
		ports[i] = l.Addr().(*net.TCPAddr).Port
		id, err := WriteIdentity(filepath.Join(f.dir, fmt.Sprintf("h%d", i), "data"))
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id.String()
	}
	for _, l := range held {
		l.Close()
	}
	for i := range n {
		var peers []string
		for k := 1; k <= 3; k++ {
			j := (i - k + n) % n
			peers = append(peers, fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/p2p/%s", ports[j], ids[j]))
		}
		m := scaleMember(i)
		cfg := Config{
			Binary: npuAgent, Dir: filepath.Join(f.dir, fmt.Sprintf("h%d", i)), Fingerprint: m.fp,
			CompileTime: f.o.compileTime, BlobSize: f.o.blobSize, P2P: true, FleetKeyFile: f.fleetKey,
			Loopback: true, Port: ports[i], Peers: peers, Deadline: 5 * time.Minute,
		}
		f.o.configure(i, &cfg)
		d, err := Start(ctx, nil, i, cfg)
		if err != nil {
			t.Fatal(err)
		}
		f.members = append(f.members, m)
		f.daemons = append(f.daemons, d)
	}
	f.checkScale(ctx, time.Now())
}

// TestScaleNamespaces (`make test-scale-ns`) runs NPU_TEST_SCALE_NS daemons, each in its own network namespace
// on one simulated LAN (internal/netlab), with mDNS only: no static peers, a fleet key, two classes alternating;
// checkScale checks the goals.
func TestScaleNamespaces(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("NPU_TEST_SCALE_NS"))
	if err != nil || n < 4 {
		t.Skip("NPU_TEST_SCALE_NS (hosts, at least 4) not set: make test-scale-ns")
	}
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	lab := newLab(ctx, t, netlab.Config{Hosts: n})
	f := newScaleFleet(t, lab, n)
	for i := range n {
		f.startMember(ctx, scaleMember(i))
	}
	f.checkScale(ctx, time.Now())
}

// newScaleFleet prepares a fleet of n daemons for the scale tests: fleet key, model, the configured connection
// bounds, NPU_TEST_SCALE_WINDOW as flight.window. The daemons are stopped when the test ends.
func newScaleFleet(t *testing.T, lab *netlab.Lab, n int) *testFleet {
	t.Helper()
	window := scaleWindow(t)
	level := os.Getenv("NPU_TEST_SCALE_LOGLEVEL") // e.g. debug, to see member publishes and pulls
	o := fleetOptions{compileTime: 2 * time.Second, blobSize: 4 << 20, configure: func(_ int, c *Config) {
		c.FlightWindow, c.ConnLow, c.ConnHigh, c.LogLevel = window, scaleConnLow, scaleConnHigh, level
	}}
	dir := t.TempDir()
	key := filepath.Join(dir, "fleet.key")
	if err := WriteFleetKey(key); err != nil {
		t.Fatal(err)
	}
	model, err := WriteModel(dir, "scale-"+strconv.Itoa(n), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	f := &testFleet{t: t, lab: lab, model: model, killed: map[int]bool{}, dir: dir, fleetKey: key, o: o}
	if keep := os.Getenv("NPU_TEST_SCALE_LOGDIR"); keep != "" {
		t.Cleanup(func() { f.keepLogs(keep) }) // after f.stop: the whole logs
	}
	t.Cleanup(f.stop)
	return f
}

// scaleWindow is NPU_TEST_SCALE_WINDOW, the daemons' flight.window (0: the daemon's default).
func scaleWindow(t *testing.T) time.Duration {
	v := os.Getenv("NPU_TEST_SCALE_WINDOW")
	if v == "" {
		return 0
	}
	w, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("NPU_TEST_SCALE_WINDOW: %v", err)
	}
	return w
}

// scaleMember is daemon i's class: A and B alternate.
func scaleMember(i int) member {
	if i%2 == 1 {
		return member{"B", classB}
	}
	return member{"A", classA114}
}

// checkScale checks the goals on a started fleet (t0: when the last daemon was started): every daemon
// lists every member within 30 s (api.Status.Peers: every member known), its connections are within the
// configured p2p.conn_high once the connection manager's grace period passed, idle RSS is below 60 MiB, and when
// every daemon fetches the same model at once each class compiles exactly once. It logs the figures.
func (f *testFleet) checkScale(ctx context.Context, t0 time.Time) {
	t := f.t
	t.Helper()
	n := len(f.daemons)
	for _, d := range f.daemons {
		if err := d.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ready := time.Since(t0)

	// Membership through the API: every daemon lists n members.
	full := make([]time.Duration, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	wg.Go(func() {
		select {
		case <-ctx.Done():
		case <-time.After(scaleMembership/2 - time.Since(t0)):
			f.logScarceMembers(ctx)
		}
	})
	for i, d := range f.daemons {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, 2*scaleMembership)
			defer cancel()
			errs[i] = d.WaitPeers(wctx, n-1) // status lists every member known (connected or not), not itself
			full[i] = time.Since(t0)
		})
	}
	wg.Wait()
	var slowest time.Duration
	for i, err := range errs {
		if err != nil {
			t.Error(err)
		}
		slowest = max(slowest, full[i])
	}
	if t.Failed() {
		t.FailNow()
	}
	if slowest > scaleMembership {
		t.Errorf("full membership after %s, want within %s", slowest.Round(time.Millisecond), scaleMembership)
	}
	if slowest > scaleMembership/2 {
		// Which shape the slow mode has: one host late to learn many members, or many hosts late to learn one.
		var late []string
		for i, d := range full {
			if d > scaleMembership/2 {
				late = append(late, fmt.Sprintf("h%d:%s", i, d.Round(100*time.Millisecond)))
			}
		}
		t.Logf("daemons with full membership after %s: %d of %d %v", scaleMembership/2, len(late), n, late[:min(len(late), 20)])
	}

	// Idle: connections per daemon within the configured bound once the connection manager had its grace
	// period, then RSS.
	conns, connsMax := 0, 0
	var settled time.Duration
	for {
		conns, connsMax = 0, 0
		over := ""
		for _, d := range f.daemons {
			st, err := d.api.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c := 0
			for _, p := range st.Peers {
				if p.Connected {
					c++
				}
			}
			conns += c
			connsMax = max(connsMax, c)
			if c > scaleConnHigh && over == "" {
				over = fmt.Sprintf("%s: %d connections, above p2p.conn_high %d", d.Name, c, scaleConnHigh)
			}
		}
		settled = time.Since(t0)
		if over == "" {
			break
		}
		if settled > scaleMembership+scaleConnSettle {
			t.Errorf("after %s: %s", settled.Round(time.Second), over)
			break
		}
		time.Sleep(5 * time.Second)
	}
	time.Sleep(5 * time.Second)
	var rssSum, rssMax int64
	for _, d := range f.daemons {
		rss, err := d.RSS()
		if err != nil {
			t.Fatal(err)
		}
		rssSum += rss
		rssMax = max(rssMax, rss)
	}
	if mean := rssSum / int64(n); mean > scaleIdleRSS {
		t.Errorf("idle RSS mean %.1f MiB, want below %d MiB", float64(mean)/(1<<20), scaleIdleRSS>>20)
	}

	// Every daemon fetches the same model at once: one compile per class.
	t1 := time.Now()
	out := f.fetchAll(ctx)()
	fetch := time.Since(t1)
	compiler := f.checkServed(out)
	f.checkCompileCounts(ctx, compiler)
	// Where compiles came from: the fleet single flight electing a compiler, or a host that found the fleet's
	// record but whose fetch failed and compiled for itself (agent fallback, 7.2).
	flightCompiles, fallbacks, repairs := map[string]int{}, 0, 0
	for i, d := range f.daemons {
		c, err := d.CountLog(LogMsg("member record published again: a peer's pull showed it did not spread"))
		if err != nil {
			t.Error(err)
		}
		repairs += c
		c, err = d.CountLog(LogMsg("single flight: compiling here"))
		if err != nil {
			t.Error(err)
		}
		flightCompiles[f.members[i].class] += c
		c, err = d.CountLog(LogMsg("no peer could serve a compatible blob; compiling"))
		if err != nil {
			t.Error(err)
		}
		fallbacks += c
	}
	t.Logf("window=%s hosts=%d ready=%s full_membership=%s conns_mean=%.1f conns_max=%d (conn_high %d, at %s) "+
		"idle_rss_mean=%.1fMiB idle_rss_max=%.1fMiB fetch_all=%s compilers=%v flight_compiles=%v fetch_fallbacks=%d member_repair_publishes=%d",
		scaleWindow(t), n, ready.Round(time.Millisecond), slowest.Round(time.Millisecond), float64(conns)/float64(n),
		connsMax, scaleConnHigh, settled.Round(time.Second), float64(rssSum)/float64(n)/(1<<20),
		float64(rssMax)/(1<<20), fetch.Round(time.Millisecond), compiler, flightCompiles, fallbacks, repairs)
}

// logScarceMembers logs, for every member not listed by every other daemon, how many list it and which daemon it
// is: the slow mode's shape ("many hosts late to learn one") names the member whose record did not spread, and its
// log says what it published and which pulls found it unknown.
func (f *testFleet) logScarceMembers(ctx context.Context) {
	n := len(f.daemons)
	holders := map[string]int{}
	names := map[string]string{}
	lists := map[string][]string{} // member ID → daemons listing it
	for _, d := range f.daemons {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := d.api.Status(cctx)
		cancel()
		if err != nil {
			f.t.Logf("%s: status: %v", d.Name, err)
			continue
		}
		names[st.PeerID] = d.Name
		for _, p := range st.Peers {
			holders[p.ID]++
			lists[p.ID] = append(lists[p.ID], d.Name)
		}
	}
	scarce := 0
	for id, name := range names {
		if holders[id] < n-1 {
			scarce++
			if scarce <= 10 {
				f.t.Logf("member %s (%s) listed by %d of %d daemons at %s", name, id, holders[id], n-1, scaleMembership/2)
			}
			if scarce == 1 {
				f.t.Logf("daemons listing %s: %v", name, lists[id])
			}
		}
	}
	f.t.Logf("members not listed everywhere at %s: %d of %d", scaleMembership/2, scarce, n)
}

// keepLogs copies every daemon's log to dir/<test>-<time>/hN.log (NPU_TEST_SCALE_LOGDIR).
func (f *testFleet) keepLogs(dir string) {
	dst := filepath.Join(dir, fmt.Sprintf("%s-%s", f.t.Name(), time.Now().UTC().Format("150405")))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		f.t.Error(err)
		return
	}
	for _, d := range f.daemons {
		b, err := os.ReadFile(d.LogPath)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, d.Name+".log"), b, 0o644)
		}
		if err != nil {
			f.t.Error(err)
		}
	}
	f.t.Logf("daemon logs kept in %s", dst)
}
