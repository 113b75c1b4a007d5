//go:build linux

// Command fleetbench measures how long distribution systems take to copy one blob from one seed to every host of a
// simulated LAN, against the physical lower bound. It needs root (network namespaces) and the systems' programs;
// scripts/bench-fleet.sh installs them. See docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/npu-agent/npu-agent/internal/fleetbench"
	"github.com/npu-agent/npu-agent/internal/netlab"
)

// options are the flags that systems take.
type options struct {
	npuAgent string // npu-agent binary
}

// systems are the distribution systems fleetbench knows, by -systems name. Each call makes a fresh one.
var systems = map[string]func(options) fleetbench.System{
	"npu-agent": func(o options) fleetbench.System { return &fleetbench.NPUAgent{Binary: o.npuAgent} },
	// The same with a fleet authority's certificates instead of the fleet key (docs/design.md 6.2).
	"npu-agent-authority": func(o options) fleetbench.System {
		return &fleetbench.NPUAgent{Binary: o.npuAgent, Authority: true}
	},
	"nginx": func(options) fleetbench.System { return &fleetbench.Nginx{} },
	"aria2": func(options) fleetbench.System { return &fleetbench.Aria2{} },
	// The same with BitTorrent's encryption required on every connection (RC4 on every byte).
	"aria2-mse": func(options) fleetbench.System { return &fleetbench.Aria2{Encrypt: true} },
}

var defaultSystems = "npu-agent,nginx,aria2"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, fleetbench.ErrConfig) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fleetbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hosts := fs.Int("hosts", 12, "hosts in the lab including the seed")
	size := fs.String("size", "128MiB", "blob size (e.g. 128MiB, 1GiB)")
	rate := fs.String("rate", "100mbit", "every host's link rate in each direction (tc syntax)")
	names := fs.String("systems", defaultSystems, "comma-separated systems to run")
	dir := fs.String("dir", "", "working directory (default: a new temporary directory, removed afterwards)")
	timeout := fs.Duration("timeout", 10*time.Minute, "limit for each system's run")
	settle := fs.Duration("settle", 0, "idle time between each system's setup and its release (daemons past their start-up)")
	keep := fs.Bool("keep-failed", false, "keep a failed system's files (logs) in -dir, which must be given")
	scen := fs.String("scenario", "", "run a named scenario instead of -hosts/-size/-rate: "+strings.Join(scenarioNames(), ", ")+", or all")
	verbose := fs.Bool("v", false, "print every host's time and each system's link and CPU use per second (-timeline)")
	every := fs.Duration("timeline", fleetbench.TimelineInterval, "with -v, the link and CPU use interval (at least 100ms)")
	cc := fs.String("cc", DefaultCC, "every host's TCP congestion control (empty: this machine's)")
	var opts options
	fs.StringVar(&opts.npuAgent, "npu-agent", "npu-agent", "npu-agent binary, for the npu-agent system (a name is looked up in PATH)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", fleetbench.ErrConfig, fs.Args())
	}
	n, err := fleetbench.ParseSize(*size)
	if err != nil {
		return fmt.Errorf("%w: -size: %w", fleetbench.ErrConfig, err)
	}
	runs := []scenario{{name: "flags", hosts: *hosts, size: n, rate: *rate}}
	if *scen == "all" {
		runs = scenarios
	} else if *scen != "" {
		i := slices.IndexFunc(scenarios, func(s scenario) bool { return s.name == *scen })
		if i < 0 {
			return fmt.Errorf("%w: unknown scenario %q (known: %s, all)", fleetbench.ErrConfig, *scen, strings.Join(scenarioNames(), ", "))
		}
		runs = scenarios[i : i+1]
	}
	if _, err := pick(*names, opts); err != nil {
		return err
	}
	if strings.Contains(*names, "npu-agent") {
		// Daemons run from other directories: the path must be absolute.
		path, err := exec.LookPath(opts.npuAgent)
		if err == nil {
			path, err = filepath.Abs(path)
		}
		if err != nil {
			return fmt.Errorf("%w: -npu-agent: %w", fleetbench.ErrConfig, err)
		}
		opts.npuAgent = path
	}
	if err := netlab.Available(); err != nil {
		return err
	}
	if removed, err := netlab.CleanupStale(fleetbench.LabPrefix); err != nil {
		return err
	} else if removed > 0 {
		fmt.Fprintf(stderr, "removed %d stale labs of killed runs\n", removed)
	}
	if *keep && *dir == "" {
		return fmt.Errorf("%w: -keep-failed needs -dir", fleetbench.ErrConfig)
	}
	if *dir == "" {
		tmp, err := os.MkdirTemp("", "fleetbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		*dir = tmp
	}
	var failed []string
	for _, sc := range runs {
		cfg := fleetbench.Config{Hosts: sc.hosts, Size: sc.size, Rate: sc.rate, Dir: *dir, Timeout: *timeout, KeepFailed: *keep, Settle: *settle,
			Slow: sc.slow, SlowRate: sc.slowRate, SeedLeaves: sc.seedLeaves, Timeline: *every, TCPCongestion: *cc}
		if err := cfg.Validate(); err != nil {
			return err
		}
		chosen, _ := pick(*names, opts)
		fmt.Fprintf(stdout, "scenario %s: %s, TCP %s\n", sc.name, sc.describe(), ccName(*cc))
		results, err := fleetbench.Run(ctx, cfg, chosen, stderr)
		if werr := fleetbench.WriteTable(stdout, results); werr != nil {
			return werr
		}
		if *verbose {
			for _, r := range results {
				for _, h := range r.Hosts {
					fmt.Fprintf(stdout, "%s host %d: %.2fs\n", r.System, h.Host, h.Elapsed.Seconds())
				}
				if r.Err == nil {
					if err := fleetbench.WriteTimeline(stdout, r); err != nil {
						return err
					}
				}
			}
		}
		if err != nil {
			return err
		}
		for _, r := range results {
			if r.Err != nil {
				failed = append(failed, sc.name+"/"+r.System)
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// pick makes the systems named in names (comma-separated), fresh for one scenario.
func pick(names string, opts options) ([]fleetbench.System, error) {
	var chosen []fleetbench.System
	for _, name := range strings.Split(names, ",") {
		mk, ok := systems[strings.TrimSpace(name)]
		if !ok {
			return nil, fmt.Errorf("%w: unknown system %q (known: %s)", fleetbench.ErrConfig, name, defaultSystems)
		}
		chosen = append(chosen, mk(opts))
	}
	return chosen, nil
}

// scenario is one lab shape of `make bench-fleet` (docs/benchmarks.md).
type scenario struct {
	name       string
	hosts      int
	size       int64
	rate       string
	slow       []int // receivers at slowRate
	slowRate   string
	seedLeaves bool
}

// DefaultCC is the hosts' TCP congestion control: Linux's default, which a fleet of stock Debian or Ubuntu hosts
// runs. The lab's namespaces would otherwise copy the machine's (this VM's is bbr), and results would depend on
// it: on the 12-host benchmark the last host came 0.12-0.15 s sooner with cubic (docs/benchmarks.md, wave 15).
const DefaultCC = "cubic"

func ccName(cc string) string {
	if cc == "" {
		return "congestion control of this machine"
	}
	return cc
}

func (s scenario) describe() string {
	d := fmt.Sprintf("%d hosts (1 seed, %d receivers), blob %s, every link %s each way", s.hosts, s.hosts-1,
		fleetbench.FormatSize(s.size), s.rate)
	if len(s.slow) > 0 {
		d += fmt.Sprintf(", receivers %v at %s", s.slow, s.slowRate)
	}
	if s.seedLeaves {
		d += fmt.Sprintf(", the seed leaves once it reports every block delivered (npu-agent), else after sending %.2f copies"+
			" (systems whose seed is the only source skipped)", fleetbench.SeedLeaveCopies)
	}
	return d
}

// scenarios are the named shapes of issue 12: equal links, half the receivers at half the rate, 24 hosts, and
// the seed leaving once every block has left it.
var scenarios = []scenario{
	{name: "equal", hosts: 12, size: 128 << 20, rate: "100mbit"},
	{name: "half-rate", hosts: 12, size: 128 << 20, rate: "100mbit", slow: []int{6, 7, 8, 9, 10, 11}, slowRate: "50mbit"},
	{name: "24-hosts", hosts: 24, size: 64 << 20, rate: "50mbit"},
	{name: "seed-leaves", hosts: 12, size: 128 << 20, rate: "100mbit", seedLeaves: true},
}

func scenarioNames() []string {
	var ns []string
	for _, s := range scenarios {
		ns = append(ns, s.name)
	}
	return ns
}
