package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
	"github.com/npu-agent/npu-agent/internal/tick"
)

// profileFlags names a model (--model) and builds a profile from --profile FILE and/or --device, --shape,
// --prop, --kind.
type profileFlags struct {
	model  string
	file   string
	device string
	shapes []string
	props  []string
	kind   string
}

func (p *profileFlags) register(c *cobra.Command, modelUsage string) {
	f := c.Flags()
	f.StringVar(&p.model, "model", "", modelUsage)
	f.StringVar(&p.file, "profile", "", "profile file (JSON or YAML: device, properties, shapes, kind)")
	p.registerOverrides(c)
}

// registerOverrides registers the flags that build a profile or override the file's, without --model and
// --profile.
func (p *profileFlags) registerOverrides(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&p.device, "device", "", "device (default NPU, or the profile file's)")
	f.StringArrayVar(&p.shapes, "shape", nil, "static input shape NAME=D1,D2,... (repeatable; overrides the file's)")
	f.StringArrayVar(&p.props, "prop", nil, "compile property KEY=VALUE (repeatable; overrides the file's)")
	f.StringVar(&p.kind, "kind", "", `"llm" for LLM/NPUW pipeline blobs`)
}

// load reads the model (hashing its files) and builds the canonical profile.
func (p *profileFlags) load() (compile.Model, compile.Profile, error) {
	if p.model == "" {
		return compile.Model{}, compile.Profile{}, usageError{fmt.Errorf("--model is required")}
	}
	prof, err := p.profile()
	if err != nil {
		return compile.Model{}, prof, err
	}
	m, err := compile.LoadModel(p.model)
	return m, prof, err
}

func (p *profileFlags) profile() (compile.Profile, error) {
	prof := compile.Profile{Device: "NPU"}
	if p.file != "" {
		var err error
		if prof, err = compile.LoadProfile(p.file); err != nil {
			return prof, usageError{err}
		}
	}
	if p.device != "" {
		prof.Device = p.device
	}
	if p.kind != "" {
		prof.Kind = p.kind
	}
	for _, s := range p.shapes {
		name, dims, err := compile.ParseShape(s)
		if err != nil {
			return prof, usageError{err}
		}
		if prof.Shapes == nil {
			prof.Shapes = map[string][]int64{}
		}
		prof.Shapes[name] = dims
	}
	for _, s := range p.props {
		k, v, err := compile.ParseProperty(s)
		if err != nil {
			return prof, usageError{err}
		}
		if prof.Properties == nil {
			prof.Properties = map[string]string{}
		}
		prof.Properties[k] = v
	}
	canon, err := prof.Canonical()
	if err != nil {
		return prof, usageError{err}
	}
	return canon, nil
}

// fetchResult is what fetch and put print.
type fetchResult struct {
	Source    agent.Source `json:"source"`
	CID       string       `json:"cid"`
	Path      string       `json:"path"`
	Size      uint64       `json:"size"`
	SHA256    string       `json:"sha256"`
	ModelID   string       `json:"model_id"`
	ProfileID string       `json:"profile_id"`
	Producer  string       `json:"producer"`
	WaitedFor string       `json:"waited_for,omitempty"`
}

func (a *app) printFetch(r fetchResult) error {
	return a.print(r, func(w io.Writer) error {
		return table(w, []string{"SOURCE", "CID", "SIZE", "PATH"}, [][]string{{string(r.Source), r.CID, humanBytes(r.Size), r.Path}})
	})
}

func (a *app) fetchCmd() *cobra.Command {
	var out string
	var pf profileFlags
	c := &cobra.Command{
		Use:   "fetch --model PATH [--profile FILE | --shape ...] [--out FILE]",
		Short: "Get the blob for this host: from the store, from peers, or compiled (and stored)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, prof, err := pf.load()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if done, err := a.fetchViaDaemon(cmd, pf.model, prof, out); done {
				return err
			}
			l, err := a.openLocal(ctx)
			if err != nil {
				return err
			}
			defer l.Close()
			bar := newProgressBar(a.stderr)
			res, err := l.agent.Ensure(ctx, m, prof, func(phase agent.Phase, done, total int64) {
				if phase == agent.PhaseCompile {
					bar.Update("compiling", 0, 0)
					return
				}
				bar.Update(string(phase), done, total)
			})
			bar.Done()
			if err != nil {
				return err
			}
			return a.finishFetch(cmd, l, res, out)
		},
	}
	c.Flags().StringVar(&out, "out", "", "also write the blob to this file (atomically)")
	pf.register(c, "model: an OpenVINO IR .xml (with its .bin) or an .onnx file")
	return c
}

func (a *app) finishFetch(cmd *cobra.Command, l *local, res agent.Result, out string) error {
	path, err := l.agent.Materialize(cmd.Context(), res.CID)
	if err != nil {
		return err
	}
	if out != "" {
		if path, err = filepath.Abs(out); err != nil {
			return err
		}
		if err := l.store.Export(cmd.Context(), res.CID, path); err != nil {
			return err
		}
	}
	return a.printFetch(fetchResult{
		Source: res.Source, CID: res.CID.String(), Path: path, Size: res.Record.Size, SHA256: res.SHA256,
		ModelID: res.Record.ModelID, ProfileID: res.Record.ProfileID, Producer: res.Record.Producer, WaitedFor: res.WaitedFor,
	})
}

func (a *app) putCmd() *cobra.Command {
	var fpFile string
	var pf profileFlags
	c := &cobra.Command{
		Use:   "put --model PATH [--profile FILE | --shape ...] BLOB",
		Short: "Register a blob compiled elsewhere, after checking its trailer against the rules",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, prof, err := pf.load()
			if err != nil {
				return err
			}
			var fp *compat.Fingerprint
			if fpFile != "" {
				o, err := compat.LoadOverride(fpFile)
				if err != nil {
					return usageError{err}
				}
				f, err := o.Apply(compat.Fingerprint{})
				if err != nil {
					return usageError{err}
				}
				fp = &f
			}
			if _, err := os.Stat(args[0]); err != nil {
				return err
			}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			if c, err := a.dialDaemon(cmd.Context(), cfg); err != nil {
				return err
			} else if c != nil {
				defer c.Close()
				if fp != nil {
					return usageError{errors.New("--compiled-on is not supported through the daemon: leave it out (the blob's trailer is checked against this host) or stop the daemon")}
				}
				return a.putViaDaemon(cmd, c, pf.model, prof, args[0])
			}
			l, err := a.openLocalWith(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer l.Close()
			res, err := l.agent.Put(cmd.Context(), args[0], m, prof, fp)
			if err != nil {
				return err
			}
			return a.finishFetch(cmd, l, res, "")
		},
	}
	c.Flags().StringVar(&fpFile, "compiled-on", "", "fingerprint file of the host that compiled it (default: this host)")
	pf.register(c, "the source model the blob was compiled from")
	return c
}

func parseSize(s string) (uint64, error) {
	b, err := config.ParseByteSize(s)
	return uint64(b), err
}

// fetchViaDaemon asks a running daemon (so the fleet serves the request); done is false when none answers.
func (a *app) fetchViaDaemon(cmd *cobra.Command, model string, prof compile.Profile, out string) (done bool, err error) {
	cfg, err := a.loadConfig()
	if err != nil {
		return true, err
	}
	ctx := cmd.Context()
	c, err := a.dialDaemon(ctx, cfg)
	if c == nil || err != nil {
		return err != nil, err
	}
	defer c.Close()
	abs, err := filepath.Abs(model)
	if err != nil {
		return true, err
	}
	// The API answers when done; meanwhile the daemon's status says what it is doing for this profile
	// (waiting for the fleet's compile, compiling, fetching n of m chunks): a progress line on a terminal, and
	// with --json one status job per change as a JSON line on stderr (stdout keeps the one result).
	pid, _ := prof.ID()
	stop := a.watchJob(ctx, c, pid)
	res, err := c.Ensure(ctx, api.EnsureRequest{Model: abs, Profile: prof})
	stop()
	if err != nil {
		return true, err
	}
	path := res.Path
	if out != "" {
		if path, err = filepath.Abs(out); err != nil {
			return true, err
		}
		if err := copyBlob(ctx, c, res, path); err != nil {
			return true, err
		}
	}
	return true, a.printFetch(fetchResult{
		Source: agent.Source(res.Source), CID: res.CID.String(), Path: path, Size: res.Size, SHA256: res.SHA256,
		ModelID: res.ModelID, ProfileID: res.ProfileID, Producer: res.From, WaitedFor: res.From,
	})
}

// watchJob polls the daemon's jobs for the job of profile pid until the returned stop is called, and shows it: a
// progress line on a terminal, JSON lines on stderr with --json. With neither nothing would show it, and nothing is
// polled.
func (a *app) watchJob(ctx context.Context, c *api.Client, pid string) (stop func()) {
	bar := newProgressBar(a.stderr)
	if !bar.enabled && !a.asJSON {
		return func() {}
	}
	var last api.Job
	lean := true // GET /v1/jobs until the daemon says it has no such endpoint (an older version)
	// Stopping cancels a poll in flight: the result must not wait for an answer that only feeds the display.
	wctx, cancelPolls := context.WithCancel(ctx)
	stopTick := tick.Every(500*time.Millisecond, func() {
		sctx, cancel := context.WithTimeout(wctx, 2*time.Second)
		defer cancel()
		jobs, err := daemonJobs(sctx, c, &lean)
		if err != nil {
			return
		}
		for _, j := range jobs {
			if j.ProfileID != pid {
				continue
			}
			if a.asJSON && (j.Kind != last.Kind || j.Done != last.Done || j.From != last.From || j.Peers != last.Peers) {
				_ = writeJSONLine(a.stderr, j)
			}
			last = j
			bar.Update(jobPhase(j), int64(j.Done), int64(j.Total))
		}
	})
	return func() {
		cancelPolls()
		stopTick()
		bar.Done()
	}
}

// daemonJobs returns the daemon's jobs: GET /v1/jobs (*lean), else from its status, which also lists the store and
// the peers; a daemon without the endpoint clears *lean.
func daemonJobs(ctx context.Context, c *api.Client, lean *bool) ([]api.Job, error) {
	if *lean {
		jobs, err := c.Jobs(ctx)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeNoSuchEndpoint {
			return jobs, err
		}
		*lean = false
	}
	st, err := c.Status(ctx)
	return st.Jobs, err
}

// jobPhase says what a status job does, for a progress line or the status table.
func jobPhase(j api.Job) string {
	switch j.Kind {
	case agent.PhaseCompile:
		return "compiling"
	case agent.PhaseWait:
		if j.From != "" {
			return "waiting for " + jobPeer(j) + "'s compile"
		}
		return "waiting for the fleet's compile"
	case agent.PhaseFetch:
		s := "fetching"
		if j.Chunks > 0 {
			s += fmt.Sprintf(" %d/%d chunks", j.ChunksDone, j.Chunks)
		}
		switch {
		case j.Peers == 1:
			s += " from 1 peer"
		case j.Peers > 1:
			s += fmt.Sprintf(" from %d peers", j.Peers)
		}
		if j.From != "" && j.Peers > 0 {
			s += " (producer " + jobPeer(j) + ")"
		} else if j.From != "" {
			s += " from " + jobPeer(j)
		}
		return s
	}
	return string(j.Kind)
}

// jobPeer names a job's peer: its hostname when its member record gave one, else its shortened ID.
func jobPeer(j api.Job) string {
	if j.FromHostname != "" {
		return j.FromHostname
	}
	return short(j.From)
}

// dialDaemon returns a client of the running daemon, nil without error when none answers, or why the socket
// cannot be used (permissions: never a reason to work without the daemon).
func (a *app) dialDaemon(ctx context.Context, cfg config.Config) (*api.Client, error) {
	c, err := api.Dial(ctx, cfg.SocketPath())
	if errors.Is(err, api.ErrNoDaemon) {
		return nil, nil
	}
	return c, err
}

// putViaDaemon uploads a blob compiled elsewhere to the daemon, which checks and records it.
func (a *app) putViaDaemon(cmd *cobra.Command, c *api.Client, model string, prof compile.Profile, blob string) error {
	abs, err := filepath.Abs(model)
	if err != nil {
		return err
	}
	f, err := os.Open(blob)
	if err != nil {
		return err
	}
	defer f.Close()
	res, err := c.Put(cmd.Context(), api.PutRequest{Model: abs, Profile: prof}, f)
	if err != nil {
		return err
	}
	return a.printFetch(fetchResult{
		Source: agent.Source(res.Source), CID: res.CID.String(), Path: res.Path, Size: res.Size, SHA256: res.SHA256,
		ModelID: res.ModelID, ProfileID: res.ProfileID, Producer: res.From,
	})
}

// copyBlob puts a blob the daemon holds at path: a hard link to the daemon's stored file when this user may make
// one on the same file system (no copy; the file stays read-only), else one streamed copy from the daemon. The
// daemon verified the bytes on arrival and checks them as it reads, so they are not hashed again here.
func copyBlob(ctx context.Context, c *api.Client, res api.EnsureResponse, path string) error {
	if res.Path != "" && linkInto(res.Path, path) == nil {
		return nil
	}
	r, err := c.Blob(ctx, res.CID)
	if err != nil {
		return err
	}
	defer r.Close()
	return atomicfile.Write(path, 0o644, func(w io.Writer) error {
		n, err := io.Copy(w, r)
		if err == nil && uint64(n) != res.Size {
			err = fmt.Errorf("blob from the daemon has %d bytes, want %d: %w", n, res.Size, blobstore.ErrInvalidData)
		}
		return err
	})
}

// linkInto hard-links src at dst, replacing dst atomically (a link beside it, then a rename). The directory is not
// synced: on ext4 that fsync waits for the journal, which holds the blob's own writeback (the daemon syncs the
// blob in the background, docs/design.md 3.5) — up to 1.5 s after every byte had arrived, for a name as durable
// as a cp's.
func linkInto(src, dst string) error {
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".link-"+strconv.Itoa(os.Getpid()))
	if err := os.Link(src, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
