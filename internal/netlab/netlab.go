//go:build linux

// Package netlab builds a simulated switched LAN out of Linux network namespaces, for tests and benchmarks that run
// several real processes talking over a real network stack.
//
// A lab is one bridge in a namespace of its own plus N host namespaces, each joined to the bridge by a veth pair
// (eth0 on the host side, v<i> on the bridge side) and given an address on a private subnet. Each host can be shaped
// with tc tbf in both directions, given a TCP congestion control of its own, and cut off from the bridge for fault
// tests. Nothing is created in the caller's namespace, so labs cannot touch the machine's own interfaces and
// parallel labs cannot clash: every namespace name carries a random run ID, and interface names only need to be
// unique inside their own namespace.
//
// A lab needs root and iproute2 (ip, tc); Available says whether they are there.
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults for Config fields left zero.
const (
	DefaultPrefix = "netlab"
	// 10.213.0.0/24 is unlikely to be in use, and it does not matter if it is: labs live in their own namespaces.
	defaultSubnet = "10.213.0.0/24"
)

// HostIface is the name of every host's interface to the lab LAN.
const HostIface = "eth0"

const (
	bridgeName = "br0"
	// splitBridge is the second switch of a split LAN (Split).
	splitBridge = "br1"
	idLen       = 6 // hex digits of the run ID
	// cmdTimeout bounds each ip/tc invocation; they normally take milliseconds.
	cmdTimeout = 30 * time.Second
)

// Where a lab keeps the lock that marks it alive (see CleanupStale), and where iproute2 keeps named namespaces.
// Variables so that the paths are written in one place.
var (
	lockDir  = "/run/netlab"
	netnsDir = "/run/netns"
)

var (
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,11}$`)
	ccRE     = regexp.MustCompile(`^[a-z][a-z0-9_]{0,15}$`) // a kernel congestion control's name
)

// Sentinel errors.
var (
	ErrUnavailable = errors.New("netlab unavailable")
	ErrConfig      = errors.New("invalid netlab config")
	ErrNoHost      = errors.New("no such lab host")
	ErrClosed      = errors.New("lab is closed")
)

// Config describes a lab.
type Config struct {
	// Hosts is the number of host namespaces, at least 1.
	Hosts int
	// Subnet is the IPv4 subnet of the LAN; host i gets its (i+1)th address. Default 10.213.0.0/24.
	Subnet netip.Prefix
	// Rate shapes every host in both directions to this tc rate, e.g. "100mbit"; empty leaves hosts unshaped.
	Rate string
	// Prefix starts every namespace name of the lab: <prefix>-<id>-br, <prefix>-<id>-h<i>. Lower-case letters and
	// digits, starting with a letter, at most 12. Default "netlab". CleanupStale takes the same prefix.
	Prefix string
	// TCPCongestion is every host's TCP congestion control (net.ipv4.tcp_congestion_control in its namespace),
	// e.g. "cubic"; empty: a new namespace's own, which Linux copies from the machine's (this VM's is bbr), so
	// results would depend on the machine the lab runs on.
	TCPCongestion string
}

// Host is one machine of the lab.
type Host struct {
	Name  string     // "h0", "h1", ...
	NS    string     // network namespace name, usable with `ip netns exec`
	IP    netip.Addr // address of HostIface
	Iface string     // HostIface
}

// Lab is a running simulated LAN. Its methods are safe for concurrent use.
type Lab struct {
	ID     string       // random run ID in every name of the lab
	Subnet netip.Prefix // the LAN's subnet
	Hosts  []Host

	prefix   string
	bridgeNS string

	mu     sync.Mutex
	lock   *os.File // flock held for the lab's life; nil once closed
	closed bool
	rates  []uint64 // current shaping of each host in bit/s, 0 = none
	split  bool     // the second switch exists (Split)
}

// Available reports why labs cannot be built here, or nil if they can. Tests skip on its error.
func Available() error {
	if euid := os.Geteuid(); euid != 0 {
		return fmt.Errorf("%w: needs root to create network namespaces (euid %d)", ErrUnavailable, euid)
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s (iproute2) not found in PATH", ErrUnavailable, tool)
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("%w: kernel without network namespaces: %v", ErrUnavailable, err)
	}
	return nil
}

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(c.Prefix) {
		return c, fmt.Errorf("%w: prefix %q must be 1-12 lower-case letters and digits starting with a letter", ErrConfig, c.Prefix)
	}
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix(defaultSubnet)
	}
	c.Subnet = c.Subnet.Masked()
	if !c.Subnet.Addr().Is4() {
		return c, fmt.Errorf("%w: subnet %s is not IPv4", ErrConfig, c.Subnet)
	}
	if bits := c.Subnet.Bits(); bits > 30 {
		return c, fmt.Errorf("%w: subnet %s is too small", ErrConfig, c.Subnet)
	}
	// Usable addresses: all but the network and broadcast addresses.
	usable := 1<<(32-c.Subnet.Bits()) - 2
	if c.Hosts < 1 || c.Hosts > usable {
		return c, fmt.Errorf("%w: hosts %d out of range 1..%d for subnet %s", ErrConfig, c.Hosts, usable, c.Subnet)
	}
	if c.Rate != "" {
		if _, err := ParseRate(c.Rate); err != nil {
			return c, fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	if c.TCPCongestion != "" && !ccRE.MatchString(c.TCPCongestion) {
		return c, fmt.Errorf("%w: TCP congestion control %q is not a name", ErrConfig, c.TCPCongestion)
	}
	return c, nil
}

// New builds a lab. On error nothing of it is left behind. The caller must Close it.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := Available(); err != nil {
		return nil, err
	}
	id, lock, err := newRunLock(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	base := cfg.Prefix + "-" + id
	lab := &Lab{
		ID:       id,
		Subnet:   cfg.Subnet,
		Hosts:    make([]Host, cfg.Hosts),
		prefix:   cfg.Prefix,
		bridgeNS: base + "-br",
		lock:     lock,
		rates:    make([]uint64, cfg.Hosts),
	}
	ip := cfg.Subnet.Addr()
	for i := range lab.Hosts {
		ip = ip.Next()
		lab.Hosts[i] = Host{Name: "h" + strconv.Itoa(i), NS: base + "-h" + strconv.Itoa(i), IP: ip, Iface: HostIface}
	}
	if err := lab.build(ctx, cfg.Rate, cfg.TCPCongestion); err != nil {
		return nil, errors.Join(err, lab.Close())
	}
	return lab, nil
}

func (l *Lab) build(ctx context.Context, rate, cc string) error {
	br := l.bridgeNS
	steps := [][]string{
		{"ip", "netns", "add", br},
		{"ip", "-n", br, "link", "set", "lo", "up"},
	}
	steps = append(steps, l.switchSteps(bridgeName)...)
	for i, h := range l.Hosts {
		port := bridgePort(i)
		steps = append(steps,
			[]string{"ip", "netns", "add", h.NS},
			[]string{"ip", "-n", h.NS, "link", "set", "lo", "up"},
			// Both ends are created directly in their namespaces: the root namespace never sees them.
			[]string{"ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", h.Iface, "netns", h.NS},
			[]string{"ip", "-n", br, "link", "set", port, "master", bridgeName, "up"},
			[]string{"ip", "-n", h.NS, "addr", "add", netip.PrefixFrom(h.IP, l.Subnet.Bits()).String(), "dev", h.Iface},
			[]string{"ip", "-n", h.NS, "link", "set", h.Iface, "up"},
		)
		if cc != "" {
			steps = append(steps, []string{"ip", "netns", "exec", h.NS, "sysctl", "-q", "-w", "net.ipv4.tcp_congestion_control=" + cc})
		}
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	if rate != "" {
		for i := range l.Hosts {
			if err := l.Shape(i, rate); err != nil {
				return err
			}
		}
	}
	return nil
}

func bridgePort(i int) string { return "v" + strconv.Itoa(i) }

// switchSteps creates and starts a switch (bridge) in the bridge namespace: a plain learning switch, no STP delay,
// and multicast (mDNS) flooded to every port rather than filtered by snooping state that no querier on the lab
// would ever fill in.
func (l *Lab) switchSteps(name string) [][]string {
	return [][]string{
		{"ip", "-n", l.bridgeNS, "link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0", "mcast_snooping", "0"},
		{"ip", "-n", l.bridgeNS, "link", "set", name, "up"},
	}
}

// Command returns a command that runs name with args inside host i's namespace (through `ip netns exec`, which
// execs in place, so the process's PID is the command's own). A bad index makes Start fail with ErrNoHost.
func (l *Lab) Command(ctx context.Context, i int, name string, args ...string) *exec.Cmd {
	if i < 0 || i >= len(l.Hosts) {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Err = fmt.Errorf("%w: %d (lab has %d)", ErrNoHost, i, len(l.Hosts))
		return cmd
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Hosts[i].NS, name}, args...)...)
}

// Shape limits host i to rate in both directions: egress of its eth0 (upload) and egress of its bridge port
// (download), each with a tbf qdisc. An empty rate removes the shaping.
func (l *Lab) Shape(i int, rate string) error {
	var bps uint64
	if rate != "" {
		var err error
		if bps, err = ParseRate(rate); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	h, err := l.host(i)
	if err != nil {
		return err
	}
	ctx := context.Background()
	ends := [][2]string{{h.NS, h.Iface}, {l.bridgeNS, bridgePort(i)}}
	for _, e := range ends {
		if bps == 0 {
			if l.rates[i] == 0 {
				return nil
			}
			if err := run(ctx, "tc", "-n", e[0], "qdisc", "del", "dev", e[1], "root"); err != nil {
				return err
			}
			continue
		}
		args := append([]string{"tc", "-n", e[0], "qdisc", "replace", "dev", e[1], "root"}, tbfArgs(bps)...)
		if err := run(ctx, args...); err != nil {
			return err
		}
	}
	l.rates[i] = bps
	return nil
}

// tbfArgs returns a tbf qdisc for bps bit/s. The bucket holds 10 ms of traffic (at least 16 KiB, several full
// frames) so a single TSO burst does not stall the link; the queue holds 25 ms, enough to keep the link busy
// without adding much latency on a LAN with no other delay.
func tbfArgs(bps uint64) []string {
	burst := max(bps/8/100, 16<<10)
	return []string{"tbf", "rate", strconv.FormatUint(bps, 10) + "bit", "burst", strconv.FormatUint(burst, 10), "latency", "25ms"}
}

// Rate returns host i's current shaping in bit/s, 0 if unshaped.
func (l *Lab) Rate(i int) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.host(i); err != nil {
		return 0, err
	}
	return l.rates[i], nil
}

// Partition cuts host i off the LAN by setting its bridge port down, as if its cable were pulled: the host keeps
// its address and routes, and its peers' packets to it are dropped.
func (l *Lab) Partition(i int) error { return l.setPort(i, "down") }

// Heal reconnects host i after Partition.
func (l *Lab) Heal(i int) error { return l.setPort(i, "up") }

// Split cuts the LAN in two: the given hosts' ports move to a second switch, so they reach each other and nobody
// else (multicast included), as if the link between two racks failed. Join undoes it.
func (l *Lab) Split(hosts []int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, i := range hosts {
		if _, err := l.host(i); err != nil {
			return err
		}
	}
	if !l.split {
		for _, s := range l.switchSteps(splitBridge) {
			if err := run(context.Background(), s...); err != nil {
				return err
			}
		}
		l.split = true
	}
	return l.attach(hosts, splitBridge)
}

// Join puts every host back on one switch after Split.
func (l *Lab) Join() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	all := make([]int, len(l.Hosts))
	for i := range all {
		all[i] = i
	}
	return l.attach(all, bridgeName)
}

// attach moves the hosts' ports to the switch sw; l.mu must be held.
func (l *Lab) attach(hosts []int, sw string) error {
	for _, i := range hosts {
		if err := run(context.Background(), "ip", "-n", l.bridgeNS, "link", "set", bridgePort(i), "master", sw); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) setPort(i int, state string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.host(i); err != nil {
		return err
	}
	return run(context.Background(), "ip", "-n", l.bridgeNS, "link", "set", bridgePort(i), state)
}

// host returns host i; l.mu must be held.
func (l *Lab) host(i int) (Host, error) {
	if l.closed {
		return Host{}, ErrClosed
	}
	if i < 0 || i >= len(l.Hosts) {
		return Host{}, fmt.Errorf("%w: %d (lab has %d)", ErrNoHost, i, len(l.Hosts))
	}
	return l.Hosts[i], nil
}

// Close kills every process still running in the lab's namespaces and removes the namespaces, and with them the
// bridge, veths and qdiscs. Calling it again does nothing.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := removeRun(l.prefix, l.ID)
	if l.lock != nil {
		err = errors.Join(err, unlockRun(l.lock))
		l.lock = nil
	}
	return err
}

// CleanupStale removes what labs with this prefix left behind when their process died without Close (killed by
// a test timeout, SIGKILL, a crash): their namespaces, processes and lock files. Labs whose process is alive are
// left alone, so it is safe to call while other labs run. It returns how many stale labs it removed.
func CleanupStale(prefix string) (int, error) {
	if !prefixRE.MatchString(prefix) {
		return 0, fmt.Errorf("%w: prefix %q", ErrConfig, prefix)
	}
	ids := map[string]bool{}
	for _, dir := range []string{netnsDir, lockDir} {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("netlab: list %s: %w", dir, err)
		}
		for _, e := range entries {
			if id, ok := runID(prefix, e.Name()); ok {
				ids[id] = true
			}
		}
	}
	removed := 0
	var errs []error
	for id := range ids {
		f, err := os.OpenFile(lockPath(prefix, id), os.O_RDWR, 0)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// Namespaces without a lock file: the run died between lock removal and namespace removal.
		case err != nil:
			errs = append(errs, fmt.Errorf("netlab: open lock of run %s: %w", id, err))
			continue
		default:
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				f.Close()
				if errors.Is(err, unix.EWOULDBLOCK) {
					continue // alive
				}
				errs = append(errs, fmt.Errorf("netlab: lock run %s: %w", id, err))
				continue
			}
		}
		err = removeRun(prefix, id)
		if f != nil {
			err = errors.Join(err, unlockRun(f))
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// runID extracts the run ID from a namespace name (<prefix>-<id>-...) or a lock file name (<prefix>-<id>.lock).
func runID(prefix, name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok || len(rest) < idLen {
		return "", false
	}
	id, tail := rest[:idLen], rest[idLen:]
	if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
		return "", false
	}
	if !strings.HasPrefix(tail, "-") && tail != ".lock" {
		return "", false
	}
	return id, true
}

func lockPath(prefix, id string) string { return filepath.Join(lockDir, prefix+"-"+id+".lock") }

// newRunLock picks a fresh run ID and takes its lock: a file created exclusively and flocked for the lab's life.
// The kernel drops the flock when the process dies, which is how CleanupStale tells dead runs from live ones.
func newRunLock(prefix string) (string, *os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return "", nil, fmt.Errorf("netlab: create lock directory: %w", err)
	}
	for range 10 {
		var b [idLen / 2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", nil, fmt.Errorf("netlab: run ID: %w", err)
		}
		id := hex.EncodeToString(b[:])
		if _, err := os.Stat(filepath.Join(netnsDir, prefix+"-"+id+"-br")); err == nil {
			continue // a stale run holds this ID
		}
		path := lockPath(prefix, id)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", nil, fmt.Errorf("netlab: create lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue // CleanupStale took it between create and lock; it will remove the file
		}
		// CleanupStale may have locked, removed and unlocked the file between create and lock: then ours is an
		// unlinked file that protects nothing.
		if same, err := sameFile(f, path); err != nil || !same {
			f.Close()
			continue
		}
		return id, f, nil
	}
	return "", nil, fmt.Errorf("netlab: could not take a run lock in %s after 10 tries", lockDir)
}

func sameFile(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// unlockRun removes a held run lock file, then releases it.
func unlockRun(f *os.File) error {
	err := os.Remove(f.Name())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, f.Close())
}

// removeRun kills the processes in a run's namespaces and deletes the namespaces, bridge namespace first so every
// veth pair (and with it the host's link) is gone even if a host namespace lingers.
func removeRun(prefix, id string) error {
	base := prefix + "-" + id + "-"
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("netlab: list %s: %w", netnsDir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), base) {
			names = append(names, e.Name())
		}
	}
	// Bridge namespace ("-br") sorts before hosts ("-h<i>").
	var errs []error
	for _, ns := range names {
		if err := killNS(ns); err != nil {
			errs = append(errs, err)
		}
		if err := run(context.Background(), "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killNS SIGKILLs every process in namespace ns.
func killNS(ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return fmt.Errorf("netlab: ip netns pids %s: %w", ns, err)
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		// Never ourselves: a goroutine of ours may have moved the main thread into ns for a moment (see inNS).
		if err != nil || pid <= 1 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("netlab: kill pid %d in %s: %w", pid, ns, err)
		}
	}
	return nil
}

// run runs an ip/tc command; its error carries the command line and the tool's message.
func run(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		msg := strings.Join(strings.Fields(string(out)), " ")
		return fmt.Errorf("netlab: %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return nil
}

// LinkStats are the byte counters of a host's HostIface, Ethernet headers included (what tc shapes).
type LinkStats struct {
	RxBytes, TxBytes uint64
}

// Stats reads host i's interface counters. sysfs shows a namespace's devices only when mounted inside it, which
// `ip netns exec` does, so the counters are read by a command run in the host.
func (l *Lab) Stats(ctx context.Context, i int) (LinkStats, error) {
	dir := "/sys/class/net/" + HostIface + "/statistics/"
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := l.Command(ctx, i, "cat", dir+"rx_bytes", dir+"tx_bytes").Output()
	if err != nil {
		return LinkStats{}, fmt.Errorf("netlab: read counters of host %d: %w", i, err)
	}
	return parseStats(out)
}

func parseStats(out []byte) (LinkStats, error) {
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return LinkStats{}, fmt.Errorf("netlab: interface counters %q: want rx and tx bytes", out)
	}
	var v [2]uint64
	for j := range v {
		var err error
		if v[j], err = strconv.ParseUint(f[j], 10, 64); err != nil {
			return LinkStats{}, fmt.Errorf("netlab: interface counter %q: %w", f[j], err)
		}
	}
	return LinkStats{RxBytes: v[0], TxBytes: v[1]}, nil
}
