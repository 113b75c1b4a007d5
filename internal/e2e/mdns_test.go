//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

// TestMDNSNewcomer: mDNS only (design 6.3). A daemon started once the others are past their start-up rounds
// (browsing rarely) is still found: its own query is answered by every responder, it joins, and every member
// lists it within newcomerBound.
func TestMDNSNewcomer(t *testing.T) {
	requireLab(t)
	const n, newcomerBound = 5, 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lab := newLab(ctx, t, netlab.Config{Hosts: n + 1})
	f := newScaleFleet(t, lab, n+1)
	for i := range n {
		f.startMember(ctx, scaleMember(i))
	}
	f.waitMembers(ctx, n, time.Minute)
	time.Sleep(15 * time.Second) // past the first query rounds: every member is connected, so browsing rarely
	t0 := time.Now()
	f.startMember(ctx, scaleMember(n))
	f.waitMembers(ctx, n+1, newcomerBound)
	t.Logf("newcomer listed by all %d members after %s", n+1, time.Since(t0).Round(time.Millisecond))
}

// TestFaultHalvesRejoin: mDNS only (design 6.3). The LAN is split into two halves of 6 for longer than a member
// record lives (3 × 30 s), so each half forgets the other, and joined again: every daemon must list all 12
// members within rejoinBound. Every member has the peers its overlay wants inside its own half, so neither
// the overlay fill (which dials known members) nor mDNS's dials below dialBelow bring the halves back together.
// Only with NPU_TEST_FAULTS=long.
func TestFaultHalvesRejoin(t *testing.T) {
	const n, half, rejoinBound = 12, 6, 2 * time.Minute
	ctx, cancel, f := splitFleet(t, n, 9*time.Minute)
	defer cancel()
	started := time.Now()
	for i := range n {
		f.startMember(ctx, scaleMember(i))
	}
	f.waitMembers(ctx, n, 2*time.Minute)
	f.splitAndJoin(ctx, half, started, rejoinBound)
}

// splitFleet is the start of a halves-rejoin scenario (only with NPU_TEST_FAULTS=long): a lab of n hosts, its
// fleet, and a context that ends after timeout.
func splitFleet(t *testing.T, n int, timeout time.Duration) (context.Context, context.CancelFunc, *testFleet) {
	t.Helper()
	requireLab(t)
	if !longFaults {
		t.Skip("fault scenario run by make test-faults (NPU_TEST_FAULTS=long)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	lab := newLab(ctx, t, netlab.Config{Hosts: n})
	return ctx, cancel, newScaleFleet(t, lab, n)
}

// splitAndJoin splits the fleet's lab into hosts [0, half) and the rest until each half lists only its own
// members, joins it once the members are past joining, and waits up to bound for every daemon to list them all.
func (f *testFleet) splitAndJoin(ctx context.Context, half int, started time.Time, bound time.Duration) {
	t, n := f.t, len(f.daemons)
	t.Helper()
	var second []int
	for i := half; i < n; i++ {
		second = append(second, i)
	}
	if err := f.lab.Split(second); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	f.waitForgotten(ctx, half, 4*time.Minute)
	t.Logf("each half lists only its own %d members %s after the split", half, time.Since(t0).Round(time.Second))
	// The overlay fill's last rounds may still hold the other half's records when the table stops listing them:
	// past those, only what the fleet does to find members it does not know can join the halves.
	// And the members are past joining (2 minutes from their start, design 6.3), as a fleet that splits is.
	time.Sleep(max(30*time.Second, 2*time.Minute+15*time.Second-time.Since(started)))
	if err := f.lab.Join(); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	f.waitMembers(ctx, n, bound)
	t.Logf("every daemon lists all %d members %s after the join", n, time.Since(t0).Round(time.Millisecond))
}

// TestFaultHalvesRejoinStatic is TestFaultHalvesRejoin for a fleet joined by p2p.peers alone (no mDNS): members
// 1-12 have member 0 as static peer, 13-23 members 0 and 12, so the second half (12-23) knows the first only
// through member 0. Halves of 12 keep every member at its 8 overlay peers within its half, so no member falls below
// the 4 that would make it redial its static peers (the bootstrap list's restore, 6.2); after the join, members
// that forgot a static peer dial it as a bridging dial (design 6.3), deciding once per 2 minutes
// (staticBridgeWindow); the bound is three such windows. About 6 minutes: make test-faults.
func TestFaultHalvesRejoinStatic(t *testing.T) {
	const n, half, rejoinBound = 24, 12, 6 * time.Minute
	ctx, cancel, f := splitFleet(t, n, 15*time.Minute)
	defer cancel()
	var peers []string
	scale := f.o.configure
	f.o.configure = func(i int, c *Config) {
		scale(i, c)
		c.NoMDNS, c.Peers = true, peers
	}
	started := time.Now()
	for i := range n {
		d := f.startMember(ctx, scaleMember(i))
		if i != 0 && i != half {
			continue
		}
		if err := d.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		peers = append(peers, f.p2pAddr(ctx, i))
	}
	f.waitMembers(ctx, n, 3*time.Minute)
	f.splitAndJoin(ctx, half, started, rejoinBound)
}

// waitForgotten waits until every daemon lists at most n members (itself included) or fails the test after bound.
func (f *testFleet) waitForgotten(ctx context.Context, n int, bound time.Duration) {
	f.t.Helper()
	f.waitEach(ctx, bound, func(ctx context.Context, d *Daemon) error {
		return d.poll(ctx, "at most "+strconv.Itoa(n-1)+" peers", func(ctx context.Context) (bool, error) {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			st, err := d.api.Status(cctx)
			if err != nil {
				return false, err
			}
			return len(st.Peers) <= n-1, fmt.Errorf("%d peers", len(st.Peers))
		})
	})
}

// waitMembers waits until every daemon lists n members (itself included) or fails the test after bound.
func (f *testFleet) waitMembers(ctx context.Context, n int, bound time.Duration) {
	f.t.Helper()
	f.waitEach(ctx, bound, func(ctx context.Context, d *Daemon) error { return d.WaitPeers(ctx, n-1) })
}

// waitEach runs wait for every daemon at once and fails the test if any fails within bound.
func (f *testFleet) waitEach(ctx context.Context, bound time.Duration, wait func(context.Context, *Daemon) error) {
	f.t.Helper()
	wctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(f.daemons))
	for i, d := range f.daemons {
		wg.Go(func() { errs[i] = wait(wctx, d) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			f.t.Fatal(err)
		}
	}
}

// TestMDNSLoad measures mDNS traffic in steady state (docs/benchmarks.md, "Fleet scale"): NPU_TEST_MDNS_LOAD
// daemons, mDNS only, one namespace each; between NPU_TEST_MDNS_AT (default 180 s) after the last start and a
// minute later, the multicast packets and bytes each host received (IPv4 IpExt InMcastPkts/InMcastOctets plus
// IPv6 Ip6InMcastPkts/Ip6InMcastOctets: the daemons listen on TCP, so multicast is mDNS, plus IPv6 neighbour
// discovery's few).
func TestMDNSLoad(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("NPU_TEST_MDNS_LOAD"))
	if err != nil || n < 2 {
		t.Skip("NPU_TEST_MDNS_LOAD (hosts) not set")
	}
	at := 180 * time.Second
	if v := os.Getenv("NPU_TEST_MDNS_AT"); v != "" {
		if at, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), at+4*time.Minute)
	defer cancel()
	lab := newLab(ctx, t, netlab.Config{Hosts: n})
	f := newScaleFleet(t, lab, n)
	for i := range n {
		f.startMember(ctx, scaleMember(i))
	}
	t0 := time.Now()
	f.waitMembers(ctx, n, time.Minute)
	time.Sleep(time.Until(t0.Add(at)))
	before := mcastCounters(ctx, t, lab, n)
	time.Sleep(time.Minute)
	after := mcastCounters(ctx, t, lab, n)
	var pkts, octs []float64
	for i := range n {
		pkts = append(pkts, float64(after[i][0]-before[i][0]))
		octs = append(octs, float64(after[i][1]-before[i][1]))
	}
	mean := func(v []float64) (m, lo, hi float64) {
		lo, hi = v[0], v[0]
		for _, x := range v {
			m += x / float64(len(v))
			lo, hi = min(lo, x), max(hi, x)
		}
		return
	}
	pm, plo, phi := mean(pkts)
	om, olo, ohi := mean(octs)
	t.Logf("mdns-load hosts=%d window=[%s,%s] mcast_pkts_per_host_min mean=%.0f min=%.0f max=%.0f bytes mean=%.0f min=%.0f max=%.0f",
		n, at, at+time.Minute, pm, plo, phi, om, olo, ohi)
}

// mcastCounters reads each host's multicast packets and octets received, IPv4 plus IPv6.
func mcastCounters(ctx context.Context, t *testing.T, lab *netlab.Lab, n int) [][2]uint64 {
	t.Helper()
	out := make([][2]uint64, n)
	for i := range n {
		v4, err := lab.Command(ctx, i, "cat", "/proc/net/netstat").Output()
		if err != nil {
			t.Fatal(err)
		}
		v6, err := lab.Command(ctx, i, "cat", "/proc/net/snmp6").Output()
		if err != nil {
			t.Fatal(err)
		}
		ext := headerValues(v4, "IpExt:")
		out[i][0] = ext["InMcastPkts"] + snmp6(v6, "Ip6InMcastPkts")
		out[i][1] = ext["InMcastOctets"] + snmp6(v6, "Ip6InMcastOctets")
	}
	return out
}

// headerValues parses /proc/net/netstat's pair of lines for prefix: names, then values.
func headerValues(b []byte, prefix string) map[string]uint64 {
	var lines [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			lines = append(lines, strings.Fields(sc.Text())[1:])
		}
	}
	m := map[string]uint64{}
	if len(lines) == 2 {
		for k, name := range lines[0] {
			if k < len(lines[1]) {
				m[name], _ = strconv.ParseUint(lines[1][k], 10, 64)
			}
		}
	}
	return m
}

func snmp6(b []byte, name string) uint64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			return v
		}
	}
	return 0
}
