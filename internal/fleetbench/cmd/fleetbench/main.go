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
	"nginx":     func(options) fleetbench.System { return &fleetbench.Nginx{} },
	"aria2":     func(options) fleetbench.System { return &fleetbench.Aria2{} },
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
	keep := fs.Bool("keep-failed", false, "keep a failed system's files (logs) in -dir, which must be given")
	verbose := fs.Bool("v", false, "print every host's time and each system's link and CPU use per second")
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
	var chosen []fleetbench.System
	for _, name := range strings.Split(*names, ",") {
		name = strings.TrimSpace(name)
		mk, ok := systems[name]
		if !ok {
			return fmt.Errorf("%w: unknown system %q (known: %s)", fleetbench.ErrConfig, name, defaultSystems)
		}
		if name == "npu-agent" {
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
		chosen = append(chosen, mk(opts))
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
	cfg := fleetbench.Config{Hosts: *hosts, Size: n, Rate: *rate, Dir: *dir, Timeout: *timeout, KeepFailed: *keep}
	if err := cfg.Validate(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "fleet: %d hosts (1 seed, %d receivers), blob %s, every link %s each way\n",
		cfg.Hosts, cfg.Hosts-1, fleetbench.FormatSize(cfg.Size), cfg.Rate)
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
			return fmt.Errorf("%s failed", r.System)
		}
	}
	return nil
}
