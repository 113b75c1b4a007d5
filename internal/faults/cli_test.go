package faults_test

// Fault tests of the npu-agent CLI: `fetch` SIGKILLed while it compiles, stores and exports a big blob, then run
// again; `fetch` on a data directory whose disk is full.

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/internal/faults"
)

var agentBin string // built once by TestMain

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "npu-faults-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		agentBin = filepath.Join(dir, "npu-agent")
		if out, err := exec.Command("go", "build", "-o", agentBin, "github.com/npu-agent/npu-agent/cmd/npu-agent").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build npu-agent: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}())
}

const fingerprint = `openvino: "2026.1.0"
arch: "4000"
driver_version: "1747152000"
compiler_type: PLUGIN
compiler_version: "7.4"
max_tiles: 6
stepping: 4
firmware_mi: "11.4"
`

// cli runs npu-agent with the sim compiler on one data directory.
type cli struct {
	t       *testing.T
	dataDir string
	model   string
	fp      string
	env     []string
}

func newCLI(t *testing.T, dataDir string, blobSize string) *cli {
	dir := t.TempDir()
	c := &cli{t: t, dataDir: dataDir, model: filepath.Join(dir, "m.xml"), fp: filepath.Join(dir, "fp.yaml"),
		// The CLI works in-process on dataDir: never through a daemon of this machine.
		env: append(os.Environ(), "NPU_AGENT_COMPILER_SIM_COMPILE_TIME=10ms", "NPU_AGENT_COMPILER_SIM_BLOB_SIZE="+blobSize,
			"NPU_AGENT_SOCKET="+filepath.Join(dir, "no-daemon.sock"))}
	for name, body := range map[string]string{"m.xml": "<net/>", "m.bin": strings.Repeat("w", 5000), "fp.yaml": fingerprint} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *cli) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(agentBin, append([]string{"--data-dir", c.dataDir, "--compiler", "sim", "--fingerprint-override", c.fp}, args...)...)
	cmd.Env = c.env
	return cmd
}

func (c *cli) fetchArgs(shape string, extra ...string) []string {
	return append([]string{"fetch", "--model", c.model, "--shape", shape}, extra...)
}

// run runs npu-agent to its end and returns stdout, stderr and the exit code.
func (c *cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	cmd := c.cmd(args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		c.t.Fatalf("run npu-agent %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

type fetchResult struct {
	Source string `json:"source"`
	CID    string `json:"cid"`
	Path   string `json:"path"`
	Size   uint64 `json:"size"`
	SHA256 string `json:"sha256"`
}

// fetchOK fetches (compiling if needed), checks the blob written to --out against the reported sha256, and runs
// verify.
func (c *cli) fetchOK(shape string) fetchResult {
	c.t.Helper()
	out := filepath.Join(c.t.TempDir(), "out.blob")
	stdout, stderr, code := c.run(append([]string{"--json"}, c.fetchArgs(shape, "--out", out)...)...)
	if code != 0 {
		c.t.Fatalf("fetch: exit %d: %s", code, stderr)
	}
	var r fetchResult
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		c.t.Fatalf("fetch --json printed %q: %v", stdout, err)
	}
	for _, path := range []string{out, r.Path} {
		if sum := sha256File(c.t, path); sum != r.SHA256 {
			c.t.Errorf("%s has sha256 %s, fetch reported %s", path, sum, r.SHA256)
		}
	}
	c.verifyOK()
	return r
}

func (c *cli) verifyOK() {
	c.t.Helper()
	stdout, stderr, code := c.run("verify")
	if code != 0 || !strings.Contains(stdout, " 0 corrupt") {
		c.t.Fatalf("verify: exit %d: %s%s", code, stdout, stderr)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// leftovers lists files in the data directory that a finished fetch should not leave: compiler scratch and
// half-written exports.
func leftovers(t *testing.T, dataDir string) []string {
	t.Helper()
	var found []string
	for _, pattern := range []string{"scratch/*", "blobs/.*"} {
		m, err := filepath.Glob(filepath.Join(dataDir, pattern))
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, m...)
	}
	return found
}

func TestFaultCrashCLIFetch(t *testing.T) {
	t.Parallel()
	rng := faults.Rand(t)
	timeout := faults.Pick(2*time.Minute, 10*time.Minute)
	c := newCLI(t, filepath.Join(t.TempDir(), "data"), faults.Pick("64MiB", "512MiB"))

	// Kill points are drawn over the time an uninterrupted fetch takes from its "compiling" log line to its exit
	// (compile, put, export), measured first in another data directory.
	ref := *c
	ref.dataDir = filepath.Join(t.TempDir(), "ref")
	p := faults.Start(t, timeout, ref.cmd(c.fetchArgs("x=1,8")...))
	p.Await("msg=compiling")
	start := time.Now()
	if err := p.Wait(); err != nil {
		t.Fatalf("uninterrupted fetch: %v", err)
	}
	span := time.Since(start)

	// Each kill hits its own blob (another shape), so that each fetch compiles even when the one before finished
	// ahead of its kill.
	shapes := []string{"x=1,8", "x=1,9", "x=1,10", "x=1,11", "x=1,12"}[:faults.Pick(1, 5)]
	for it, shape := range shapes {
		p := faults.Start(t, timeout, c.cmd(c.fetchArgs(shape)...))
		p.Await("msg=compiling")
		delay := time.Duration(rng.Int64N(int64(span)))
		killed := p.KillAfter(delay)
		phase := "compile or put"
		if strings.Contains(p.Tail(), "msg=compiled") {
			phase = "export"
		}
		left := leftovers(t, c.dataDir)
		c.verifyOK()
		stdout, stderr, code := c.run("ls")
		if code != 0 {
			t.Fatalf("ls after kill %d: exit %d: %s", it, code, stderr)
		}
		t.Logf("kill %d: %s of %s after the compile began (%s): killed %v; left behind: %v; ls:\n%s", it, delay, span,
			phase, killed, left, stdout)
	}
	for _, shape := range shapes {
		r := c.fetchOK(shape)
		t.Logf("fetch %s after the kills: %s %s, %d bytes", shape, r.Source, r.CID, r.Size)
		if again := c.fetchOK(shape); again.Source != "store" || again.CID != r.CID {
			t.Errorf("second fetch of %s: %s %s, want the stored %s", shape, again.Source, again.CID, r.CID)
		}
	}
	stdout, stderr, code := c.run("--json", "ls")
	if code != 0 {
		t.Fatalf("ls: exit %d: %s", code, stderr)
	}
	if n := strings.Count(stdout, `"complete": false`) + strings.Count(stdout, `"complete":false`); n != 0 {
		t.Errorf("ls shows %d incomplete blobs after the fetch completed: %s", n, stdout)
	}
	if l := leftovers(t, c.dataDir); len(l) != 0 {
		t.Errorf("left behind after a successful fetch: %v", l)
	}
}

func TestFaultFullDiskCLI(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, blobSize string
		tmpfs          int64
		msg            string
	}{
		// The compiler's output fits, the store's copy does not (it keeps 256 MiB free).
		{"store full", "96MiB", 320 << 20, "not enough free disk space"},
		// Not even the compiler's output fits.
		{"scratch full", "400MiB", 320 << 20, "no space left on device"},
	}
	if !faults.Long() {
		tests = tests[:1]
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dataDir := faults.Tmpfs(t, tt.tmpfs)
			c := newCLI(t, dataDir, tt.blobSize)
			_, stderr, code := c.run(append([]string{"--log-level", "error"}, c.fetchArgs("x=1,8")...)...)
			t.Logf("fetch of a %s blob on a %d MiB disk: exit %d: %s", tt.blobSize, tt.tmpfs>>20, code, stderr)
			if code == 0 || !strings.Contains(stderr, tt.msg) {
				t.Errorf("fetch exit %d, stderr %q; want a failure saying %q", code, stderr, tt.msg)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); n != 0 {
				t.Errorf("the error spans %d lines, want one", n+1)
			}
			c.verifyOK()
			if l := leftovers(t, dataDir); len(l) != 0 {
				t.Errorf("left behind after the failed fetch: %v", l)
			}
			// The space is back: a blob that fits is fetched.
			c.env = append(c.env, "NPU_AGENT_COMPILER_SIM_BLOB_SIZE=8MiB")
			r := c.fetchOK("x=1,4")
			if r.Source != "compiled" {
				t.Errorf("fetch of a small blob after the failure: source %s", r.Source)
			}
		})
	}
}
