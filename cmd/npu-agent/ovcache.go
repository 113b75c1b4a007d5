package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/ovcache/share"
)

// newOVCacheSharer translates the config's ovcache section into the sharer of application cache directories
// (nil when none is configured). Owners and groups are names or numeric ids.
func newOVCacheSharer(cfg config.Config, ag *agent.Agent, reg prometheus.Registerer, log *slog.Logger) (*share.Sharer, error) {
	if len(cfg.OVCache.Dirs) == 0 {
		return nil, nil
	}
	dirs, err := ovcacheDirs(cfg)
	if err != nil {
		return nil, err
	}
	return share.New(share.Options{Dirs: dirs, Agent: ag, StateDir: filepath.Join(cfg.DataDir, "ovcache"),
		MaxEntrySize: int64(cfg.OVCache.MaxEntrySize), Logger: log, Registerer: reg})
}

// ovcacheDirs translates ovcache.dirs; the error joins every problem found.
func ovcacheDirs(cfg config.Config) ([]share.Dir, error) {
	var dirs []share.Dir
	var errs []error
	for i, d := range cfg.OVCache.Dirs {
		sd := share.Dir{Path: d.Path, UID: -1, GID: -1, Mode: 0o440, Build: d.OpenVINOBuild}
		if d.Mode != "" {
			m, err := strconv.ParseUint(d.Mode, 8, 32)
			if err != nil || m > 0o777 {
				errs = append(errs, usageError{fmt.Errorf("ovcache.dirs[%d].mode: %q is not octal permission bits", i, d.Mode)})
			}
			sd.Mode = fs.FileMode(m)
		}
		if d.Owner != "" {
			uid, err := lookupID(d.Owner, func(n string) (string, error) {
				u, err := user.Lookup(n)
				if err != nil {
					return "", err
				}
				return u.Uid, nil
			})
			if err != nil {
				errs = append(errs, usageError{fmt.Errorf("ovcache.dirs[%d].owner: %w", i, err)})
			}
			sd.SetOwner, sd.UID = true, uid
		}
		if d.Group != "" {
			gid, err := lookupID(d.Group, func(n string) (string, error) {
				g, err := user.LookupGroup(n)
				if err != nil {
					return "", err
				}
				return g.Gid, nil
			})
			if err != nil {
				errs = append(errs, usageError{fmt.Errorf("ovcache.dirs[%d].group: %w", i, err)})
			}
			sd.SetOwner, sd.GID = true, gid
		}
		dirs = append(dirs, sd)
	}
	return dirs, errors.Join(errs...)
}

func lookupID(s string, byName func(string) (string, error)) (int, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	id, err := byName(s)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(id)
}
