package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api/server"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/metrics"
	"github.com/npu-agent/npu-agent/rollout"
)

// version is set at build time (-X main.version=...).
var version = "dev"

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
			return runDaemon(cmd.Context(), cfg, a.logger(cfg))
		},
	}
}

// runDaemon runs until ctx ends (SIGINT/SIGTERM), then shuts down in order: API, fleet, store.
func runDaemon(ctx context.Context, cfg config.Config, log *slog.Logger) (err error) {
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
	store, err := badgerstore.Open(filepath.Join(cfg.DataDir, "store"), badgerstore.Options{Logger: log})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, store.Close()) }()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg)
	if err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	opts := agent.Options{
		Store: store, Backend: backend, Host: host, Producer: "host:" + hostname, WorkDir: cfg.DataDir,
		Timeout: cfg.Compiler.Timeout, Logger: log, Metrics: m,
	}
	svc := &server.Service{Version: version, Quota: uint64(cfg.Store.Quota), Metrics: m}

	g, ctx := errgroup.WithContext(ctx)
	var fl *fleet
	if cfg.P2P.Enabled {
		if fl, err = startFleet(ctx, g, cfg, store, host, reg, m, log); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, fl.Close()) }()
		opts.Fleet, opts.Producer = fl, fl.ID()
		svc.PeerID, svc.Peers = fl.ID(), fl.APIPeers
	}
	ag, err := agent.New(opts)
	if err != nil {
		return hostError(err, notes)
	}
	svc.Agent = ag
	apiOpts := server.Options{Socket: cfg.SocketPath(), TCP: cfg.API.TCP, Gatherer: reg, Logger: log}
	if len(cfg.Rollout.TrustedKeys) > 0 {
		ro, err := startRollouts(ctx, g, cfg, ag, fl, log)
		if err != nil {
			return err
		}
		apiOpts.Rollouts = ro
	} else {
		log.Info("rollouts disabled: rollout.trusted_keys is empty")
	}
	srv := server.NewServer(svc, apiOpts)
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error { return gcLoop(ctx, ag, cfg.Store, log) })
	log.Info("npu-agent daemon running", "version", version, "socket", cfg.SocketPath(), "data_dir", cfg.DataDir,
		"compiler", backendName(backend), "peer_id", svc.PeerID)
	err = g.Wait()
	log.Info("npu-agent daemon stopped")
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// startRollouts follows the rollouts signed by the configured operator keys: state in <data_dir>/rollouts,
// source models in <data_dir>/models, manifests and status reports over the fleet when there is one.
func startRollouts(ctx context.Context, g *errgroup.Group, cfg config.Config, ag *agent.Agent, fl *fleet, log *slog.Logger) (*agent.Rollouts, error) {
	trust, err := rollout.NewTrustConfig(cfg.Rollout.TrustedKeys, cfg.Rollout.Threshold)
	if err != nil {
		return nil, usageError{fmt.Errorf("rollout.trusted_keys: %w", err)}
	}
	tags, err := rollout.ParseTags(cfg.Rollout.Tags)
	if err != nil {
		return nil, usageError{fmt.Errorf("rollout.tags: %w", err)}
	}
	kv, err := agent.OpenFileKV(filepath.Join(cfg.DataDir, "rollouts"))
	if err != nil {
		return nil, err
	}
	opts := agent.RolloutOptions{Agent: ag, KV: kv, Trust: trust, Tags: tags, ModelsDir: filepath.Join(cfg.DataDir, "models"), Logger: log}
	var ch *agent.RolloutChannels
	if fl != nil {
		ch = agent.NewRolloutChannels(fl.node)
		opts.Net = ch
	}
	ro, err := agent.NewRollouts(opts)
	if err != nil {
		return nil, err
	}
	if ch != nil {
		if err := ch.Open(ro); err != nil {
			return nil, err
		}
	}
	g.Go(func() error { return ro.Run(ctx) })
	log.Info("following rollouts", "trusted_keys", trust.KeyIDs(), "threshold", trust.Threshold(), "tags", cfg.Rollout.Tags)
	return ro, nil
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
