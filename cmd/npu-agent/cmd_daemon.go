package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/api/server"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/fleet"
	"github.com/npu-agent/npu-agent/internal/procs"
	"github.com/npu-agent/npu-agent/metrics"
	"github.com/npu-agent/npu-agent/rollout"
	"github.com/npu-agent/npu-agent/rollout/engine"
)

// version is set at build time (-X main.version=...).
var version = "dev"

// daemonExec, set by main, re-executes the daemon with sysmon kept awake (procs.SysmonSetting, design 6.9) before
// it opens anything; nil in tests, which run the daemon in their own process.
var daemonExec func() error

func (a *app) daemonCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "daemon",
		Short: "Run the agent: local API, store, gc and (when enabled) the fleet",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			log := a.logger(cfg)
			if daemonExec != nil {
				if err := daemonExec(); err != nil {
					log.Warn("running with the runtime's default sysmon", "err", err)
				}
			}
			return runDaemon(cmd.Context(), cfg, log)
		},
	}
}

// The agent is the rollout engine's ensurer; the fleet is the agent's Fleet and the engine's Net.
var (
	_ engine.Ensurer = (*agent.Agent)(nil)
	_ agent.Fleet    = (*fleet.Fleet)(nil)
	_ engine.Net     = (*fleet.RolloutChannels)(nil)
)

// runDaemon runs until ctx ends (SIGINT/SIGTERM) or a component fails, then shuts down in order: API, rollouts
// and gc, then the fleet, then the store.
func runDaemon(ctx context.Context, cfg config.Config, log *slog.Logger) (err error) {
	// Everything the config says is checked before any file, socket or port is opened.
	if err := checkDaemonConfig(cfg); err != nil {
		return err
	}
	backend, host, notes, err := probe(ctx, cfg)
	if err != nil {
		return hostError(err, notes)
	}
	for _, n := range notes {
		log.Info("probe", "note", n)
	}
	if backend == nil {
		log.Warn("no compiler available: blobs can only come from the store and peers", "hint", "install OpenVINO or configure compiler.backend")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	store, err := badgerstore.Open(filepath.Join(cfg.DataDir, "store"), badgerstore.Options{Logger: log, Quota: uint64(cfg.Store.Quota)})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, store.Close()) }()

	reg := prometheus.NewRegistry()
	// go_sched_gomaxprocs_threads besides the default Go metrics: the Ps internal/procs chose.
	gomaxprocs := collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/gomaxprocs:threads$`)}
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(gomaxprocs)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg)
	if err != nil {
		return err
	}
	if err := registerBuildInfo(reg); err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	opts := agent.Options{
		Store: store, Backend: backend, Host: host, Producer: "host:" + hostname, WorkDir: cfg.DataDir,
		Timeout: cfg.Compiler.Timeout, Logger: log, Metrics: m,
	}
	svc := &server.Service{Version: version, Quota: uint64(cfg.Store.Quota), Metrics: m, Hostname: hostname, Tags: cfg.Rollout.Tags}

	var token string // read before any socket opens
	if cfg.API.TokenFile != "" {
		if token, err = server.ReadToken(cfg.API.TokenFile); err != nil {
			return usageError{err}
		}
	}

	d := newDaemonGroup(ctx)
	var fl *fleet.Fleet
	if cfg.P2P.Enabled {
		if fl, err = fleet.New(ctx, cfg, store, host, version, reg, m, log); err != nil {
			return d.abort(err)
		}
		d.goLower(fl.Run)
		opts.Fleet, opts.Producer = fl, fl.ID()
		svc.PeerID, svc.Peers, svc.PeerHostname = fl.ID(), fl.APIPeers, fl.PeerHostname
		svc.PeerServing = fl.PeerServing()
		m.SetChunksServed(fl.ChunksServed)
		m.SetPeersRefused(fl.PeersRefused)
	}
	ag, err := agent.New(opts)
	if err != nil {
		return d.abort(hostError(err, notes))
	}
	svc.Agent = ag
	apiOpts := server.Options{Socket: cfg.SocketPath(), TCP: cfg.API.TCP, Gatherer: reg, Logger: log,
		Deny: apiDenyPaths(cfg), Token: token}
	if len(cfg.Rollout.TrustedKeys) > 0 {
		ro, err := newRollouts(cfg, ag, fl, log)
		if err != nil {
			return d.abort(err)
		}
		d.goUpper(ro.Run)
		apiOpts.Rollouts = ro
		m.SetRollouts(func() map[string]int { return rolloutStates(ro) })
	} else {
		log.Info("rollouts disabled: rollout.trusted_keys is empty")
	}
	// Application cache directories (issue 14): harvest and populate OpenVINO CACHE_DIR entries.
	sharer, err := newOVCacheSharer(ctx, cfg, ag, backend, fl, reg, log)
	if err != nil {
		return d.abort(err)
	} else if sharer != nil {
		d.goUpper(sharer.Run)
	}
	// The API serves the agent and, on /v1/store/*, the same store maintenance the CLI runs without a daemon.
	admin := &server.StoreAdmin{Agent: ag, Quota: uint64(cfg.Store.Quota), RolloutDir: rolloutDir(cfg)}
	srv := server.NewServer(struct {
		*server.Service
		*server.StoreAdmin
		cacheAdmin
	}{svc, admin, cacheAdmin{sharer, admin.RolloutPins}}, apiOpts)
	d.goUpper(srv.Run)
	d.goUpper(func(ctx context.Context) error { return gcLoop(ctx, ag, cfg.Store, log) })
	d.goUpper(procs.New(log).Run) // one P while the daemon needs less than a core (design 6.9)
	log.Info("npu-agent daemon running", "version", version, "socket", cfg.SocketPath(), "data_dir", cfg.DataDir,
		"compiler", backendName(backend), "peer_id", svc.PeerID)
	err = d.wait()
	log.Info("npu-agent daemon stopped")
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// checkDaemonConfig runs every check the daemon makes of its config (the p2p section's multiaddrs, peer IDs and
// fleet key; rollout keys and tags; the API token file; cache directories' owners, groups and modes, and that
// this process can give those owners and groups) without opening anything, and reports every problem at once.
// `config check` runs the same.
func checkDaemonConfig(cfg config.Config) error {
	var errs []error
	if cfg.P2P.Enabled {
		errs = append(errs, fleet.CheckConfig(cfg))
	}
	if len(cfg.Rollout.TrustedKeys) > 0 {
		if _, err := rollout.NewTrustConfig(cfg.Rollout.TrustedKeys, cfg.Rollout.Threshold); err != nil {
			errs = append(errs, fmt.Errorf("rollout.trusted_keys: %w", err))
		}
	}
	if _, err := rollout.ParseTags(cfg.Rollout.Tags); err != nil {
		errs = append(errs, fmt.Errorf("rollout.tags: %w", err))
	}
	if cfg.API.TokenFile != "" {
		if _, err := server.ReadToken(cfg.API.TokenFile); err != nil {
			errs = append(errs, fmt.Errorf("api.token_file: %w", err))
		}
	}
	if dirs, err := ovcacheDirs(cfg); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, checkOVCacheOwners(cfg, dirs))
	}
	if err := errors.Join(errs...); err != nil {
		return usageError{err}
	}
	return nil
}

// apiDenyPaths are the daemon's own files and directories, which no API client's model path may lead into.
func apiDenyPaths(cfg config.Config) []string {
	return []string{cfg.DataDir, cfg.RuntimeDir, filepath.Dir(cfg.SocketPath()), filepath.Dir(defaultConfigPath),
		cfg.P2P.FleetKeyFile, cfg.API.TokenFile}
}

// daemonGroup is the daemon: one errgroup of Run(ctx) components. They run until ctx ends or one of them fails.
// The lower layer (the fleet) is stopped only once the upper components (API, rollouts, gc) have returned, so
// requests still being answered at shutdown keep their peers.
type daemonGroup struct {
	g         *errgroup.Group
	cancel    context.CancelFunc
	upperCtx  context.Context
	upper     sync.WaitGroup
	lowerCtx  context.Context
	stopLower context.CancelFunc
}

func newDaemonGroup(ctx context.Context) *daemonGroup {
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	lctx, stop := context.WithCancel(context.WithoutCancel(gctx))
	return &daemonGroup{g: g, cancel: cancel, upperCtx: gctx, lowerCtx: lctx, stopLower: stop}
}

func (d *daemonGroup) goUpper(run func(context.Context) error) {
	d.upper.Add(1)
	d.g.Go(func() error {
		defer d.upper.Done()
		return run(d.upperCtx)
	})
}

func (d *daemonGroup) goLower(run func(context.Context) error) {
	d.g.Go(func() error { return run(d.lowerCtx) })
}

// wait waits for every component; call it once, after the last go.
func (d *daemonGroup) wait() error {
	d.g.Go(func() error {
		<-d.upperCtx.Done()
		d.upper.Wait()
		d.stopLower()
		return nil
	})
	err := d.g.Wait()
	d.cancel()
	return err
}

// abort stops the components started so far, for a failure while starting the others.
func (d *daemonGroup) abort(err error) error {
	d.cancel()
	werr := d.wait()
	if errors.Is(werr, context.Canceled) {
		werr = nil
	}
	return errors.Join(err, werr)
}

// newRollouts follows the rollouts signed by the configured operator keys: state in <data_dir>/rollouts,
// source models in <data_dir>/models, manifests and status reports over the fleet's rollout channels when there
// is a fleet (opened by engine.New).
func newRollouts(cfg config.Config, ag *agent.Agent, fl *fleet.Fleet, log *slog.Logger) (*engine.Rollouts, error) {
	trust, err := rollout.NewTrustConfig(cfg.Rollout.TrustedKeys, cfg.Rollout.Threshold)
	if err != nil {
		return nil, usageError{fmt.Errorf("rollout.trusted_keys: %w", err)}
	}
	tags, err := rollout.ParseTags(cfg.Rollout.Tags)
	if err != nil {
		return nil, usageError{fmt.Errorf("rollout.tags: %w", err)}
	}
	kv, err := engine.OpenFileKV(filepath.Join(cfg.DataDir, "rollouts"))
	if err != nil {
		return nil, err
	}
	opts := engine.Options{Agent: ag, Store: ag.Store(), KV: kv, Trust: trust, Tags: tags,
		ModelsDir: filepath.Join(cfg.DataDir, "models"), Logger: log}
	if fl != nil {
		opts.Net = fl.RolloutNet()
	}
	ro, err := engine.New(opts)
	if err != nil {
		return nil, err
	}
	log.Info("following rollouts", "trusted_keys", trust.KeyIDs(), "threshold", trust.Threshold(), "tags", cfg.Rollout.Tags)
	return ro, nil
}

// rolloutStates counts the rollouts ro follows by this agent's own state of each (npu_agent_rollouts).
func rolloutStates(ro api.Rollouts) map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rs, err := ro.List(ctx)
	if err != nil {
		return nil
	}
	n := map[string]int{}
	for _, r := range rs {
		switch {
		case !r.Selected:
			n["not_selected"]++
		case r.State == "":
			n[string(rollout.PhasePending)]++
		default:
			n[string(r.State)]++
		}
	}
	return n
}

// gcLoop keeps the store within its quota.
func gcLoop(ctx context.Context, ag *agent.Agent, sc config.Store, log *slog.Logger) error {
	if sc.Quota == 0 || sc.GCInterval <= 0 {
		return nil
	}
	t := time.NewTicker(sc.GCInterval)
	defer t.Stop()
	for {
		res, err := ag.GC(ctx, uint64(sc.Quota))
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("gc failed", "err", err)
		case len(res.Removed) > 0:
			log.Info("gc", "removed", len(res.Removed), "freed_bytes", res.FreedBytes, "size_after", res.SizeAfter)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func backendName(b interface{ Name() string }) string {
	if b == nil {
		return "none"
	}
	return b.Name()
}
