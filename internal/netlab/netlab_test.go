//go:build linux

package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as the programs run inside lab hosts, picked by this variable.
const helperEnv = "NETLAB_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "send":
		os.Exit(helperSend())
	case "lab":
		os.Exit(helperLab())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s %q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// helperSend connects to NETLAB_ADDR and writes NETLAB_BYTES zero bytes.
func helperSend() int {
	n, err := strconv.ParseInt(os.Getenv("NETLAB_BYTES"), 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "send: NETLAB_BYTES:", err)
		return 2
	}
	c, err := net.DialTimeout("tcp", os.Getenv("NETLAB_ADDR"), 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "send:", err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(c, zeros{}, n); err != nil {
		fmt.Fprintln(os.Stderr, "send:", err)
		return 1
	}
	return 0
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// helperLab builds a lab with prefix NETLAB_PREFIX, prints its ID and waits to be killed, as a test run that dies
// without Close would.
func helperLab() int {
	lab, err := New(context.Background(), Config{Hosts: 2, Prefix: os.Getenv("NETLAB_PREFIX")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	fmt.Println(lab.ID)
	time.Sleep(60 * time.Second) // bounded in case the test fails to kill us
	lab.Close()
	return 0
}

// newLab builds a lab for a test, or skips when labs cannot be built here. In CI (root) it must run.
func newLab(t *testing.T, cfg Config) *Lab {
	t.Helper()
	requireAvailable(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lab, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return lab
}

func requireAvailable(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("netlab must run in CI: %v", err)
		}
		t.Skip(err)
	}
}

// exchange connects from host a to a listener on host b and checks one round trip and the peer addresses.
func exchange(ctx context.Context, lab *Lab, a, b int) error {
	ln, err := lab.Listen(ctx, b, "tcp", netip.AddrPortFrom(lab.Hosts[b].IP, 0).String())
	if err != nil {
		return err
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != lab.Hosts[a].IP {
			errc <- fmt.Errorf("host %d saw peer %s, want %s", b, got, lab.Hosts[a].IP)
			return
		}
		_, err = io.Copy(c, io.LimitReader(c, 5))
		errc <- err
	}()
	c, err := lab.DialContext(ctx, a, "tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "hello" {
		return fmt.Errorf("echo = %q", buf)
	}
	return <-errc
}

func TestHostsReachEachOther(t *testing.T) {
	t.Parallel()
	lab := newLab(t, Config{Hosts: 3, Subnet: netip.MustParsePrefix("10.213.7.0/24")})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, h := range lab.Hosts {
		if want := netip.AddrFrom4([4]byte{10, 213, 7, byte(i + 1)}); h.IP != want {
			t.Errorf("host %d IP = %s, want %s", i, h.IP, want)
		}
	}
	for a := range lab.Hosts {
		for b := range lab.Hosts {
			if a == b {
				continue
			}
			if err := exchange(ctx, lab, a, b); err != nil {
				t.Errorf("host %d -> host %d: %v", a, b, err)
			}
		}
	}
}

func TestCommandRunsInHostNamespace(t *testing.T) {
	t.Parallel()
	lab := newLab(t, Config{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, h := range lab.Hosts {
		out, err := lab.Command(ctx, i, "ip", "-o", "-4", "addr", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("host %d: %v: %s", i, err, out)
		}
		// The host sees exactly lo and its own eth0 address: nothing of the machine's interfaces.
		if !strings.Contains(string(out), " "+HostIface+" ") || !strings.Contains(string(out), h.IP.String()+"/24") {
			t.Errorf("host %d addresses lack %s on %s:\n%s", i, h.IP, HostIface, out)
		}
		if n := strings.Count(string(out), "\n"); n != 2 {
			t.Errorf("host %d has %d IPv4 addresses, want lo and %s:\n%s", i, n, HostIface, out)
		}
	}
	if err := lab.Command(ctx, 7, "true").Run(); !errors.Is(err, ErrNoHost) {
		t.Errorf("Command on host 7 of 2: %v, want ErrNoHost", err)
	}
}

// measure sends n bytes from host from (a helper process) to a listener on host to (this process) and returns the
// rate seen by the receiver in bit/s.
func measure(t *testing.T, lab *Lab, from, to int, n int64) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ln, err := lab.Listen(ctx, to, "tcp", netip.AddrPortFrom(lab.Hosts[to].IP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := lab.Command(ctx, from, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=send", "NETLAB_ADDR="+ln.Addr().String(), "NETLAB_BYTES="+strconv.FormatInt(n, 10))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	got, err := io.Copy(io.Discard, c)
	elapsed := time.Since(start)
	if err != nil || got != n {
		t.Fatalf("received %d of %d bytes: %v", got, n, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sender: %v", err)
	}
	return float64(n*8) / elapsed.Seconds()
}

// TestShapingLimitsBothDirections checks that Shape caps a host's upload and download, and that removing it
// lifts the cap. The band is broad: this checks the capability, not tc's precision.
func TestShapingLimitsBothDirections(t *testing.T) {
	t.Parallel()
	lab := newLab(t, Config{Hosts: 2})
	const rate = 20e6
	const n = 3 << 20 // 1.25 s at 20 Mbit/s
	if err := lab.Shape(0, FormatRate(rate)); err != nil {
		t.Fatal(err)
	}
	if got, err := lab.Rate(0); err != nil || got != rate {
		t.Fatalf("Rate(0) = %d, %v", got, err)
	}
	before, err := lab.Stats(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []struct {
		name     string
		from, to int
	}{{"upload", 0, 1}, {"download", 1, 0}} {
		got := measure(t, lab, dir.from, dir.to, n)
		t.Logf("%s of shaped host: %.1f Mbit/s", dir.name, got/1e6)
		if got < 0.5*rate || got > 1.3*rate {
			t.Errorf("%s of host shaped to %.0f Mbit/s ran at %.1f Mbit/s", dir.name, rate/1e6, got/1e6)
		}
	}
	after, err := lab.Stats(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	// Payload plus headers, and not much more: the counters see the lab's traffic and only that.
	if tx, rx := after.TxBytes-before.TxBytes, after.RxBytes-before.RxBytes; tx < n || rx < n || tx > 2*n || rx > 2*n {
		t.Errorf("host 0 counters moved tx %d rx %d bytes, want about %d each", tx, rx, n)
	}
	if err := lab.Shape(0, ""); err != nil {
		t.Fatal(err)
	}
	got := measure(t, lab, 0, 1, 4*n)
	t.Logf("unshaped: %.1f Mbit/s", got/1e6)
	if got < 3*rate {
		t.Errorf("after removing shaping, upload ran at only %.1f Mbit/s", got/1e6)
	}
}

func TestNewWithRateShapesEveryHost(t *testing.T) {
	t.Parallel()
	lab := newLab(t, Config{Hosts: 2, Rate: "50mbit"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range lab.Hosts {
		if got, err := lab.Rate(i); err != nil || got != 50e6 {
			t.Errorf("Rate(%d) = %d, %v", i, got, err)
		}
		out, err := lab.Command(ctx, i, "tc", "qdisc", "show", "dev", HostIface).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "tbf") || !strings.Contains(string(out), "50Mbit") {
			t.Errorf("host %d qdisc: %v: %s", i, err, out)
		}
	}
}

// TestNewSetsCongestionControl: every host uses the lab's TCP congestion control, not the machine's; one the
// kernel does not have fails the lab.
func TestNewSetsCongestionControl(t *testing.T) {
	t.Parallel()
	machine, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Skip(err)
	}
	want := "reno" // built into every kernel
	if strings.TrimSpace(string(machine)) == want {
		want = "cubic"
	}
	lab := newLab(t, Config{Hosts: 2, TCPCongestion: want})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range lab.Hosts {
		out, err := lab.Command(ctx, i, "cat", "/proc/sys/net/ipv4/tcp_congestion_control").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("host %d: congestion control %q (%v), want %s", i, out, err, want)
		}
	}
	if lab, err := New(ctx, Config{Hosts: 1, TCPCongestion: "nosuchcc"}); err == nil {
		lab.Close()
		t.Fatal("a lab with a congestion control the kernel lacks was built")
	}
}

func TestPartitionAndHeal(t *testing.T) {
	t.Parallel()
	lab := newLab(t, Config{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := exchange(ctx, lab, 0, 1); err != nil {
		t.Fatalf("before partition: %v", err)
	}
	if err := lab.Partition(1); err != nil {
		t.Fatal(err)
	}
	if reaches(ctx, lab, 0, 1) {
		t.Fatal("host 0 reached partitioned host 1")
	}
	if err := lab.Heal(1); err != nil {
		t.Fatal(err)
	}
	if err := waitExchange(ctx, lab, 0, 1); err != nil {
		t.Fatalf("after heal: %v", err)
	}
	if err := lab.Partition(5); !errors.Is(err, ErrNoHost) {
		t.Errorf("Partition(5) = %v, want ErrNoHost", err)
	}
}

// reaches reports whether host a completes an exchange with host b within half a second.
func reaches(ctx context.Context, lab *Lab, a, b int) bool {
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	return exchange(short, lab, a, b) == nil
}

// waitExchange retries an exchange from host a to host b for about 2 s: a port that comes back (no STP delay)
// may take a moment for its carrier to settle.
func waitExchange(ctx context.Context, lab *Lab, a, b int) error {
	for try := 0; ; try++ {
		err := exchange(ctx, lab, a, b)
		if err == nil || try == 20 {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSplitAndJoin: a split LAN's halves reach within themselves and not across; Join reconnects them.
func TestSplitAndJoin(t *testing.T) {
	t.Parallel()
	lab := newLab(t, Config{Hosts: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := lab.Split([]int{2, 3}); err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]int{{0, 1}, {2, 3}} {
		if err := exchange(ctx, lab, p[0], p[1]); err != nil {
			t.Errorf("split, within a half %v: %v", p, err)
		}
	}
	for _, p := range [][2]int{{0, 2}, {3, 1}} {
		if reaches(ctx, lab, p[0], p[1]) {
			t.Errorf("split: host %d reached host %d across the halves", p[0], p[1])
		}
	}
	if err := lab.Join(); err != nil {
		t.Fatal(err)
	}
	if err := waitExchange(ctx, lab, 0, 2); err != nil {
		t.Fatalf("after join: %v", err)
	}
	if err := lab.Split([]int{7}); !errors.Is(err, ErrNoHost) {
		t.Errorf("Split([7]) = %v, want ErrNoHost", err)
	}
}

// labNamespaces lists the namespaces of the run.
func labNamespaces(t *testing.T, prefix, id string) []string {
	t.Helper()
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-"+id+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestCloseRemovesEverything(t *testing.T) {
	t.Parallel()
	requireAvailable(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lab, err := New(ctx, Config{Hosts: 3, Rate: "10mbit", Prefix: "closetest"})
	if err != nil {
		t.Fatal(err)
	}
	if got := labNamespaces(t, "closetest", lab.ID); len(got) != 4 {
		t.Fatalf("namespaces = %v, want bridge and 3 hosts", got)
	}
	// A process left running in a host must not keep anything alive.
	sleeper := lab.Command(ctx, 1, "sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	if err := lab.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := sleeper.Wait(); err == nil {
		t.Error("process in the lab survived Close")
	}
	if got := labNamespaces(t, "closetest", lab.ID); len(got) != 0 {
		t.Errorf("namespaces left after Close: %v", got)
	}
	if _, err := os.Stat(lockPath("closetest", lab.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left after Close: %v", err)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := lab.Shape(0, "1mbit"); !errors.Is(err, ErrClosed) {
		t.Errorf("Shape after Close = %v, want ErrClosed", err)
	}
}

func TestCleanupStaleRemovesOnlyDeadRuns(t *testing.T) {
	t.Parallel()
	requireAvailable(t)
	const prefix = "staletest"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A run that dies without Close.
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=lab", "NETLAB_PREFIX="+prefix)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper lab: %v", err)
	}
	deadID := strings.TrimSpace(line)
	cmd.Process.Kill()
	cmd.Wait()
	if got := labNamespaces(t, prefix, deadID); len(got) != 3 {
		t.Fatalf("dead run's namespaces = %v, want 3", got)
	}

	live := newLab(t, Config{Hosts: 1, Prefix: prefix})
	n, err := CleanupStale(prefix)
	if err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	if n != 1 {
		t.Errorf("CleanupStale removed %d runs, want 1", n)
	}
	if got := labNamespaces(t, prefix, deadID); len(got) != 0 {
		t.Errorf("dead run's namespaces left: %v", got)
	}
	if _, err := os.Stat(lockPath(prefix, deadID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead run's lock left: %v", err)
	}
	if got := labNamespaces(t, prefix, live.ID); len(got) != 2 {
		t.Errorf("live run's namespaces = %v, want 2", got)
	}
	if err := exchange(ctx, live, 0, 0); err != nil {
		t.Errorf("live lab broken by CleanupStale: %v", err)
	}
	if _, err := CleanupStale("Bad-Prefix"); !errors.Is(err, ErrConfig) {
		t.Errorf("CleanupStale(bad prefix) = %v, want ErrConfig", err)
	}
}
