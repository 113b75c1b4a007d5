package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/config"
)

// local is a store, a compiler and an agent opened in this process (no daemon).
type local struct {
	cfg     config.Config
	store   *badgerstore.Store
	backend compile.Backend // nil when none is available
	host    compat.Fingerprint
	notes   []string
	agent   *agent.Agent
}

func (l *local) Close() error {
	if l.store == nil {
		return nil
	}
	return l.store.Close()
}

// probe builds the compiler backend and this host's fingerprint, without opening the store.
func probe(ctx context.Context, cfg config.Config) (compile.Backend, compat.Fingerprint, []string, error) {
	ccfg := compile.Config{
		Backend: cfg.Compiler.Backend, Python: cfg.Compiler.Python, Command: cfg.Compiler.Command,
		HelperDir: filepath.Join(cfg.DataDir, "helper"),
		Sim:       compile.SimOptions{CompileTime: cfg.Compiler.Sim.CompileTime, PayloadSize: int64(cfg.Compiler.Sim.BlobSize)},
	}
	// OpenVINO probes the stack itself; the command and sim backends compile for the fingerprint we assemble.
	var ov compile.Backend
	var notes []string
	if cfg.Compiler.Backend == compile.BackendOpenVINO || cfg.Compiler.Backend == compile.BackendAuto && len(cfg.Compiler.Command) == 0 {
		b, err := compile.New(ccfg)
		switch {
		case err == nil:
			ov = b
		case errors.Is(err, compile.ErrNoCompiler):
			notes = append(notes, err.Error())
		default:
			return nil, compat.Fingerprint{}, nil, err
		}
	}
	fp, more, err := agent.ProbeHost(ctx, cfg.SysfsRoot, ov, cfg.FingerprintOverride)
	notes = append(notes, more...)
	if err != nil {
		return nil, fp, notes, err
	}
	if ov != nil {
		return ov, fp, notes, nil
	}
	if cfg.Compiler.Backend == compile.BackendSim || cfg.Compiler.Backend == compile.BackendCommand || len(cfg.Compiler.Command) > 0 {
		ccfg.Fingerprint = fp
		b, err := compile.New(ccfg)
		if err != nil {
			return nil, fp, notes, err
		}
		return b, fp, notes, nil
	}
	return nil, fp, notes, nil
}

// openLocal opens the store in the data directory and builds an agent around it.
func (a *app) openLocal(ctx context.Context) (*local, error) {
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	return a.openLocalWith(ctx, cfg)
}

// openLocalWith opens cfg's store in this process, only as the store's owner (checkStoreOwner).
func (a *app) openLocalWith(ctx context.Context, cfg config.Config) (*local, error) {
	if err := checkStoreOwner(cfg.DataDir); err != nil {
		return nil, err
	}
	backend, host, notes, err := probe(ctx, cfg)
	if err != nil {
		return nil, hostError(err, notes)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	store, err := badgerstore.Open(filepath.Join(cfg.DataDir, "store"), badgerstore.Options{Logger: a.logger(cfg), Quota: uint64(cfg.Store.Quota)})
	if err != nil {
		return nil, err
	}
	hostname, _ := os.Hostname()
	ag, err := agent.New(agent.Options{
		Store: store, Backend: backend, Host: host, Producer: "host:" + hostname,
		WorkDir: cfg.DataDir, Timeout: cfg.Compiler.Timeout, Logger: a.logger(cfg),
	})
	if err != nil {
		store.Close()
		return nil, hostError(err, notes)
	}
	return &local{cfg: cfg, store: store, backend: backend, host: host, notes: notes, agent: ag}, nil
}

// hostError explains a fingerprint that cannot be assembled with what the probes said.
func hostError(err error, notes []string) error {
	if len(notes) == 0 {
		return err
	}
	return fmt.Errorf("%w (%s; set fingerprint_override to pin the stack)", err, strings.Join(notes, "; "))
}
