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
// alternating. Every daemon must list every member within 30 s (api.Status.Peers: every member known), keep its connections within
// the configured p2p.conn_high once the connection manager's grace period passed, idle below 60 MiB RSS, and, when every daemon fetches the same model at once, each class must
// compile exactly once. It logs the time to full membership, connections and idle RSS per daemon.
func TestScaleLoopback(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("NPU_TEST_SCALE"))
	if err != nil || n < 4 {
		t.Skip("NPU_TEST_SCALE (hosts, at least 4) not set: make test-scale")
	}
	if npuAgent == "" {
		t.Skip("npu-agent binary not built (short mode or no lab support)")
	}
	var window time.Duration // NPU_TEST_SCALE_WINDOW: flight.window; default the daemon's (200 ms)
	if v := os.Getenv("NPU_TEST_SCALE_WINDOW"); v != "" {
		if window, err = time.ParseDuration(v); err != nil {
			t.Fatalf("NPU_TEST_SCALE_WINDOW: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	key := filepath.Join(dir, "fleet.key")
	if err := WriteFleetKey(key); err != nil {
		t.Fatal(err)
	}
	model, err := WriteModel(dir, "scale-"+strconv.Itoa(n), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	f := &testFleet{t: t, model: model, killed: map[int]bool{}, dir: dir, fleetKey: key}
	t.Cleanup(f.stop)

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
		id, err := WriteIdentity(filepath.Join(dir, fmt.Sprintf("h%d", i), "data"))
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
		m := member{"A", classA114}
		if i%2 == 1 {
			m = member{"B", classB}
		}
		d, err := Start(ctx, nil, i, Config{
			Binary: npuAgent, Dir: filepath.Join(dir, fmt.Sprintf("h%d", i)), Fingerprint: m.fp,
			CompileTime: 2 * time.Second, BlobSize: 4 << 20, P2P: true, FleetKeyFile: key,
			Loopback: true, Port: ports[i], Peers: peers, Deadline: 5 * time.Minute, FlightWindow: window,
			ConnLow: scaleConnLow, ConnHigh: scaleConnHigh,
		})
		if err != nil {
			t.Fatal(err)
		}
		f.members = append(f.members, m)
		f.daemons = append(f.daemons, d)
	}
	t0 := time.Now()
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
	for i, d := range f.daemons {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, 2*scaleMembership)
			defer cancel()
			errs[i] = d.poll(wctx, fmt.Sprintf("%d members", n), func(ctx context.Context) (bool, error) {
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				st, err := d.api.Status(cctx)
				if err != nil {
					return false, err
				}
				members := 1 + len(st.Peers) // status lists every member known (connected or not), not itself
				return members >= n, fmt.Errorf("%d members", members)
			})
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

	// Idle: connections per daemon within the configured bound once the connection manager had its grace period,
	// then RSS.
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
	t.Logf("window=%s hosts=%d ready=%s full_membership=%s conns_mean=%.1f conns_max=%d (conn_high %d, at %s) idle_rss_mean=%.1fMiB "+
		"idle_rss_max=%.1fMiB fetch_all=%s compilers=%v",
		window, n, ready.Round(time.Millisecond), slowest.Round(time.Millisecond), float64(conns)/float64(n), connsMax,
		scaleConnHigh, settled.Round(time.Second), float64(rssSum)/float64(n)/(1<<20), float64(rssMax)/(1<<20), fetch.Round(time.Millisecond),
		compiler)
}
