package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/fleet"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/share"
	"github.com/npu-agent/npu-agent/rollout"
)

// newOVCacheSharer translates the config's ovcache section into the sharer of application cache directories
// (nil when none is configured). Owners and groups are names or numeric ids. A directory without openvino_build
// starts from the build string of the agent's own OpenVINO (the helper's probe, design 5.5), if it has one.
func newOVCacheSharer(ctx context.Context, cfg config.Config, ag *agent.Agent, backend compile.Backend, fl *fleet.Fleet, reg prometheus.Registerer, log *slog.Logger) (*share.Sharer, error) {
	if len(cfg.OVCache.Dirs) == 0 {
		return nil, nil
	}
	dirs, err := ovcacheDirs(cfg)
	if err != nil {
		return nil, err
	}
	if ov, ok := backend.(*compile.OpenVINO); ok && slices.ContainsFunc(dirs, func(d share.Dir) bool { return d.Build == "" }) {
		pr, err := ov.ProbeProperties(ctx, "NPU")
		if err != nil {
			log.Warn("no OpenVINO build string from the helper; cache directories without openvino_build learn it from their entries", "err", err)
		}
		for i := range dirs {
			dirs[i].DefaultBuild = pr.OpenVINO
		}
	}
	opts := share.Options{Dirs: dirs, Agent: ag, StateDir: filepath.Join(cfg.DataDir, "ovcache"),
		MaxEntrySize: int64(cfg.OVCache.MaxEntrySize), Logger: log, Registerer: reg}
	if fl != nil {
		opts.OnRecord = fl.OnRecord
	}
	return share.New(opts)
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

// cacheAdmin is api.CacheAdmin over the sharer (none configured: no entries), in the daemon and in the CLI.
// rollouts, if set, maps blobs to the rollout versions that name them: the model of an entry a rollout wrote.
type cacheAdmin struct {
	s        *share.Sharer
	rollouts func() (map[string][]string, error)
}

func (c cacheAdmin) CacheEntries(ctx context.Context) ([]api.CacheEntry, error) {
	if c.s == nil {
		return []api.CacheEntry{}, nil
	}
	es, err := c.s.List(ctx)
	if err != nil {
		return nil, err
	}
	out := apiCacheEntries(es)
	if c.rollouts == nil {
		return out, nil
	}
	by, err := c.rollouts()
	if err != nil {
		return nil, err
	}
	for i, e := range out {
		if labels := by[e.Blob]; e.Blob != "" && len(labels) > 0 {
			out[i].Model = "rollout " + strings.Join(labels, ", ")
		}
	}
	return out, nil
}

func (c cacheAdmin) PruneCache(ctx context.Context, req api.CachePruneRequest) (api.CachePruneResponse, error) {
	out := api.CachePruneResponse{DryRun: req.DryRun, Removed: []api.CacheEntry{}}
	if c.s == nil {
		return out, nil
	}
	es, err := c.s.Prune(ctx, req.DryRun)
	out.Removed = apiCacheEntries(es)
	for _, e := range es {
		out.FreedBytes += uint64(e.Size)
	}
	return out, err
}

func apiCacheEntries(es []share.EntryInfo) []api.CacheEntry {
	out := make([]api.CacheEntry, 0, len(es))
	for _, e := range es {
		out = append(out, api.CacheEntry{Dir: e.Dir, Name: e.Name, Build: e.Build, Size: uint64(e.Size), LastUse: e.LastUse,
			Blob: e.Blob, Weightless: e.Weightless, Stale: e.Stale, Reason: e.Reason})
	}
	return out
}

// withCache runs a cache command against the daemon or, when none answers, the sharer of this process (its
// owner only, as for the store).
func (a *app) withCache(run func(cmd *cobra.Command, ca api.CacheAdmin) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		cfg, err := a.loadConfig()
		if err != nil {
			return err
		}
		c, err := api.Dial(ctx, cfg.SocketPath())
		if err == nil {
			defer c.Close()
			return run(cmd, c)
		}
		if !errors.Is(err, api.ErrNoDaemon) {
			return err
		}
		l, err := a.openLocalWith(ctx, cfg)
		if err != nil {
			return err
		}
		defer l.Close()
		s, err := newOVCacheSharer(ctx, cfg, l.agent, l.backend, nil, nil, a.logger(cfg))
		if err != nil {
			return err
		}
		return run(cmd, cacheAdmin{s, localStoreAdmin(l).RolloutPins})
	}
}

func (a *app) cacheCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cache",
		Short: "The applications' OpenVINO cache directories the agent shares (ovcache.dirs)",
	}
	c.AddCommand(&cobra.Command{
		Use:   "ls",
		Short: "List cache entries: build string, size, last use, and whether each is stale for this host",
		Args:  exactArgs(0),
		RunE: a.withCache(func(cmd *cobra.Command, ca api.CacheAdmin) error {
			out, err := ca.CacheEntries(cmd.Context())
			if err != nil {
				return err
			}
			return a.print(out, func(w io.Writer) error { return cacheTable(w, out) })
		}),
	})
	var dryRun bool
	prune := &cobra.Command{
		Use:   "prune [--dry-run]",
		Short: "Remove the cache entries that cannot load on this host any more (another build string or NPU stack)",
		Args:  exactArgs(0),
		RunE: a.withCache(func(cmd *cobra.Command, ca api.CacheAdmin) error {
			res, err := ca.PruneCache(cmd.Context(), api.CachePruneRequest{DryRun: dryRun})
			if err != nil {
				return err
			}
			return a.print(res, func(w io.Writer) error {
				verb, freed := "removed", "freed"
				if res.DryRun {
					verb, freed = "would remove", "would free"
				}
				for _, e := range res.Removed {
					fmt.Fprintf(w, "%s %s (%s)\n", verb, filepath.Join(e.Dir, e.Name), e.Reason)
				}
				_, err := fmt.Fprintf(w, "%s %s in %d stale entries\n", freed, humanBytes(res.FreedBytes), len(res.Removed))
				return err
			})
		}),
	}
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be removed")
	c.AddCommand(prune)
	return c
}

func cacheTable(w io.Writer, es []api.CacheEntry) error {
	var rows [][]string
	for _, e := range es {
		model, build, state := cmp.Or(e.Model, "-"), cmp.Or(e.Build, "-"), "ok"
		switch {
		case e.Stale:
			state = "stale: " + e.Reason
		case e.Weightless:
			state = "ok (weightless, not shared)"
		}
		origin := "application"
		if e.Blob != "" {
			origin = "fleet " + short(e.Blob)
		}
		rows = append(rows, []string{filepath.Join(e.Dir, e.Name), model, build, humanBytes(e.Size), ago(e.LastUse), origin, state})
	}
	return table(w, []string{"ENTRY", "MODEL", "BUILD", "SIZE", "USED", "FROM", "STATE"}, rows)
}

// manifestCacheEntries describes OpenVINO cache entry files for a rollout manifest (docs/design.md 10.6): each
// must be an entry (its name and contents parse), and the daemon must hold its bytes (it harvested the entry from
// a shared cache directory), found by sha256, since peers fetch it from there.
func manifestCacheEntries(ctx context.Context, sa api.StoreAdmin, paths []string) ([]rollout.CacheEntry, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	blobs, err := sa.ListBlobs(ctx)
	if err != nil {
		return nil, err
	}
	bySum := map[string]api.StoredBlob{}
	for _, b := range blobs {
		if b.Complete {
			bySum[b.SHA256] = b
		}
	}
	var out []rollout.CacheEntry
	for _, path := range paths {
		e, sum, size, err := readCacheEntry(path)
		if err != nil {
			return nil, usageError{fmt.Errorf("--cache-entry %s: %w", path, err)}
		}
		b, ok := bySum[sum]
		if !ok || b.Size != uint64(size) {
			return nil, usageError{fmt.Errorf("--cache-entry %s: the daemon does not hold this entry; list its directory in ovcache.dirs and wait until `npu-agent ls` shows it (kind ovcache)", path)}
		}
		out = append(out, rollout.CacheEntry{Name: filepath.Base(path), Build: e.Build, Size: size, SHA256: sum, Blob: b.CID})
	}
	slices.SortFunc(out, func(x, y rollout.CacheEntry) int {
		return cmp.Or(cmp.Compare(x.Name, y.Name), cmp.Compare(x.Build, y.Build))
	})
	return out, nil
}

// readCacheEntry parses the entry at path and hashes it.
func readCacheEntry(path string) (*ovcache.Entry, string, int64, error) {
	if err := ovcache.CheckName(filepath.Base(path)); err != nil {
		return nil, "", 0, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, "", 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, "", 0, errors.New("not a regular file")
	}
	e, err := ovcache.Parse(f, st.Size(), 0)
	if err != nil {
		return nil, "", 0, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size())); err != nil {
		return nil, "", 0, err
	}
	return e, hex.EncodeToString(h.Sum(nil)), st.Size(), nil
}
