package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/npu-agent/npu-agent/config"
)

// app holds what every command shares: global flags and output streams.
type app struct {
	stdout, stderr io.Writer

	configPath string
	dataDir    string
	overrideFP string
	backend    string
	logLevel   string
	asJSON     bool
}

const defaultConfigPath = "/etc/npu-agent/config.yaml"

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "npu-agent",
		Short:         "Keep, share and fetch compiled Intel NPU blobs; compile only when no compatible blob exists",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.Version = version
	root.SetVersionTemplate("npu-agent {{.Version}}\n")
	groupCmd(root)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", "", "config file (default "+defaultConfigPath+" if it exists; env "+config.EnvConfig+")")
	pf.StringVar(&a.dataDir, "data-dir", "", "data directory (overrides data_dir)")
	pf.StringVar(&a.overrideFP, "fingerprint-override", "", "file pinning fingerprint fields (overrides fingerprint_override)")
	pf.StringVar(&a.backend, "compiler", "", "compiler backend: openvino, command or sim (overrides compiler.backend)")
	pf.StringVar(&a.logLevel, "log-level", "", "debug, info, warn or error (overrides log_level)")
	pf.BoolVar(&a.asJSON, "json", false, "print machine-readable JSON")

	root.AddCommand(a.commands()...)
	for _, c := range root.Commands() {
		if c.HasSubCommands() {
			groupCmd(c)
		}
	}
	return root
}

// groupCmd makes a command that only holds subcommands print its help when called alone and refuse an unknown
// subcommand as a usage error (exit code 2), which cobra would otherwise answer with help and exit code 0.
func groupCmd(c *cobra.Command) {
	c.SuggestionsMinimumDistance = 2
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
		}
		return usageError{fmt.Errorf("%s; see %s --help", msg, cmd.CommandPath())}
	}
	c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
}

// loadConfig reads the config file, the environment and the global flags, in rising priority.
func (a *app) loadConfig() (config.Config, error) {
	path := a.configPath
	if path == "" {
		path = os.Getenv(config.EnvConfig)
	}
	if path == "" {
		if _, err := os.Stat(defaultConfigPath); err == nil {
			path = defaultConfigPath
		}
	}
	env := os.Environ()
	cfg, err := config.Load(path, env)
	if err != nil && !(path == "" && a.dataDir != "") {
		return cfg, usageError{err}
	}
	if path == "" && os.Getuid() != 0 && os.Getenv(config.EnvPrefix+"DATA_DIR") == "" {
		// Without a config an unprivileged user keeps a store of their own.
		if dir, err := os.UserCacheDir(); err == nil {
			cfg.DataDir = filepath.Join(dir, "npu-agent")
		}
		if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
			cfg.RuntimeDir = filepath.Join(dir, "npu-agent")
		}
	}
	if a.dataDir != "" {
		cfg.DataDir = a.dataDir
	}
	if a.overrideFP != "" {
		cfg.FingerprintOverride = a.overrideFP
	}
	if a.backend != "" {
		cfg.Compiler.Backend = a.backend
	}
	if a.logLevel != "" {
		cfg.LogLevel = a.logLevel
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageError{err}
	}
	return cfg, nil
}

func (a *app) logger(cfg config.Config) *slog.Logger {
	return newLogger(a.stderr, cfg, os.Getenv("JOURNAL_STREAM") != "")
}

// newLogger makes the daemon's and commands' logger: JSON lines, or text; under the journal (auto) text without
// slog's own time, since the journal stamps every line.
func newLogger(w io.Writer, cfg config.Config, journal bool) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel)))
	opts := &slog.HandlerOptions{Level: level}
	switch {
	case cfg.LogFormat == "json":
		return slog.New(slog.NewJSONHandler(w, opts))
	case cfg.LogFormat != "text" && journal:
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// print writes v as JSON with --json, else calls human.
func (a *app) print(v any, human func(w io.Writer) error) error {
	if a.asJSON {
		return writeJSON(a.stdout, v)
	}
	return human(a.stdout)
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %d argument(s), got %d (see --help)", cmd.CommandPath(), n, len(args))}
		}
		return nil
	}
}
