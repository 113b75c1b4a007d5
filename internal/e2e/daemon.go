//go:build linux

// Package e2e runs real npu-agent daemons, one per host of a netlab LAN, and drives them as an operator would:
// through the npu-agent command line and the daemon's local API on its unix socket. The end-to-end fleet tests of
// this package and the fleetbench npu-agent system are built on it.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/internal/netlab"
)

// Sentinel errors.
var (
	ErrExited = errors.New("daemon exited")
	ErrFetch  = errors.New("fetch failed")
	ErrMetric = errors.New("metric not found")
)

const (
	// P2PPort is where every daemon's libp2p node listens (TCP) on its host.
	P2PPort = 4801
	// stopGrace is how long a daemon gets to shut down after SIGTERM before it is killed.
	stopGrace = 15 * time.Second
	// pollInterval paces every wait on a socket, a metric or a log line.
	pollInterval = 50 * time.Millisecond
	// maxLogTail bounds how much of a daemon's log goes into an error message or a test failure.
	maxLogTail = 16 << 10
	// maxScan bounds how much of a log a line search reads; the daemons log a few KiB per test.
	maxScan = 32 << 20
	// maxOutput bounds what is kept of a command's stdout or stderr.
	maxOutput = 1 << 20
)

// Build compiles the npu-agent command into dir and returns the binary's path. It runs `go build` from the
// module that contains the working directory, which is the repository for tests and the fleetbench script.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "npu-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/npu-agent/npu-agent/cmd/npu-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("e2e: go build npu-agent: %w: %s", err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// Config is one daemon's configuration. Zero durations leave the daemon's defaults.
type Config struct {
	Binary      string      // the npu-agent binary
	Dir         string      // the daemon's own directory: config, fingerprint, data, socket and log go under it
	Fingerprint Fingerprint // the NPU stack the daemon claims (fingerprint_override)
	CompileTime time.Duration
	BlobSize    int64 // bytes of the simulated compiler's blobs
	// P2P enables the libp2p node on TCP P2PPort with mDNS discovery.
	P2P          bool
	FleetKeyFile string // p2p.fleet_key_file; "" for none
	// FleetAuthority, MemberCertFile and RevocationsFile: p2p.fleet_authority, member_cert_file and
	// revocations_file (a fleet authority instead of a fleet key); "" for none.
	FleetAuthority, MemberCertFile, RevocationsFile string
	FlightWindow                                    time.Duration
	LeaseTTL                                        time.Duration
	Deadline                                        time.Duration
	LogLevel                                        string // "" is info
	// TrustedKeys are operator public keys (rollout.trusted_keys); none disables rollouts.
	TrustedKeys []string
	Tags        []string // rollout.tags, "name=value"
	// Loopback runs the node on 127.0.0.1:Port without mDNS (p2p.allow_loopback), dialling Peers: for daemons
	// started without a lab (Start with a nil lab), several on one machine.
	Loopback bool
	Port     int      // the node's TCP port; 0 is P2PPort
	Peers    []string // p2p.peers, /ip4/.../tcp/.../p2p/<id>
	NoMDNS   bool     // in a lab: p2p.mdns false (a fleet joined by Peers alone)
	Env      []string // extra environment of the daemon process, "KEY=value"

	// ConnLow and ConnHigh are p2p.conn_low and p2p.conn_high; 0 leaves the daemon's default.
	ConnLow, ConnHigh int

	// APITCP also serves the API on this loopback address, opened by the token in TokenFile.
	APITCP    string
	TokenFile string
	// User runs the daemon as this user and group (no supplementary groups), as the packaged unit runs it as
	// npu-agent; nil runs it as the caller. Dir must be writable by it. Only without a lab (ip netns exec needs root).
	User *syscall.Credential
	// OVCacheDirs are application cache directories the daemon shares (ovcache.dirs).
	OVCacheDirs []OVCacheDir
}

// OVCacheDir is one ovcache.dirs entry: the directory and its application's OpenVINO build ("" learns it), and
// the owner, group and mode of the entries written ("" leaves the daemon's defaults).
type OVCacheDir struct{ Path, Build, Owner, Group, Mode string }

// yaml renders c as the daemon's config file. Every value is quoted or numeric, so no path can break the syntax.
func (c Config) yaml() []byte {
	var b bytes.Buffer
	q := strconv.Quote
	fmt.Fprintf(&b, "data_dir: %s\nruntime_dir: %s\nfingerprint_override: %s\n",
		q(filepath.Join(c.Dir, "data")), q(filepath.Join(c.Dir, "run")), q(filepath.Join(c.Dir, "fingerprint.yaml")))
	level := c.LogLevel
	if level == "" {
		level = "info"
	}
	fmt.Fprintf(&b, "log_level: %s\nstore:\n  gc_interval: 0s\n", q(level))
	fmt.Fprintf(&b, "compiler:\n  backend: sim\n  sim:\n    compile_time: %s\n    blob_size: %d\n", q(c.CompileTime.String()), c.BlobSize)
	if c.APITCP != "" {
		fmt.Fprintf(&b, "api:\n  tcp: %s\n  token_file: %s\n", q(c.APITCP), q(c.TokenFile))
	}
	fmt.Fprintf(&b, "p2p:\n  enabled: %t\n", c.P2P)
	if c.P2P {
		port := c.Port
		if port == 0 {
			port = P2PPort
		}
		if c.Loopback {
			fmt.Fprintf(&b, "  listen: [%s]\n  mdns: false\n  allow_loopback: true\n", q("/ip4/127.0.0.1/tcp/"+strconv.Itoa(port)))
		} else {
			fmt.Fprintf(&b, "  listen: [%s]\n  mdns: %t\n", q("/ip4/0.0.0.0/tcp/"+strconv.Itoa(port)), !c.NoMDNS)
		}
		if len(c.Peers) > 0 {
			b.WriteString("  peers:\n")
			for _, p := range c.Peers {
				fmt.Fprintf(&b, "    - %s\n", q(p))
			}
		}
		if c.FleetKeyFile != "" {
			fmt.Fprintf(&b, "  fleet_key_file: %s\n", q(c.FleetKeyFile))
		}
		if c.ConnLow > 0 || c.ConnHigh > 0 {
			fmt.Fprintf(&b, "  conn_low: %d\n  conn_high: %d\n", c.ConnLow, c.ConnHigh)
		}
		for _, kv := range [][2]string{{"fleet_authority", c.FleetAuthority}, {"member_cert_file", c.MemberCertFile},
			{"revocations_file", c.RevocationsFile}} {
			if kv[1] != "" {
				fmt.Fprintf(&b, "  %s: %s\n", kv[0], q(kv[1]))
			}
		}
	}
	if len(c.TrustedKeys) > 0 {
		b.WriteString("rollout:\n  trusted_keys:\n")
		for _, k := range c.TrustedKeys {
			fmt.Fprintf(&b, "    - %s\n", q(k))
		}
		if len(c.Tags) > 0 {
			b.WriteString("  tags:\n")
			for _, tag := range c.Tags {
				fmt.Fprintf(&b, "    - %s\n", q(tag))
			}
		}
	}
	if len(c.OVCacheDirs) > 0 {
		b.WriteString("ovcache:\n  dirs:\n")
		for _, d := range c.OVCacheDirs {
			fmt.Fprintf(&b, "    - path: %s\n      openvino_build: %s\n", q(d.Path), q(d.Build))
			for _, kv := range [][2]string{{"owner", d.Owner}, {"group", d.Group}, {"mode", d.Mode}} {
				if kv[1] != "" {
					fmt.Fprintf(&b, "      %s: %s\n", kv[0], q(kv[1]))
				}
			}
		}
	}
	b.WriteString("flight:\n")
	for _, f := range []struct {
		key string
		d   time.Duration
	}{{"window", c.FlightWindow}, {"lease_ttl", c.LeaseTTL}, {"deadline", c.Deadline}} {
		if f.d > 0 {
			fmt.Fprintf(&b, "  %s: %s\n", f.key, q(f.d.String()))
		}
	}
	return b.Bytes()
}

// Daemon is one running `npu-agent daemon` in a lab host.
type Daemon struct {
	Host       int    // lab host index
	Name       string // for messages: "h3"
	Dir        string
	ConfigPath string
	Socket     string
	LogPath    string

	bin  string
	lab  *netlab.Lab
	cmd  *exec.Cmd
	log  *os.File
	api  *api.Client
	http *http.Client // to the socket, for /metrics

	done    chan struct{} // closed when the process has exited
	waitErr error         // the process's exit, valid once done is closed
	stopped sync.Once
}

// Start writes cfg's files and starts the daemon in host i of lab, or on this machine if lab is nil (see
// Config.Loopback). It returns once the process runs; WaitReady waits for its API. The caller must Stop or Kill it.
func Start(ctx context.Context, lab *netlab.Lab, i int, cfg Config) (*Daemon, error) {
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("e2e: %w", err)
	}
	d := &Daemon{
		Host: i, Name: "h" + strconv.Itoa(i), Dir: cfg.Dir,
		ConfigPath: filepath.Join(cfg.Dir, "config.yaml"),
		Socket:     filepath.Join(cfg.Dir, "run", "api.sock"),
		LogPath:    filepath.Join(cfg.Dir, "daemon.log"),
		bin:        cfg.Binary, lab: lab,
		done: make(chan struct{}),
	}
	files := map[string][]byte{d.ConfigPath: cfg.yaml(), filepath.Join(cfg.Dir, "fingerprint.yaml"): cfg.Fingerprint.YAML()}
	for path, content := range files {
		if err := os.WriteFile(path, content, 0o644); err != nil {
			return nil, fmt.Errorf("e2e: %w", err)
		}
	}
	log, err := os.Create(d.LogPath)
	if err != nil {
		return nil, fmt.Errorf("e2e: %w", err)
	}
	// Not CommandContext: a daemon outlives the context that started it and is ended by Stop or Kill.
	d.cmd = d.command(context.Background(), "--config", d.ConfigPath, "daemon")
	d.cmd.Env = append(daemonEnv(), cfg.Env...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if cfg.User != nil {
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cfg.User}
	}
	if err := d.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("e2e: start daemon on %s: %w", d.Name, err)
	}
	d.log = log
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.done)
	}()
	d.api = api.NewClient(d.Socket)
	d.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "unix", d.Socket)
		},
		DisableKeepAlives: true,
	}}
	return d, ctx.Err()
}

// command is the npu-agent command with args, to run in the daemon's lab host (or on this machine without a lab).
func (d *Daemon) command(ctx context.Context, args ...string) *exec.Cmd {
	if d.lab == nil {
		return exec.CommandContext(ctx, d.bin, args...)
	}
	return d.lab.Command(ctx, d.Host, d.bin, args...)
}

// daemonEnv is the environment of every npu-agent process: the caller's, without NPU_AGENT_ overrides that would
// silently change the config under test.
func daemonEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NPU_AGENT_") {
			env = append(env, kv)
		}
	}
	return env
}

// Exited reports whether the process has ended, and how.
func (d *Daemon) Exited() (bool, error) {
	select {
	case <-d.done:
		return true, d.waitErr
	default:
		return false, nil
	}
}

// PID is the daemon's process ID.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// API is a client of the daemon's local API.
func (d *Daemon) API() *api.Client { return d.api }

// poll calls cond every pollInterval until it returns true or an error, the daemon exits, or ctx ends.
func (d *Daemon) poll(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-d.done:
			return fmt.Errorf("%s: %w (%v) while waiting for %s; log:\n%s", d.Name, ErrExited, d.waitErr, what, d.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %s: %w (last: %v)", d.Name, what, ctx.Err(), last)
		case <-t.C:
		}
	}
}

// WaitReady waits until the daemon answers its health check.
func (d *Daemon) WaitReady(ctx context.Context) error {
	return d.poll(ctx, "its API", func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := d.api.Health(cctx)
		return err == nil, err
	})
}

// WaitPeers waits until the daemon reports at least n connected fleet members.
func (d *Daemon) WaitPeers(ctx context.Context, n int) error {
	return d.poll(ctx, strconv.Itoa(n)+" peers", func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := d.api.Status(cctx)
		if err != nil {
			return false, err
		}
		return len(st.Peers) >= n, fmt.Errorf("%d peers", len(st.Peers))
	})
}

// WaitPeerRecords waits until the daemon has seen at least n records of the fleet member with peer ID id.
func (d *Daemon) WaitPeerRecords(ctx context.Context, id string, n int) error {
	return d.poll(ctx, fmt.Sprintf("%d records of peer %s", n, id), func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := d.api.Status(cctx)
		if err != nil {
			return false, err
		}
		for _, p := range st.Peers {
			if p.ID == id {
				return p.Records >= n, fmt.Errorf("%d records", p.Records)
			}
		}
		return false, errors.New("not a connected peer")
	})
}

// WaitLog waits until the daemon's log has a line for which match is true.
func (d *Daemon) WaitLog(ctx context.Context, what string, match func(line string) bool) error {
	return d.poll(ctx, what, func(context.Context) (bool, error) {
		n, err := d.CountLog(match)
		return n > 0, err
	})
}

// CountLog counts the lines of the daemon's log for which match is true.
func (d *Daemon) CountLog(match func(line string) bool) (int, error) {
	b, err := readBounded(d.LogPath, maxScan)
	if err != nil {
		return 0, err
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		if match(line) {
			n++
		}
	}
	return n, nil
}

// LogMsg matches slog text lines whose message is exactly msg, e.g. LogMsg("compiling").
func LogMsg(msg string) func(string) bool {
	want := " msg=" + msg
	if strings.ContainsAny(msg, " =\"") {
		want = " msg=" + strconv.Quote(msg)
	}
	return func(line string) bool {
		i := strings.Index(line, want)
		if i < 0 {
			return false
		}
		rest := line[i+len(want):]
		return rest == "" || rest[0] == ' ' || rest[0] == '\n'
	}
}

// LogTail is the end of the daemon's log, for failure messages.
func (d *Daemon) LogTail() string {
	b, err := readBounded(d.LogPath, maxScan)
	if err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	if len(b) > maxLogTail {
		b = append([]byte("…"), b[len(b)-maxLogTail:]...)
	}
	return string(b)
}

// Metric returns the value of one sample of the daemon's /metrics, named as the exposition format prints it,
// e.g. `npu_agent_compiles_total{result="ok"}`.
func (d *Daemon) Metric(ctx context.Context, series string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://npu-agent/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s: /metrics: %w", d.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxOutput))
	if err != nil {
		return 0, fmt.Errorf("%s: /metrics: %w", d.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: /metrics: %s", d.Name, resp.Status)
	}
	v, err := MetricValue(body, series)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", d.Name, err)
	}
	return v, nil
}

// MetricValue finds series in a Prometheus text exposition and parses its value.
func MetricValue(exposition []byte, series string) (float64, error) {
	for line := range strings.Lines(string(exposition)) {
		rest, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), series+" ")
		if !ok {
			continue
		}
		// A sample is "series value [timestamp]".
		val, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: %s has value %q: %v", ErrMetric, series, val, err)
		}
		return v, nil
	}
	return 0, fmt.Errorf("%w: %s", ErrMetric, series)
}

// FetchResult is what `npu-agent --json fetch` prints.
type FetchResult struct {
	Source   string `json:"source"` // store, peer or compiled
	CID      string `json:"cid"`
	Path     string `json:"path"`
	Size     uint64 `json:"size"`
	SHA256   string `json:"sha256"`
	Producer string `json:"producer"`
	ModelID  string `json:"model_id"`
}

// Fetch runs `npu-agent --json fetch --model model --shape shape` in the daemon's host, which asks the daemon.
func (d *Daemon) Fetch(ctx context.Context, model, shape string) (FetchResult, error) {
	var r FetchResult
	cmd := d.command(ctx, "--config", d.ConfigPath, "--json", "fetch", "--model", model, "--shape", shape)
	cmd.Env = daemonEnv()
	stdout, stderr := &limitedBuffer{max: maxOutput}, &limitedBuffer{max: maxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		return r, fmt.Errorf("%s: %w: %v: %s", d.Name, ErrFetch, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return r, fmt.Errorf("%s: %w: output %.300q: %v", d.Name, ErrFetch, stdout.Bytes(), err)
	}
	if r.Source == "" || r.Path == "" || len(r.SHA256) != 64 {
		return r, fmt.Errorf("%s: %w: incomplete answer %.300q", d.Name, ErrFetch, stdout.Bytes())
	}
	return r, nil
}

// CLI runs `npu-agent --config <the daemon's> --json args...` in the daemon's host and returns its stdout. A
// non-zero exit is an error with the command's stderr.
func (d *Daemon) CLI(ctx context.Context, args ...string) ([]byte, error) {
	cmd := d.command(ctx, append([]string{"--config", d.ConfigPath, "--json"}, args...)...)
	cmd.Env = daemonEnv()
	stdout, stderr := &limitedBuffer{max: maxOutput}, &limitedBuffer{max: maxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: npu-agent %s: %w: %s", d.Name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// WaitRollout polls the daemon's view of rollout name until cond holds for it.
func (d *Daemon) WaitRollout(ctx context.Context, name, what string, cond func(api.RolloutStatus) error) error {
	return d.poll(ctx, what, func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := d.api.Rollout(cctx, name)
		if err != nil {
			return false, err
		}
		err = cond(st)
		return err == nil, err
	})
}

// Kill ends the daemon with SIGKILL, as a crash or power loss would, and waits for it.
func (d *Daemon) Kill() error {
	var err error
	d.stopped.Do(func() {
		if kerr := d.cmd.Process.Kill(); kerr != nil && !errors.Is(kerr, os.ErrProcessDone) {
			err = fmt.Errorf("%s: kill: %w", d.Name, kerr)
		}
		<-d.done
		err = errors.Join(err, d.log.Close())
	})
	return err
}

// DumpStacks sends the daemon SIGQUIT: the Go runtime writes every goroutine's stack to its log and exits. It is
// for diagnosing a daemon that hangs; Stop reports the exit as an error afterwards.
func (d *Daemon) DumpStacks() error {
	if err := d.cmd.Process.Signal(syscall.SIGQUIT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: SIGQUIT: %w", d.Name, err)
	}
	select {
	case <-d.done:
	case <-time.After(stopGrace):
		return fmt.Errorf("%s: still running %s after SIGQUIT", d.Name, stopGrace)
	}
	return nil
}

// Stop ends the daemon with SIGTERM and waits for it. A daemon that exits with an error, had already died, or
// needs SIGKILL after stopGrace is an error: shutting down cleanly is part of what is tested.
func (d *Daemon) Stop() error {
	err := fmt.Errorf("%s: already stopped", d.Name)
	d.stopped.Do(func() {
		err = nil
		if exited, werr := d.Exited(); exited {
			err = fmt.Errorf("%s: %w before it was stopped (%v)", d.Name, ErrExited, werr)
		} else {
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
				if d.waitErr != nil {
					err = fmt.Errorf("%s: shutdown: %w", d.Name, d.waitErr)
				}
			case <-time.After(stopGrace):
				_ = d.cmd.Process.Kill()
				<-d.done
				err = fmt.Errorf("%s: did not stop within %s of SIGTERM", d.Name, stopGrace)
			}
		}
		err = errors.Join(err, d.log.Close())
	})
	return err
}

// WriteFleetKey writes a new random fleet key in the go-libp2p "swarm.key" v1 format.
func WriteFleetKey(path string) error {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	content := "/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(key[:]) + "\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("e2e: %w", err)
	}
	return nil
}

// WriteModel writes a small OpenVINO IR model (name.xml and name.bin, weightSize bytes) into dir and returns the
// .xml's path. The name is part of the content, so models of different names have different IDs.
func WriteModel(dir, name string, weightSize int) (string, error) {
	xml := filepath.Join(dir, name+".xml")
	content := map[string][]byte{
		xml:                             []byte(`<?xml version="1.0"?><net name=` + strconv.Quote(name) + ` version="11"/>`),
		filepath.Join(dir, name+".bin"): bytes.Repeat([]byte{7}, weightSize),
	}
	for path, b := range content {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return "", fmt.Errorf("e2e: %w", err)
		}
	}
	return xml, nil
}

// readBounded reads at most the last max bytes of path.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > max {
		if _, err := f.Seek(st.Size()-max, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(io.LimitReader(f, max))
}

// limitedBuffer keeps the first max bytes written to it and drops the rest.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
