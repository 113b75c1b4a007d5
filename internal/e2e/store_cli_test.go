//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/api"
)

// daemonUID is the user the store test runs its daemon as when the test runs as root: not root, not the caller,
// as the packaged unit runs the daemon as npu-agent and operators call the CLI as root. "nobody" exists everywhere.
const daemonUID = 65534

// TestStoreCommandsThroughDaemon drives every store command of the installed CLI through a running daemon of
// another user, as an operator (root) does on a packaged host: fetch, inspect, put, ls, pin, gc (no quota, dry run,
// target), verify, a rollout's pin refused by unpin without --force, unpin, rm. It checks each command's JSON and
// exit code, that a member of the daemon's group may list but not change the store, and that afterwards the daemon
// stops cleanly and a new daemon opens the same store: no command left a file the daemon's user cannot open.
func TestStoreCommandsThroughDaemon(t *testing.T) {
	requireLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	dir, err := os.MkdirTemp("", "npu-agent-store-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var user *syscall.Credential
	if os.Geteuid() == 0 {
		user = &syscall.Credential{Uid: daemonUID, Gid: daemonUID} // Groups nil: none of root's
	} else {
		t.Log("not root: the daemon runs as the caller")
	}
	// The daemon's directory is its user's; the operator's files (models, keys, outputs) are root's in dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	daemonDir := filepath.Join(dir, "daemon")
	if err := os.Mkdir(daemonDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if user != nil {
		if err := os.Chown(daemonDir, int(user.Uid), int(user.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	// The binary is installed where every user may run it, as /usr/bin/npu-agent is.
	bin := filepath.Join(dir, "npu-agent")
	exe, err := os.ReadFile(npuAgent)
	if err == nil {
		err = os.WriteFile(bin, exe, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	model, err := WriteModel(dir, "e2e-store", 32<<10)
	if err != nil {
		t.Fatal(err)
	}
	cli := &storeCLI{t: t, ctx: ctx, bin: bin}
	opKey := filepath.Join(dir, "operator.key")
	var kg struct {
		PublicKey string `json:"public_key"`
	}
	cli.json(0, &kg, "keygen", "--out", opKey)

	cfg := Config{Binary: bin, Dir: daemonDir, Fingerprint: LunarLake, CompileTime: 50 * time.Millisecond,
		BlobSize: 256 << 10, TrustedKeys: []string{kg.PublicKey}, User: user}
	d := startStoreDaemon(ctx, t, cfg)
	cli.config = d.ConfigPath

	// fetch: compiled by the daemon, handed out at --out.
	out := filepath.Join(dir, "out.blob")
	var fetched FetchResult
	cli.json(0, &fetched, "fetch", "--model", model, "--shape", testShape, "--out", out)
	if fetched.Source != "compiled" || fetched.Path != out || !strings.HasPrefix(fetched.CID, "b") {
		t.Fatalf("fetch: %+v", fetched)
	}
	// inspect: the blob loads on the daemon's host.
	var insp struct {
		File     string          `json:"file"`
		Size     int64           `json:"size"`
		Trailer  json.RawMessage `json:"trailer"`
		Host     string          `json:"host_check"`
		Decision struct {
			Compatible bool     `json:"compatible"`
			Reasons    []string `json:"reasons"`
		} `json:"decision"`
	}
	cli.json(0, &insp, "inspect", out)
	if insp.Host != "compatible" || insp.Size != int64(fetched.Size) || len(insp.Trailer) < 10 ||
		!insp.Decision.Compatible || insp.Decision.Reasons == nil {
		t.Fatalf("inspect: %+v", insp)
	}

	// put: a blob compiled on another host of the class (here: the CLI alone on a store of its own) is handed back.
	other := filepath.Join(dir, "elsewhere")
	otherCfg := Config{Dir: other, Fingerprint: LunarLake, CompileTime: time.Millisecond, BlobSize: 128 << 10}
	if err := os.MkdirAll(other, 0o700); err != nil {
		t.Fatal(err)
	}
	otherConfig := filepath.Join(other, "config.yaml")
	for path, b := range map[string][]byte{otherConfig: otherCfg.yaml(), filepath.Join(other, "fingerprint.yaml"): LunarLake.YAML()} {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	elsewhere := filepath.Join(dir, "elsewhere.blob")
	var local FetchResult
	cli.jsonWith(otherConfig, 0, &local, "fetch", "--model", model, "--shape", "x=1,16", "--out", elsewhere)
	var put FetchResult
	cli.json(0, &put, "put", "--model", model, "--shape", "x=1,16", elsewhere)
	if put.CID != local.CID || put.CID == fetched.CID || put.SHA256 != local.SHA256 {
		t.Fatalf("put: %+v, the blob compiled elsewhere was %+v", put, local)
	}

	// A rollout pins its blob (version 1 of "store-kiosk", another shape).
	var pub api.Rollout
	cli.json(0, &pub, "publish", "--key", opKey, "--name", "store-kiosk", "--version", "1", "--model", model,
		"--shape", "x=1,32", "--expires", "1h")
	if err := d.WaitRollout(ctx, "store-kiosk", "version 1 ready", selfReady(1)); err != nil {
		t.Fatal(err)
	}
	var rst api.RolloutStatus
	cli.json(0, &rst, "rollout", "status", "store-kiosk")
	if hn, _ := os.Hostname(); len(rst.Peers) != 1 || !rst.Peers[0].Self || rst.Peers[0].Hostname != hn || rst.Peers[0].Class == "" ||
		rst.Peers[0].AgentVersion == "" {
		t.Errorf("rollout status: %+v, want this host's row with hostname %q, class and npu-agent version", rst.Peers, hn)
	}
	if v, err := d.Metric(ctx, `npu_agent_rollouts{state="ready"}`); err != nil || v != 1 {
		t.Errorf(`npu_agent_rollouts{state="ready"} = %v (%v), want 1`, v, err)
	}

	// ls: the fetched and the put blob with their records; the rollout's compiled blob and its source model's
	// files (blobs peers fetch the model from, without records) pinned by the rollout.
	blobs := cli.ls()
	var rolloutCID string
	rolloutPinned := 0
	for _, b := range blobs {
		byRollout := slices.Equal(b.PinnedBy, []string{"store-kiosk version 1"})
		if byRollout {
			rolloutPinned++
		}
		if byRollout && len(b.Records) > 0 {
			rolloutCID = b.CID
		}
		if !b.Complete || b.Chunks == 0 || len(b.SHA256) != 64 || !byRollout && len(b.Records) == 0 ||
			len(b.Records) > 0 && b.Records[0].ModelID != fetched.ModelID {
			t.Errorf("ls row %+v", b)
		}
	}
	if rolloutCID == "" || rolloutPinned != 3 || len(blobs) != 5 ||
		!slices.ContainsFunc(blobs, func(b api.StoredBlob) bool { return b.CID == put.CID && !b.Pinned }) {
		t.Fatalf("ls: %+v", blobs)
	}

	// The socket's group may list, and gets a permission error (exit 1, not "no daemon") when it tries a change.
	if user != nil {
		member := &syscall.Credential{Uid: daemonUID - 1, Gid: user.Gid}
		if got := cli.as(member).ls(); len(got) != len(blobs) {
			t.Errorf("ls by a group member: %d rows, want %d", len(got), len(blobs))
		}
		if _, errOut := cli.as(member).run(api.ExitError, "pin", fetched.CID); !strings.Contains(errOut, "permission") &&
			!strings.Contains(errOut, "forbidden") {
			t.Errorf("pin by a group member: %s", errOut)
		}
	}

	var pin api.PinResponse
	cli.json(0, &pin, "pin", fetched.CID)
	if pin.CID != fetched.CID || !pin.Pinned {
		t.Fatalf("pin: %+v", pin)
	}
	var gc api.GCResponse
	cli.json(0, &gc, "gc")
	if gc.Target != nil || len(gc.Removed) != 0 || !strings.Contains(gc.Note, "no quota") {
		t.Fatalf("gc without quota or target: %+v", gc)
	}
	gc = api.GCResponse{}
	cli.json(0, &gc, "gc", "--dry-run", "--target", "0")
	if !gc.DryRun || !slices.Contains(gc.Removed, put.CID) || slices.Contains(gc.Removed, fetched.CID) ||
		slices.Contains(gc.Removed, rolloutCID) || gc.FreedBytes == 0 {
		t.Fatalf("gc --dry-run --target 0: %+v (pinned: %s, %s)", gc, fetched.CID, rolloutCID)
	}
	if n := len(cli.ls()); n != len(blobs) {
		t.Fatalf("the dry run removed blobs: %d left of %d", n, len(blobs))
	}
	var ver api.VerifyResponse
	cli.json(0, &ver, "verify")
	if ver.Blobs != len(blobs) || ver.Chunks < ver.Blobs || len(ver.Corrupt) != 0 || ver.Corrupt == nil {
		t.Fatalf("verify: %+v", ver)
	}

	// unpin of the rollout's blob: refused, naming the rollout version and --force; then forced, with a warning.
	if _, errOut := cli.run(api.ExitError, "unpin", rolloutCID); !strings.Contains(errOut, "store-kiosk version 1") ||
		!strings.Contains(errOut, "--force") {
		t.Fatalf("unpin of a rollout's blob: %s", errOut)
	}
	if _, errOut := cli.run(api.ExitError, "rm", rolloutCID); !strings.Contains(errOut, "pinned") {
		t.Fatalf("rm of a pinned blob: %s", errOut)
	}
	pin = api.PinResponse{}
	cli.json(0, &pin, "unpin", "--force", rolloutCID)
	if pin.Pinned || !slices.Equal(pin.PinnedBy, []string{"store-kiosk version 1"}) || pin.Note == "" {
		t.Fatalf("unpin --force: %+v", pin)
	}
	pin = api.PinResponse{}
	cli.json(0, &pin, "unpin", fetched.CID)
	if pin.Pinned || pin.CID != fetched.CID {
		t.Fatalf("unpin: %+v", pin)
	}
	var rm api.RemoveResponse
	cli.json(0, &rm, "rm", put.CID)
	if rm.Removed != put.CID {
		t.Fatalf("rm: %+v", rm)
	}
	cli.run(api.ExitNotFound, "rm", put.CID)
	cli.pin(fetched.CID)
	// gc removes the blob whose rollout pin was forced off, keeps the pinned ones.
	gc = api.GCResponse{}
	cli.json(0, &gc, "gc", "--target", "0")
	if gc.DryRun || gc.Kept != rolloutPinned || !slices.Equal(gc.Removed, []string{rolloutCID}) || gc.Target == nil || *gc.Target != 0 {
		t.Fatalf("gc --target 0: %+v, want only %s removed", gc, rolloutCID)
	}
	left := cli.ls()
	if !slices.ContainsFunc(left, func(b api.StoredBlob) bool { return b.CID == fetched.CID && b.Pinned }) {
		t.Fatalf("ls after gc: %+v", left)
	}

	// The daemon stops cleanly; nothing in its directory belongs to anyone else; a new daemon opens the store.
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if user != nil {
		checkOwned(t, daemonDir, user.Uid)
	}
	d2 := startStoreDaemon(ctx, t, cfg)
	// The rollout prepares its version again (the blob gc removed comes back, pinned) before the store is compared.
	if err := d2.WaitRollout(ctx, "store-kiosk", "version 1 ready after the restart", selfReady(1)); err != nil {
		t.Fatal(err)
	}
	again := cli.ls()
	for _, b := range left {
		if !slices.ContainsFunc(again, func(x api.StoredBlob) bool { return x.CID == b.CID && x.Pinned == b.Pinned }) {
			t.Errorf("after a restart ls lacks %s (pinned %t): %+v", b.CID, b.Pinned, again)
		}
	}
	ver = api.VerifyResponse{}
	cli.json(0, &ver, "verify")
	if ver.Blobs != len(again) || len(ver.Corrupt) != 0 {
		t.Fatalf("verify after a restart: %+v, ls has %d blobs", ver, len(again))
	}
	if err := d2.Stop(); err != nil {
		t.Fatal(err)
	}
}

// startStoreDaemon starts a loopback-free daemon (p2p off) of cfg and waits for its API; it is stopped when the
// test ends unless the test stopped it.
func startStoreDaemon(ctx context.Context, t *testing.T, cfg Config) *Daemon {
	t.Helper()
	d, err := Start(ctx, nil, -1, cfg)
	if d != nil {
		d.Name = "store"
		t.Cleanup(func() {
			if exited, _ := d.Exited(); !exited {
				_ = d.Stop()
			}
			if t.Failed() {
				t.Logf("=== log of the daemon:\n%s", d.LogTail())
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// checkOwned fails the test for every file under dir not owned by uid.
func checkOwned(t *testing.T, dir string, uid uint32) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if path == filepath.Join(dir, "daemon.log") || filepath.Dir(path) == dir && !e.IsDir() {
			return nil // the test's own files: config, fingerprint, log
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid != uid {
			t.Errorf("%s belongs to uid %d, not the daemon's %d", path, st.Uid, uid)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// storeCLI runs `npu-agent --config <config> --json ...` as the test's user or another one.
type storeCLI struct {
	t      *testing.T
	ctx    context.Context
	bin    string
	config string
	user   *syscall.Credential
}

func (c *storeCLI) as(user *syscall.Credential) *storeCLI {
	cc := *c
	cc.user = user
	return &cc
}

// runNoFail runs the command and returns stdout and stderr whatever its exit (safe in other goroutines).
func (c *storeCLI) runNoFail(args ...string) (string, string) {
	cmd, stdout, stderr := c.command(c.config, args)
	_ = cmd.Run()
	return stdout.String(), stderr.String()
}

func (c *storeCLI) command(config string, args []string) (*exec.Cmd, *limitedBuffer, *limitedBuffer) {
	full := []string{"--json"}
	if config != "" {
		full = append([]string{"--config", config}, full...)
	}
	cmd := exec.CommandContext(c.ctx, c.bin, append(full, args...)...)
	cmd.Env = daemonEnv()
	if c.user != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.user}
	}
	stdout, stderr := &limitedBuffer{max: maxOutput}, &limitedBuffer{max: maxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd, stdout, stderr
}

// run runs the command, fails the test unless it exits with code, and returns stdout and stderr.
func (c *storeCLI) run(code int, args ...string) (string, string) {
	c.t.Helper()
	return c.runWith(c.config, code, args...)
}

func (c *storeCLI) runWith(config string, code int, args ...string) (string, string) {
	c.t.Helper()
	cmd, stdout, stderr := c.command(config, args)
	err := cmd.Run()
	got := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		got = exit.ExitCode()
	} else if err != nil {
		c.t.Fatalf("npu-agent %s: %v", strings.Join(args, " "), err)
	}
	if got != code {
		c.t.Fatalf("npu-agent %s: exit %d, want %d: %s %s", strings.Join(args, " "), got, code,
			bytes.TrimSpace(stdout.Bytes()), bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), stderr.String()
}

// json runs the command, expecting exit code, and decodes its stdout, which must be one JSON value, into v.
func (c *storeCLI) json(code int, v any, args ...string) {
	c.t.Helper()
	c.jsonWith(c.config, code, v, args...)
}

func (c *storeCLI) jsonWith(config string, code int, v any, args ...string) {
	c.t.Helper()
	out, _ := c.runWith(config, code, args...)
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(v); err != nil {
		c.t.Fatalf("npu-agent %s printed %.400q: %v", strings.Join(args, " "), out, err)
	}
	if dec.More() {
		c.t.Fatalf("npu-agent %s printed more than one JSON value: %.400q", strings.Join(args, " "), out)
	}
}

func (c *storeCLI) ls() []api.StoredBlob {
	c.t.Helper()
	var out []api.StoredBlob
	c.json(0, &out, "ls")
	if out == nil {
		c.t.Fatal("ls printed null, want []")
	}
	return out
}

func (c *storeCLI) pin(cid string) {
	c.t.Helper()
	var res api.PinResponse
	c.json(0, &res, "pin", cid)
	if !res.Pinned {
		c.t.Fatalf("pin %s: %+v", cid, res)
	}
}
