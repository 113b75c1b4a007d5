// Package config is npu-agent's configuration file: every option, its default, environment overrides and
// validation with errors an operator can act on.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrInvalid marks an error in the config file: the operator's to fix (the CLI exits with its usage code).
var ErrInvalid = errors.New("invalid config")

// MaxFileSize bounds a config file; a real one is a few KiB.
const MaxFileSize = 1 << 20

// EnvPrefix prefixes environment overrides: NPU_AGENT_P2P_FLEET_KEY_FILE sets p2p.fleet_key_file.
const EnvPrefix = "NPU_AGENT_"

// EnvConfig names the config file when --config is not given; EnvSocket is the API socket clients use.
const (
	EnvConfig = EnvPrefix + "CONFIG"
	EnvSocket = EnvPrefix + "SOCKET"
)

// Config is the whole configuration. YAML keys are the field tags; see docs/operations.md.
type Config struct {
	DataDir    string `yaml:"data_dir"`    // badger store, identity key, compile scratch
	RuntimeDir string `yaml:"runtime_dir"` // unix socket of the local API
	LogLevel   string `yaml:"log_level"`   // debug, info, warn, error
	LogFormat  string `yaml:"log_format"`  // auto, text or json
	// FingerprintOverride is a file pinning some or all fingerprint fields (operators, tests).
	FingerprintOverride string `yaml:"fingerprint_override"`
	// SysfsRoot is where the sysfs probe looks (tests point it at a fixture tree).
	SysfsRoot string `yaml:"sysfs_root"`

	API      API      `yaml:"api"`
	Store    Store    `yaml:"store"`
	Compiler Compiler `yaml:"compiler"`
	P2P      P2P      `yaml:"p2p"`
	Flight   Flight   `yaml:"flight"`
	Rollout  Rollout  `yaml:"rollout"`
	// OVCache: OpenVINO cache directories shared with the fleet (issue 14; docs/design.md section 10).
	OVCache OVCache `yaml:"ovcache"`
}

// Rollout configures which operator-signed rollouts this agent follows (docs/operations.md).
type Rollout struct {
	TrustedKeys []string `yaml:"trusted_keys"` // "npu-agent-ed25519:<base64>" public keys from `npu-agent keygen`
	Threshold   int      `yaml:"threshold"`    // signatures of distinct trusted keys a manifest needs; 0 means 1
	Tags        []string `yaml:"tags"`         // "name=value" labels rollout selectors can match (tag:name)
}

// API is the local HTTP API.
type API struct {
	Socket string `yaml:"socket"` // default <runtime_dir>/api.sock
	TCP    string `yaml:"tcp"`    // optional, loopback only, e.g. 127.0.0.1:4800
	// TokenFile holds the bearer token that opens the whole API on TCP (without it TCP serves only /metrics and
	// /v1/healthz); readable by the daemon's group, not by others.
	TokenFile string `yaml:"token_file"`
}

// Store configures the blob store.
type Store struct {
	Quota      ByteSize      `yaml:"quota"`       // gc keeps the store at most this big; 0 = no quota
	GCInterval time.Duration `yaml:"gc_interval"` // how often the daemon runs gc
}

// Compiler selects and configures the compiler backend.
type Compiler struct {
	Backend string        `yaml:"backend"` // "openvino", "command", "sim"; empty = openvino if importable
	Python  string        `yaml:"python"`  // interpreter for the OpenVINO helper
	Command []string      `yaml:"command"` // argv template of the command backend
	Timeout time.Duration `yaml:"timeout"` // per compile
	Sim     Sim           `yaml:"sim"`
}

// Sim configures the simulator backend (demos and tests only).
type Sim struct {
	CompileTime time.Duration `yaml:"compile_time"`
	BlobSize    ByteSize      `yaml:"blob_size"`
}

// P2P configures the libp2p node.
type P2P struct {
	Enabled          bool     `yaml:"enabled"`
	Listen           []string `yaml:"listen"`
	Peers            []string `yaml:"peers"` // static peer multiaddrs with /p2p/<id>
	MDNS             bool     `yaml:"mdns"`
	FleetKeyFile     string   `yaml:"fleet_key_file"`
	Allowlist        []string `yaml:"allowlist"`         // peer IDs; empty = any holder of the fleet key
	TrustedProducers []string `yaml:"trusted_producers"` // peer IDs whose records are accepted; empty = any member
	AllowLoopback    bool     `yaml:"allow_loopback"`    // single-machine demos and tests only
	// Connection bounds (issue 15): past conn_high connections the least useful are closed down to conn_low;
	// static peers and peers in a transfer are kept. Defaults: p2p.DefaultConnLow and DefaultConnHigh (fleet's
	// tests check); 0 also takes them.
	ConnLow  int `yaml:"conn_low"`
	ConnHigh int `yaml:"conn_high"`
	// Fleet authority, instead of fleet_key_file (docs/design.md 6.2): the authority's public key
	// (npu-agent-ed25519:...), this member's certificate file and, optionally, the operator's revocation list file.
	FleetAuthority  string `yaml:"fleet_authority"`
	MemberCertFile  string `yaml:"member_cert_file"`
	RevocationsFile string `yaml:"revocations_file"`
}

// Flight configures the fleet-wide single flight.
type Flight struct {
	Window   time.Duration `yaml:"window"`    // how long wants are collected before electing a compiler
	LeaseTTL time.Duration `yaml:"lease_ttl"` // a compiler that misses heartbeats this long is replaced
	Deadline time.Duration `yaml:"deadline"`  // past this a waiting peer compiles itself
}

// OVCache lists the applications' OpenVINO CACHE_DIRs the daemon shares (harvests from and populates).
type OVCache struct {
	Dirs         []CacheDir `yaml:"dirs"`
	MaxEntrySize ByteSize   `yaml:"max_entry_size"` // larger entries are neither harvested nor written; 0 = 16 GiB
}

// CacheDir is one application cache directory.
type CacheDir struct {
	Path          string `yaml:"path"`           // absolute; must exist
	Owner         string `yaml:"owner"`          // user name or uid owning the entries written; empty = the daemon's
	Group         string `yaml:"group"`          // group name or gid; empty = the daemon's
	Mode          string `yaml:"mode"`           // octal permission bits of the entries written; empty = 0440
	OpenVINOBuild string `yaml:"openvino_build"` // the application's openvino.get_version(); empty = learned from its entries
}

// Default returns the configuration used where the file is silent.
func Default() Config {
	return Config{
		DataDir:    "/var/lib/npu-agent",
		RuntimeDir: "/run/npu-agent",
		LogLevel:   "info",
		LogFormat:  "auto",
		SysfsRoot:  "/",
		Store:      Store{GCInterval: 10 * time.Minute},
		Compiler: Compiler{
			Python:  "python3",
			Timeout: 2 * time.Hour,
			Sim:     Sim{CompileTime: 2 * time.Second, BlobSize: 8 << 20},
		},
		P2P: P2P{
			Enabled:  true,
			Listen:   []string{"/ip4/0.0.0.0/tcp/4801", "/ip4/0.0.0.0/udp/4801/quic-v1"},
			MDNS:     true,
			ConnLow:  32,
			ConnHigh: 64,
		},
		Flight: Flight{Window: 500 * time.Millisecond, LeaseTTL: 15 * time.Second, Deadline: 30 * time.Minute},
	}
}

// Load reads path (if not empty) over the defaults, then applies environment overrides, then validates.
// Every problem is reported at once, as an *Error (errors.Is ErrInvalid) naming each key and its line.
func Load(path string, environ []string) (Config, error) {
	c := Default()
	lines := map[string]int{}
	var probs []Problem
	if path != "" {
		if err := c.readFile(path, lines, &probs); err != nil {
			return c, err
		}
	}
	probs = append(probs, c.applyEnv(environ)...)
	if len(probs) == 0 {
		if err := c.Validate(); err != nil {
			probs = validationProblems(err, lines)
		}
	}
	if len(probs) > 0 {
		// File problems in line order, then those without a line (environment, whole-config rules).
		sort.SliceStable(probs, func(i, j int) bool {
			li, lj := probs[i].Line, probs[j].Line
			return li > 0 && (lj == 0 || li < lj)
		})
		return c, &Error{File: path, Problems: probs}
	}
	return c, nil
}

func (c *Config) readFile(path string, lines map[string]int, probs *[]Problem) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w: %w", ErrInvalid, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return fmt.Errorf("config %s: %w: %w", path, ErrInvalid, err)
	}
	if len(data) > MaxFileSize {
		return fmt.Errorf("config %s: %w: larger than %d bytes", path, ErrInvalid, MaxFileSize)
	}
	*probs = append(*probs, c.decodeFile(data, lines)...)
	return nil
}

// Validate reports the first thing wrong, naming the key.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir: must be set"))
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format: %q is not one of auto, text, json", c.LogFormat))
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level: %q is not one of debug, info, warn, error", c.LogLevel))
	}
	if c.API.TCP != "" {
		host, _, err := net.SplitHostPort(c.API.TCP)
		ip := net.ParseIP(host)
		if err != nil || ip == nil || !ip.IsLoopback() {
			errs = append(errs, fmt.Errorf("api.tcp: %q must be a loopback host:port such as 127.0.0.1:4800", c.API.TCP))
		}
	}
	switch c.Compiler.Backend {
	case "", "openvino", "sim":
	case "command":
		if len(c.Compiler.Command) == 0 {
			errs = append(errs, errors.New("compiler.command: the command backend needs an argv template"))
		}
	default:
		errs = append(errs, fmt.Errorf("compiler.backend: %q is not one of openvino, command, sim", c.Compiler.Backend))
	}
	if c.Compiler.Timeout < 0 {
		errs = append(errs, errors.New("compiler.timeout: must not be negative"))
	}
	if c.Store.GCInterval < 0 || c.Store.GCInterval == 0 && c.Store.Quota > 0 {
		errs = append(errs, fmt.Errorf("store.gc_interval: %s: must be positive (the daemon keeps store.quota every interval)", c.Store.GCInterval))
	}
	if c.Compiler.Sim.CompileTime < 0 {
		errs = append(errs, errors.New("compiler.sim.compile_time: must not be negative"))
	}
	if c.Flight.Window <= 0 || c.Flight.LeaseTTL <= 0 || c.Flight.Deadline <= 0 {
		errs = append(errs, errors.New("flight: window, lease_ttl and deadline must be positive"))
	} else if c.Flight.Deadline < c.Flight.LeaseTTL {
		errs = append(errs, errors.New("flight.deadline: must be at least flight.lease_ttl"))
	}
	if c.Rollout.Threshold < 0 || c.Rollout.Threshold > len(c.Rollout.TrustedKeys) && len(c.Rollout.TrustedKeys) > 0 {
		errs = append(errs, fmt.Errorf("rollout.threshold: %d is not between 1 and the %d trusted keys", c.Rollout.Threshold, len(c.Rollout.TrustedKeys)))
	}
	for _, tag := range c.Rollout.Tags {
		if k, _, ok := strings.Cut(tag, "="); !ok || k == "" {
			errs = append(errs, fmt.Errorf("rollout.tags: %q is not name=value", tag))
		}
	}
	for i, d := range c.OVCache.Dirs {
		if !filepath.IsAbs(d.Path) {
			errs = append(errs, fmt.Errorf("ovcache.dirs[%d].path: %q must be an absolute path", i, d.Path))
		}
		if m, err := strconv.ParseUint(d.Mode, 8, 32); d.Mode != "" && (err != nil || m > 0o777) {
			errs = append(errs, fmt.Errorf("ovcache.dirs[%d].mode: %q is not octal permission bits such as 0440", i, d.Mode))
		}
	}
	if err := checkConnBounds(c.P2P.ConnLow, c.P2P.ConnHigh); err != nil {
		errs = append(errs, err)
	}
	if c.P2P.Enabled && len(c.P2P.Listen) == 0 {
		errs = append(errs, errors.New("p2p.listen: at least one address when p2p is enabled"))
	}
	if c.P2P.FleetKeyFile != "" && c.P2P.FleetAuthority != "" {
		errs = append(errs, errors.New("p2p.fleet_authority: set either p2p.fleet_key_file or a fleet authority, not both"))
	}
	if (c.P2P.FleetAuthority == "") != (c.P2P.MemberCertFile == "") {
		errs = append(errs, errors.New("p2p.member_cert_file: p2p.fleet_authority and p2p.member_cert_file go together"))
	}
	if c.P2P.RevocationsFile != "" && c.P2P.FleetAuthority == "" {
		errs = append(errs, errors.New("p2p.revocations_file: needs p2p.fleet_authority"))
	}
	for _, f := range []struct{ key, path string }{
		{"fingerprint_override", c.FingerprintOverride},
		{"p2p.fleet_key_file", c.P2P.FleetKeyFile},
		{"p2p.member_cert_file", c.P2P.MemberCertFile},
		{"api.token_file", c.API.TokenFile},
	} {
		if f.path != "" {
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f.key, err))
			}
		}
	}
	return errors.Join(errs...)
}

// SocketPath is where the local API listens.
func (c *Config) SocketPath() string {
	if c.API.Socket != "" {
		return c.API.Socket
	}
	return filepath.Join(c.RuntimeDir, "api.sock")
}

// applyEnv sets fields from NPU_AGENT_<PATH> variables, PATH being the yaml keys joined by "_" in upper case.
// Lists are comma-separated.
// NPU_AGENT_CONFIG (the config file, read by the CLI) is not an option; NPU_AGENT_SOCKET, the socket clients use
// (the Python client too), is api.socket unless NPU_AGENT_API_SOCKET is set.
func (c *Config) applyEnv(environ []string) []Problem {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	delete(env, EnvConfig)
	if s, ok := env[EnvSocket]; ok {
		if _, set := env[EnvPrefix+"API_SOCKET"]; !set {
			env[EnvPrefix+"API_SOCKET"] = s
		}
		delete(env, EnvSocket)
	}
	if len(env) == 0 {
		return nil
	}
	var probs []Problem
	known := map[string]bool{}
	_ = walk(reflect.ValueOf(c).Elem(), EnvPrefix, func(name string, v reflect.Value) error {
		known[name] = true
		s, ok := env[name]
		if !ok {
			return nil
		}
		if err := setString(v, s); err != nil {
			probs = append(probs, Problem{Key: name, Msg: err.Error()})
		}
		return nil
	})
	var unknown []string
	for k := range env {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		msg := "no such option"
		key := strings.ToLower(strings.TrimPrefix(k, EnvPrefix))
		if s := suggestEnv(key); s != "" {
			msg += " (did you mean " + s + "?)"
		}
		probs = append(probs, Problem{Key: k, Msg: msg})
	}
	return probs
}

// suggestEnv names the nearest environment variable to the lower-case key (without the prefix).
func suggestEnv(key string) string {
	best, bestD := "", 1<<30
	for _, full := range Keys() {
		name := strings.ReplaceAll(full, ".", "_")
		if d := levenshtein(key, name); d < bestD {
			best, bestD = name, d
		}
	}
	if best == "" || bestD > max(2, len(key)/4) {
		return ""
	}
	return EnvPrefix + strings.ToUpper(best)
}

func walk(v reflect.Value, prefix string, fn func(string, reflect.Value) error) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("yaml")
		name := prefix + strings.ToUpper(tag)
		f := v.Field(i)
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(time.Duration(0)) {
			if err := walk(f, name+"_", fn); err != nil {
				return err
			}
			continue
		}
		if f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct {
			continue // a list of sections (ovcache.dirs) is set in the file only
		}
		if err := fn(name, f); err != nil {
			return err
		}
	}
	return nil
}

func setString(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (such as 500ms, 15s, 10m, 2h)", s)
		}
		v.SetInt(int64(d))
	case ByteSize:
		b, err := ParseByteSize(s)
		if err != nil {
			return err
		}
		v.SetUint(uint64(b))
	case string:
		v.SetString(s)
	case bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		v.SetBool(b)
	case int:
		i, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		v.SetInt(int64(i))
	case []string:
		var list []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				list = append(list, p)
			}
		}
		v.Set(reflect.ValueOf(list))
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

// MaxConns bounds p2p.conn_high: the resource manager's connection limits lie above it.
const MaxConns = 1024

// checkConnBounds validates p2p.conn_low and p2p.conn_high; 0 takes the node's default (32, 64).
func checkConnBounds(low, high int) error {
	switch {
	case low < 0 || high < 0:
		return fmt.Errorf("p2p.conn_low, p2p.conn_high: %d, %d: must not be negative", low, high)
	case high > MaxConns:
		return fmt.Errorf("p2p.conn_high: %d: at most %d", high, MaxConns)
	case high > 0 && low >= high:
		return fmt.Errorf("p2p.conn_low: %d: must be below p2p.conn_high (%d)", low, high)
	case high == 0 && low > MaxConns:
		return fmt.Errorf("p2p.conn_low: %d: at most %d", low, MaxConns)
	}
	return nil
}
