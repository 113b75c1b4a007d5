package compile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/compat"
)

func shCommand(t *testing.T, script string, args ...string) *Command {
	t.Helper()
	c, err := NewCommand(append([]string{"sh", "-c", script, "sh"}, args...), testFP, []string{"NPU_AGENT_TEST=1"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewCommandValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		argv []string
		want string
	}{
		{"empty", nil, "empty command"},
		{"placeholder program", []string{"{model}", "{out}"}, "must not be a placeholder"},
		{"unknown placeholder", []string{"cc", "{out}", "{modle}"}, "unknown placeholder {modle}"},
		{"no out", []string{"cc", "{model}"}, "{out}"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewCommand(tc.argv, testFP, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	for _, fp := range []compat.Fingerprint{{OpenVINO: "2025.3.0"}, {OpenVINO: "2025.3", Arch: "4000"}, {OpenVINO: "2025.3.0", Arch: "NPU 4000"}} {
		if _, err := NewCommand([]string{"cc", "-o", "{out}"}, fp, nil); err == nil {
			t.Errorf("accepted fingerprint %+v", fp)
		}
	}
	c, err := NewCommand([]string{"cc", "-o", "{out}"}, compat.Fingerprint{OpenVINO: "2025.03.0", Arch: "4000", CompilerType: "mlir"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fp, _ := c.Probe(context.Background()); fp.OpenVINO != "2025.3.0" || fp.CompilerType != compat.CompilerPlugin {
		t.Errorf("probe = %+v, want the fingerprint normalised", fp)
	}
}

func TestCommandCompile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	req := testRequest(t, dir)
	req.Profile.Properties = map[string]string{"npu_turbo": "true"}
	c := shCommand(t, `out=$1; shift; profile=$1; shift; printf '%s\n' "$@" > "$out"; cat "$profile" >> "$out"; echo junk > junk.txt; echo compiled $NPU_AGENT_TEST`,
		"{out}", "{profile_file}", "{model}", "{model_xml}", "{model_bin}", "--device={device}", "{profile_json}", "{model_id}", "{profile_id}")
	res, err := c.Compile(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	assertOnlyOutput(t, dir, true)
	xml, _ := req.Model.File(RoleXML)
	bin, _ := req.Model.File(RoleBin)
	profJSON, _ := req.Profile.CanonicalJSON()
	profID, _ := req.Profile.ID()
	want := strings.Join([]string{xml.Path, xml.Path, bin.Path, "--device=NPU", string(profJSON), req.Model.ID, profID}, "\n") + "\n" + string(profJSON)
	got, _ := os.ReadFile(req.OutPath)
	if string(got) != want {
		t.Errorf("command saw\n%s\nwant\n%s", got, want)
	}
	if res.Log != "compiled 1\n" || res.Size != int64(len(want)) || res.Duration <= 0 {
		t.Errorf("result = %+v", res)
	}
}

func TestCommandFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script string
		onnx   bool
		args   []string
		want   error
		inLog  string
	}{
		{"exit status", `echo boom >&2; echo half > "$1"; exit 3`, false, []string{"{out}"}, ErrCompileFailed, "boom"},
		{"no output", `echo done`, false, []string{"{out}"}, ErrNoOutput, "done"},
		{"empty output", `: > "$1"`, false, []string{"{out}"}, ErrNoOutput, ""},
		{"directory output", `mkdir "$1"`, false, []string{"{out}"}, ErrNoOutput, ""},
		{"bin of an onnx model", `true`, true, []string{"{out}", "{model_bin}"}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			req := testRequest(t, dir)
			if tc.onnx {
				m, err := LoadModel(writeFile(t, filepath.Join(dir, "model", "m.onnx"), "onnx"))
				if err != nil {
					t.Fatal(err)
				}
				req.Model = m
			}
			_, err := shCommand(t, tc.script, tc.args...).Compile(context.Background(), req)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			var ce *CompileError
			if tc.inLog != "" && (!errors.As(err, &ce) || !strings.Contains(ce.Log, tc.inLog) || !strings.Contains(err.Error(), tc.inLog)) {
				t.Errorf("err = %v, want the log %q in it", err, tc.inLog)
			}
			assertOnlyOutput(t, dir, false)
		})
	}
}

func TestCommandLogBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := shCommand(t, `i=0; while [ $i -lt 3000 ]; do echo "line $i of a chatty compiler ........................"; i=$((i+1)); done; echo END; echo blob > "$1"`, "{out}")
	res, err := c.Compile(context.Background(), testRequest(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Log) > maxLog+100 || !strings.HasSuffix(res.Log, "END\n") || !strings.HasPrefix(res.Log, "[earlier output dropped]") {
		t.Errorf("log of %d bytes, head %q", len(res.Log), res.Log[:min(len(res.Log), 40)])
	}
}

// waitFor polls cond every 10 ms for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// tryReadPID returns the pid in path, or 0 if it was never written.
func tryReadPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "the compiler's child pid", func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

// assertCancelKillsGroup runs b.Compile(req), whose compiler starts a child that writes its pid to pidFile, and
// ends it: by cancelling once the child runs, or by req.Timeout if set. The compile must fail with the matching
// error, the child must die with the compiler, and nothing but the model may stay next to req.OutPath.
func assertCancelKillsGroup(t *testing.T, b Backend, req Request, pidFile string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { _, err := b.Compile(ctx, req); errc <- err }()
	// Under load the timeout may strike before the child exists; cancellation waits for it.
	byTimeout := req.Timeout > 0
	pid := 0
	if !byTimeout {
		pid = readPID(t, pidFile)
		cancel()
	}
	err := <-errc
	want := error(context.Canceled)
	if byTimeout {
		want = ErrTimeout
	}
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if byTimeout {
		pid = tryReadPID(pidFile)
	}
	if pid != 0 {
		waitFor(t, "the compiler's child to die", func() bool { return processGone(pid) })
	}
	os.Remove(pidFile)
	assertOnlyOutput(t, filepath.Dir(req.OutPath), false)
}

// A cancelled compile kills the whole process group: the command and what it started.
func TestCommandCancelKillsGroup(t *testing.T) {
	t.Parallel()
	for _, byTimeout := range []bool{false, true} {
		t.Run("timeout="+strconv.FormatBool(byTimeout), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			pidFile := filepath.Join(dir, "child.pid")
			c := shCommand(t, `sleep 60 & echo $! > "$2.tmp"; mv "$2.tmp" "$2"; wait`, "{out}", pidFile)
			req := testRequest(t, dir)
			if byTimeout {
				req.Timeout = time.Second
			}
			assertCancelKillsGroup(t, c, req, pidFile)
		})
	}
}
