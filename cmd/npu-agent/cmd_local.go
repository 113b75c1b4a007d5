package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
)

func (a *app) fingerprintCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "fingerprint",
		Short: "Print this host's NPU stack fingerprint and compatibility class",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			backend, fp, notes, err := probe(cmd.Context(), cfg)
			if err != nil {
				return hostError(err, notes)
			}
			out := struct {
				Fingerprint compat.Fingerprint `json:"fingerprint"`
				Hash        string             `json:"hash"`
				Class       string             `json:"class"`
				Compiler    string             `json:"compiler"`
				Notes       []string           `json:"notes,omitempty"`
			}{Fingerprint: fp, Compiler: "none"}
			if out.Hash, err = fp.Hash(); err != nil {
				return err
			}
			if out.Class, err = compat.Class(compat.DefaultRules(), fp, ""); err != nil {
				out.Notes = append(out.Notes, "no compatibility class: "+err.Error())
			}
			if backend != nil {
				out.Compiler = backend.Name()
			}
			out.Notes = append(out.Notes, notes...)
			return a.print(out, func(w io.Writer) error {
				rows := [][]string{
					{"openvino", fp.OpenVINO}, {"arch", fp.Arch}, {"driver_version", fp.DriverVersion},
					{"compiler_type", fp.CompilerType}, {"compiler_version", fp.CompilerVersion},
					{"max_tiles", strconv.Itoa(fp.MaxTiles)}, {"stepping", strconv.Itoa(fp.Stepping)},
					{"firmware_mi", fp.FirmwareMI}, {"runtime_requirements", fp.RuntimeRequirements},
					{"umd_version", fp.UMDVersion}, {"kernel_driver", fp.KernelDriver},
					{"os", fp.OS}, {"cpu_arch", fp.CPUArch},
					{"hash", out.Hash}, {"class", out.Class}, {"compiler", out.Compiler},
				}
				for _, n := range out.Notes {
					rows = append(rows, []string{"note", n})
				}
				return table(w, []string{"FIELD", "VALUE"}, rows)
			})
		},
	}
}

func (a *app) inspectCmd() *cobra.Command {
	var kind string
	c := &cobra.Command{
		Use:   "inspect BLOB",
		Short: "Parse a blob's OVNPU metadata trailer and say whether this host can load it",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			t, err := compat.ParseTrailer(f, st.Size())
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			out := struct {
				File     string           `json:"file"`
				Size     int64            `json:"size"`
				Trailer  *compat.Trailer  `json:"trailer"`
				Host     string           `json:"host_check"`
				Decision *compat.Decision `json:"decision,omitempty"`
			}{File: args[0], Size: st.Size(), Trailer: t}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			if _, host, notes, err := probe(cmd.Context(), cfg); err != nil {
				out.Host = "unknown: " + hostError(err, notes).Error()
			} else {
				d := compat.CheckBlob(compat.DefaultRules(), t, host, kind)
				out.Decision = &d
				out.Host = "incompatible"
				if d.Compatible {
					out.Host = "compatible"
				}
			}
			return a.print(out, func(w io.Writer) error {
				rows := [][]string{
					{"size", strconv.FormatInt(st.Size(), 10)}, {"metadata", t.Metadata.String()},
					{"openvino", t.OpenVINO.String()}, {"payload_size", strconv.FormatUint(t.PayloadSize, 10)},
					{"compiler_version", t.CompilerVersionString()}, {"batch", strconv.FormatInt(t.Batch, 10)},
					{"encrypted", strconv.FormatBool(t.Encrypted)}, {"blob_type", t.BlobType.String()},
					{"init_sizes", fmt.Sprint(t.InitSizes)}, {"input_layouts", strings.Join(t.InputLayouts, ",")},
					{"output_layouts", strings.Join(t.OutputLayouts, ",")},
					{"runtime_requirements", t.RuntimeRequirements}, {"this host", out.Host},
				}
				if out.Decision != nil {
					for _, r := range out.Decision.Reasons {
						rows = append(rows, []string{"reason", r})
					}
				}
				return table(w, []string{"FIELD", "VALUE"}, rows)
			})
		},
	}
	c.Flags().StringVar(&kind, "kind", "", `blob kind: "" or "llm" (LLM/NPUW blobs need the exact OpenVINO version)`)
	return c
}

func (a *app) lsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List stored blobs and the records that index them",
		Args:  exactArgs(0),
		RunE: a.withLocal(func(cmd *cobra.Command, l *local, _ []string) error {
			ctx := cmd.Context()
			infos, err := l.store.List(ctx)
			if err != nil {
				return err
			}
			recs, err := l.store.Records(ctx, "", "")
			if err != nil {
				return err
			}
			type row struct {
				blobstore.Info
				Records []blobstore.Record `json:"records"`
			}
			byBlob := map[cid.Cid][]blobstore.Record{}
			for _, r := range recs {
				byBlob[r.Blob] = append(byBlob[r.Blob], r)
			}
			out := make([]row, 0, len(infos))
			for _, in := range infos {
				out = append(out, row{Info: in, Records: byBlob[in.CID]})
			}
			return a.print(out, func(w io.Writer) error {
				var rows [][]string
				for _, r := range out {
					state := "complete"
					if !r.Complete {
						state = fmt.Sprintf("partial %d/%d", r.HaveChunks, r.Chunks)
					}
					model, prof := "-", "-"
					if len(r.Records) > 0 {
						model, prof = short(r.Records[0].ModelID), short(r.Records[0].ProfileID)
					}
					rows = append(rows, []string{r.CID.String(), humanBytes(r.Size), state, strconv.FormatBool(r.Pinned),
						ago(r.LastAccess), model, prof})
				}
				return table(w, []string{"CID", "SIZE", "STATE", "PINNED", "USED", "MODEL", "PROFILE"}, rows)
			})
		}),
	}
}

func (a *app) gcCmd() *cobra.Command {
	var quota string
	c := &cobra.Command{
		Use:   "gc",
		Short: "Remove least-recently-used unpinned blobs until the store fits the quota",
		Args:  exactArgs(0),
		RunE: a.withLocal(func(cmd *cobra.Command, l *local, _ []string) error {
			q := uint64(l.cfg.Store.Quota)
			if quota != "" {
				b, err := parseSize(quota)
				if err != nil {
					return usageError{err}
				}
				q = b
			}
			res, err := l.agent.GC(cmd.Context(), q)
			if err != nil {
				return err
			}
			return a.print(res, func(w io.Writer) error {
				for _, c := range res.Removed {
					fmt.Fprintln(w, "removed", c)
				}
				_, err := fmt.Fprintf(w, "freed %s, store now %s\n", humanBytes(res.FreedBytes), humanBytes(res.SizeAfter))
				return err
			})
		}),
	}
	c.Flags().StringVar(&quota, "quota", "", "keep the store at most this big (e.g. 20GiB); default store.quota")
	return c
}

func (a *app) verifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every stored chunk and report corrupt ones (exit code 7 if any)",
		Args:  exactArgs(0),
		RunE: a.withLocal(func(cmd *cobra.Command, l *local, _ []string) error {
			rep, err := l.store.Verify(cmd.Context())
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
				_, err := fmt.Fprintf(w, "verified %d blobs, %d chunks, %s: %d corrupt\n", rep.Blobs, rep.Chunks, humanBytes(rep.Bytes), len(rep.Corrupt))
				return err
			}); err != nil {
				return err
			}
			if len(rep.Corrupt) > 0 {
				return withCode(fmt.Errorf("%d corrupt chunks", len(rep.Corrupt)), exitCorrupt)
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
		RunE: a.withLocal(func(cmd *cobra.Command, l *local, args []string) error {
			c, err := blobstore.ParseCID(args[0])
			if err != nil {
				return usageError{err}
			}
			if err := l.agent.Remove(cmd.Context(), c); err != nil {
				return err
			}
			return a.print(map[string]string{"removed": c.String()}, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, "removed", c)
				return err
			})
		}),
	}
}

func (a *app) pinCmd(pin bool) *cobra.Command {
	use, short := "pin CID", "Keep a blob through gc"
	if !pin {
		use, short = "unpin CID", "Let gc remove a blob again"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(1),
		RunE: a.withLocal(func(cmd *cobra.Command, l *local, args []string) error {
			c, err := blobstore.ParseCID(args[0])
			if err != nil {
				return usageError{err}
			}
			if err := l.store.Pin(cmd.Context(), c, pin); err != nil {
				return err
			}
			return a.print(map[string]any{"cid": c.String(), "pinned": pin}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%s pinned=%v\n", c, pin)
				return err
			})
		}),
	}
}

func short(id string) string {
	if len(id) > 16 {
		return id[:8] + "…" + id[len(id)-6:]
	}
	return id
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

// withLocal runs a command against the store opened in this process, closing it afterwards.
func (a *app) withLocal(run func(cmd *cobra.Command, l *local, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		l, err := a.openLocal(cmd.Context())
		if err != nil {
			return err
		}
		defer l.Close()
		return run(cmd, l, args)
	}
}
