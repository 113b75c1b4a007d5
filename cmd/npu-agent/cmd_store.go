package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/api/server"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/config"
)

// storeAdmin is the running daemon's store (through its API) or, when no daemon answers, the store opened in
// this process, which only its owner may do (checkStoreOwner). Both run api/server.StoreAdmin's code.
func (a *app) storeAdmin(ctx context.Context) (api.StoreAdmin, func() error, error) {
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, nil, err
	}
	c, err := api.Dial(ctx, cfg.SocketPath())
	if err == nil {
		return c, c.Close, nil
	}
	if !errors.Is(err, api.ErrNoDaemon) {
		return nil, nil, err
	}
	l, err := a.openLocalWith(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return localStoreAdmin(l), l.Close, nil
}

func localStoreAdmin(l *local) *server.StoreAdmin {
	return &server.StoreAdmin{Agent: l.agent, Quota: uint64(l.cfg.Store.Quota), RolloutDir: rolloutDir(l.cfg)}
}

// rolloutDir is the rollout engine's state directory.
func rolloutDir(cfg config.Config) string { return filepath.Join(cfg.DataDir, "rollouts") }

// withStore runs a store command against the daemon or the local store, closing it afterwards.
func (a *app) withStore(run func(cmd *cobra.Command, sa api.StoreAdmin, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		sa, closeFn, err := a.storeAdmin(cmd.Context())
		if err != nil {
			return err
		}
		defer closeFn()
		return run(cmd, sa, args)
	}
}

func (a *app) lsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List stored blobs, the records that index them and the rollouts that pinned them",
		Args:  exactArgs(0),
		RunE: a.withStore(func(cmd *cobra.Command, sa api.StoreAdmin, _ []string) error {
			out, err := sa.ListBlobs(cmd.Context())
			if err != nil {
				return err
			}
			if out == nil {
				out = []api.StoredBlob{}
			}
			return a.print(out, func(w io.Writer) error {
				var rows [][]string
				for _, r := range out {
					state := "complete"
					if !r.Complete {
						state = fmt.Sprintf("partial %d/%d", r.HaveChunks, r.Chunks)
					}
					pinned := "no"
					switch {
					case len(r.PinnedBy) > 0:
						pinned = "rollout " + strings.Join(r.PinnedBy, ", ")
					case r.Pinned:
						pinned = "yes"
					}
					model, prof := "-", "-"
					if len(r.Records) > 0 {
						model, prof = short(r.Records[0].ModelID), short(r.Records[0].ProfileID)
					}
					rows = append(rows, []string{r.CID, humanBytes(r.Size), state, pinned, ago(r.LastAccess), model, prof})
				}
				return table(w, []string{"CID", "SIZE", "STATE", "PINNED", "USED", "MODEL", "PROFILE"}, rows)
			})
		}),
	}
}

func (a *app) gcCmd() *cobra.Command {
	var target string
	var dryRun bool
	c := &cobra.Command{
		Use:   "gc [--target SIZE] [--dry-run]",
		Short: "Remove least recently used unpinned blobs until the store fits store.quota or --target",
		Long: "Remove least recently used blobs until the store is at most --target bytes, or store.quota without\n" +
			"--target. With neither (store.quota 0 means no quota) nothing is removed. Pinned blobs (yours and the\n" +
			"rollouts') and blobs in use are never removed. --dry-run lists what would go.",
		Args: exactArgs(0),
		RunE: a.withStore(func(cmd *cobra.Command, sa api.StoreAdmin, _ []string) error {
			req := api.GCRequest{DryRun: dryRun}
			if target != "" {
				b, err := parseSize(target)
				if err != nil {
					return usageError{fmt.Errorf("--target: %w", err)}
				}
				req.Target = &b
			}
			res, err := sa.GC(cmd.Context(), req)
			if err != nil {
				return err
			}
			return a.print(res, func(w io.Writer) error {
				if res.Note != "" {
					_, err := fmt.Fprintln(w, res.Note)
					return err
				}
				verb, freed := "removed", "freed"
				if res.DryRun {
					verb, freed = "would remove", "would free"
				}
				for _, c := range res.Removed {
					fmt.Fprintln(w, verb, c)
				}
				_, err := fmt.Fprintf(w, "%s %s: store %s -> %s (target %s; %d pinned blobs kept)\n", freed,
					humanBytes(res.FreedBytes), humanBytes(res.SizeBefore), humanBytes(res.SizeAfter), humanBytes(*res.Target), res.Kept)
				return err
			})
		}),
	}
	c.Flags().StringVar(&target, "target", "", "shrink the store to at most this size (e.g. 20GiB; 0 removes every unpinned blob); default store.quota")
	c.Flags().StringVar(&target, "quota", "", "same as --target")
	_ = c.Flags().MarkHidden("quota")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be removed")
	return c
}

func (a *app) verifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every stored chunk and each blob's whole sha256; report what does not match (exit code 7 if any)",
		Args:  exactArgs(0),
		RunE: a.withStore(func(cmd *cobra.Command, sa api.StoreAdmin, _ []string) error {
			rep, err := sa.Verify(cmd.Context())
			if err != nil {
				return err
			}
			if err := a.print(rep, func(w io.Writer) error {
				for _, c := range rep.Corrupt {
					if c.Index < 0 {
						fmt.Fprintf(w, "corrupt: blob %s manifest\n", c.Blob)
						continue
					}
					fmt.Fprintf(w, "corrupt: blob %s chunk %d (%s)\n", c.Blob, c.Index, c.Chunk)
				}
				for _, c := range rep.WrongSHA256 {
					fmt.Fprintf(w, "wrong sha256: blob %s: its chunks are intact, its manifest claims another whole-blob sha256\n", c)
				}
				_, err := fmt.Fprintf(w, "verified %d blobs, %d chunks, %s: %d corrupt\n", rep.Blobs, rep.Chunks, humanBytes(rep.Bytes), len(rep.Corrupt))
				return err
			}); err != nil {
				return err
			}
			if len(rep.Corrupt) > 0 || len(rep.WrongSHA256) > 0 {
				return withCode(fmt.Errorf("%d corrupt chunks, %d wrong whole-blob sha256", len(rep.Corrupt), len(rep.WrongSHA256)), exitCorrupt)
			}
			return nil
		}),
	}
}

func (a *app) rmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm CID",
		Short: "Remove a blob and its records (refused while pinned)",
		Args:  exactArgs(1),
		RunE: a.withStore(func(cmd *cobra.Command, sa api.StoreAdmin, args []string) error {
			c, err := blobstore.ParseCID(args[0])
			if err != nil {
				return usageError{err}
			}
			if err := sa.RemoveBlob(cmd.Context(), c); err != nil {
				return err
			}
			return a.print(api.RemoveResponse{Removed: c.String()}, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, "removed", c)
				return err
			})
		}),
	}
}

func (a *app) pinCmd(pin bool) *cobra.Command {
	use, short := "pin CID", "Keep a blob through gc"
	if !pin {
		use, short = "unpin CID", "Let gc remove a blob again (a blob a rollout pinned needs --force)"
	}
	var force bool
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(1),
		RunE: a.withStore(func(cmd *cobra.Command, sa api.StoreAdmin, args []string) error {
			c, err := blobstore.ParseCID(args[0])
			if err != nil {
				return usageError{err}
			}
			res, err := sa.Pin(cmd.Context(), api.PinRequest{CID: c.String(), Pinned: pin, Force: force})
			if err != nil {
				return err
			}
			return a.print(res, func(w io.Writer) error {
				if res.Note != "" {
					fmt.Fprintln(a.stderr, "npu-agent: warning:", res.Note)
				}
				_, err := fmt.Fprintf(w, "%s pinned=%s\n", res.CID, strconv.FormatBool(res.Pinned))
				return err
			})
		}),
	}
	if !pin {
		c.Flags().BoolVar(&force, "force", false, "unpin even though a rollout pinned the blob (gc may then delete it)")
	}
	return c
}
