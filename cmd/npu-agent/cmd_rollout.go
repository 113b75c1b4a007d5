package main

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

func (a *app) keygenCmd() *cobra.Command {
	return a.operatorKeyCmd("keygen --out FILE",
		"Create an operator key for signing rollouts; prints the public key line for rollout.trusted_keys",
		"# private key %s (key id %s): keep it offline, mode 0600\n# add this line to rollout.trusted_keys on every agent:\n%s\n")
}

// publishFlags are the flags of publish beside the profile ones.
type publishFlags struct {
	keys        []string
	name, model string
	version     uint64
	profiles    []string
	selectors   []string
	expires     time.Duration
	cacheFiles  []string // OpenVINO cache entries to name (ovcache.go)
}

func (a *app) publishCmd() *cobra.Command {
	var o publishFlags
	var pf profileFlags
	c := &cobra.Command{
		Use: "publish --key FILE --name NAME --version N --model PATH [--profile FILE ...] [--shape ...] " +
			"[--select KEY=VALUE ...] [--expires 720h]",
		Short: "Sign a rollout and hand it to the local daemon, which shares the model and gossips it to the fleet",
		Long: "Publish stores the source model in the local daemon (peers fetch it from there), signs a manifest " +
			"naming it with the operator key and hands it to the daemon, which checks it like any agent would and " +
			"gossips it. Every agent whose fingerprint and tags match the selectors prepares a blob for each " +
			"profile. A rollback is a new, higher version naming the older model.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			keys, m, err := o.manifest(&pf)
			if err != nil {
				return err
			}
			model, err := filepath.Abs(o.model)
			if err != nil {
				return usageError{err}
			}
			c, err := a.daemonClient(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			if m.Model, err = c.AddSource(cmd.Context(), model); err != nil {
				return err
			}
			if m.CacheEntries, err = manifestCacheEntries(cmd.Context(), c, o.cacheFiles); err != nil {
				return err
			}
			signed, err := rollout.Sign(m, keys[0])
			for _, k := range keys[1:] {
				if err == nil {
					signed, err = rollout.Cosign(signed, k)
				}
			}
			if err != nil {
				return usageError{err}
			}
			r, err := c.PublishRollout(cmd.Context(), signed)
			if err != nil {
				return err
			}
			return a.print(r, func(w io.Writer) error { return rolloutTable(w, []api.Rollout{r}) })
		},
	}
	f := c.Flags()
	f.StringArrayVar(&o.keys, "key", nil, "operator private key file from keygen (repeat to co-sign for rollout.threshold above 1)")
	f.StringVar(&o.name, "name", "", "rollout name: a-z 0-9 . _ -")
	f.Uint64Var(&o.version, "version", 0, "version, higher than every earlier one of this name")
	f.StringVar(&o.model, "model", "", "source model: OpenVINO IR .xml (with its .bin) or .onnx")
	f.StringArrayVar(&o.selectors, "select", nil, "only agents with fingerprint field or tag:NAME = VALUE (repeatable)")
	f.DurationVar(&o.expires, "expires", 30*24*time.Hour, "agents stop accepting the manifest this long after now")
	f.StringArrayVar(&o.profiles, "profile", nil, "profile file (repeatable, one profile each; --device, --shape, --prop and --kind apply to every one)")
	f.StringArrayVar(&o.cacheFiles, "cache-entry", nil, "an OpenVINO CACHE_DIR entry of this model (<hash>.blob) that this daemon harvested, for selected agents to write into their cache directories (repeatable)")
	pf.registerOverrides(c)
	return c
}

// manifest reads the keys and builds the unsigned manifest (without its source model) from the flags.
func (o *publishFlags) manifest(pf *profileFlags) ([]ed25519.PrivateKey, *rollout.Manifest, error) {
	for _, req := range []struct{ flag, val string }{{"--name", o.name}, {"--model", o.model}} {
		if req.val == "" {
			return nil, nil, usageError{fmt.Errorf("%s is required", req.flag)}
		}
	}
	if len(o.keys) == 0 {
		return nil, nil, usageError{fmt.Errorf("--key is required")}
	}
	if o.version == 0 {
		return nil, nil, usageError{fmt.Errorf("--version is required (1 or higher)")}
	}
	if o.expires <= 0 {
		return nil, nil, usageError{fmt.Errorf("--expires must be positive")}
	}
	var keys []ed25519.PrivateKey
	for _, path := range o.keys {
		k, err := rollout.ReadPrivateKeyFile(path)
		if err != nil {
			return nil, nil, usageError{err}
		}
		keys = append(keys, k)
	}
	files := o.profiles
	if len(files) == 0 {
		files = []string{""}
	}
	var profiles []compile.Profile
	for _, file := range files {
		p := *pf
		p.file = file
		prof, err := p.profile()
		if err != nil {
			return nil, nil, err
		}
		profiles = append(profiles, prof)
	}
	sel := map[string]string{}
	for _, s := range o.selectors {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, nil, usageError{fmt.Errorf("--select %q: want KEY=VALUE", s)}
		}
		sel[k] = v
	}
	now := time.Now().UTC()
	return keys, &rollout.Manifest{
		Name: o.name, Version: o.version, Created: now, Expires: now.Add(o.expires),
		Profiles: profiles, Selector: sel,
	}, nil
}

func (a *app) rolloutCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "rollout",
		Short: "Rollouts the running daemon follows, and how far every peer is",
	}
	c.AddCommand(&cobra.Command{
		Use:   "ls",
		Short: "Accepted rollouts with their current and previous versions",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.daemonClient(cmd)
			if err != nil {
				return err
			}
			defer cl.Close()
			rs, err := cl.Rollouts(cmd.Context())
			if err != nil {
				return err
			}
			return a.print(rs, func(w io.Writer) error { return rolloutTable(w, rs) })
		},
	}, &cobra.Command{
		Use:   "status NAME",
		Short: "Every known peer's version and state of a rollout",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.daemonClient(cmd)
			if err != nil {
				return err
			}
			defer cl.Close()
			st, err := cl.Rollout(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.print(st, func(w io.Writer) error { return rolloutStatusTable(w, st) })
		},
	})
	return c
}

func rolloutTable(w io.Writer, rs []api.Rollout) error {
	rows := make([][]string, 0, len(rs))
	for _, r := range rs {
		prev := "-"
		if r.Previous > 0 {
			prev = strconv.FormatUint(r.Previous, 10)
		}
		here := string(r.State)
		switch {
		case !r.Selected:
			here = "not selected"
		case here == "":
			here = "pending"
		}
		expires := r.Expires.Local().Format(time.DateTime)
		if r.Expired {
			expires += " (expired)"
		}
		rows = append(rows, []string{r.Name, strconv.FormatUint(r.Version, 10), prev, short(r.ModelID),
			strconv.Itoa(len(r.Profiles)), here, expires})
	}
	return table(w, []string{"NAME", "VERSION", "PREVIOUS", "MODEL", "PROFILES", "THIS HOST", "EXPIRES"}, rows)
}

func rolloutStatusTable(w io.Writer, st api.RolloutStatus) error {
	s := st.Summary
	fmt.Fprintf(w, "%s version %d: %d ready, %d in progress, %d failed, %d behind, %d ahead of %d reporting\n\n",
		st.Name, st.Version, s.Ready, s.InProgress, s.Failed, s.Behind, s.Ahead, s.Peers)
	rows := make([][]string, 0, len(st.Peers))
	for _, p := range st.Peers {
		peer := short(p.Peer)
		if p.Self {
			peer += " (this host)"
		}
		version, state, profiles, updated := "-", "no report", "-", "-"
		if p.Version > 0 {
			version, state = strconv.FormatUint(p.Version, 10), string(p.State)
			profiles = fmt.Sprintf("%d/%d", p.Ready, p.Profiles)
			updated = time.Since(p.Updated).Round(time.Second).String() + " ago"
		}
		if !p.Connected && !p.Self {
			updated += ", disconnected"
		}
		rows = append(rows, []string{peer, orDash(p.Hostname), short(p.Class), orDash(strings.Join(p.Tags, ",")),
			orDash(p.AgentVersion), version, state, profiles, updated, p.Reason})
	}
	return table(w, []string{"PEER", "HOSTNAME", "CLASS", "TAGS", "NPU-AGENT", "VERSION", "STATE", "READY", "UPDATED",
		"REASON"}, rows)
}
