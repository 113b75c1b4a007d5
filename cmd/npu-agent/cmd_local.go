package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/config"
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
			if host, err := a.hostFingerprint(cmd.Context(), cfg); err != nil {
				out.Host = "unknown: " + err.Error()
			} else {
				d := compat.CheckBlob(compat.DefaultRules(), t, host, kind)
				if d.Reasons == nil {
					d.Reasons = []string{} // JSON [], never null
				}
				out.Decision = &d
				out.Host = "incompatible"
				if d.Compatible {
					out.Host = "compatible"
				}
			}
			if err := a.print(out, func(w io.Writer) error {
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
			}); err != nil {
				return err
			}
			if out.Decision != nil && !out.Decision.Compatible {
				return withCode(fmt.Errorf("%s: %w", args[0], compat.ErrIncompatible), exitIncompatible)
			}
			return nil
		},
	}
	c.Flags().StringVar(&kind, "kind", "", `blob kind: "" or "llm" (LLM/NPUW blobs need the exact OpenVINO version)`)
	return c
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

// hostFingerprint is the running daemon's fingerprint of this host (what its loaders get blobs for), else the
// one this process probes.
func (a *app) hostFingerprint(ctx context.Context, cfg config.Config) (compat.Fingerprint, error) {
	c, err := a.dialDaemon(ctx, cfg)
	if err != nil {
		return compat.Fingerprint{}, err
	}
	if c != nil {
		defer c.Close()
		st, err := c.Status(ctx)
		if err != nil {
			return compat.Fingerprint{}, err
		}
		var fp compat.Fingerprint
		if err := json.Unmarshal(st.Fingerprint, &fp); err != nil {
			return fp, fmt.Errorf("the daemon's fingerprint: %w", err)
		}
		return fp, nil
	}
	_, host, notes, err := probe(ctx, cfg)
	if err != nil {
		return host, hostError(err, notes)
	}
	return host, nil
}
