package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run executes the CLI in-process and returns stdout, stderr and the exit code main would use.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if err != nil {
		printError(&errOut, jsonRequested(args), err)
	}
	return out.String(), errOut.String(), exitCode(err)
}

const fpA = `openvino: "2026.1.0"
arch: "4000"
driver_version: "1747152000"
compiler_type: PLUGIN
compiler_version: "7.4"
max_tiles: 6
stepping: 4
firmware_mi: "11.4"
`

type fixture struct {
	dir, model, fp string
}

func newFixture(t testing.TB) fixture {
	t.Helper()
	dir := t.TempDir()
	f := fixture{dir: dir, model: filepath.Join(dir, "m.xml"), fp: filepath.Join(dir, "fp.yaml")}
	// The config keeps the CLI off any daemon of the host: the socket is where startDaemon puts the fixture's.
	cfg := "runtime_dir: " + filepath.Join(dir, "run") + "\n"
	for name, body := range map[string]string{"m.xml": "<net/>", "m.bin": strings.Repeat("w", 5000), "fp.yaml": fpA, "cfg.yaml": cfg} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f fixture) args(extra ...string) []string {
	base := []string{"--config", filepath.Join(f.dir, "cfg.yaml"), "--data-dir", filepath.Join(f.dir, "data"), "--compiler", "sim",
		"--fingerprint-override", f.fp}
	return append(base, extra...)
}

func TestFetchThenStore(t *testing.T) {
	t.Setenv("NPU_AGENT_COMPILER_SIM_COMPILE_TIME", "1ms")
	f := newFixture(t)
	var got []fetchResult
	for i := 0; i < 2; i++ {
		out, errOut, code := run(t, f.args("--json", "fetch", "--model", f.model, "--shape", "x=1,8", "--out", filepath.Join(f.dir, "out.blob"))...)
		if code != 0 {
			t.Fatalf("fetch %d: exit %d: %s", i, code, errOut)
		}
		var r fetchResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("fetch --json printed %q: %v", out, err)
		}
		got = append(got, r)
	}
	if got[0].Source != "compiled" || got[1].Source != "store" || got[0].CID != got[1].CID {
		t.Fatalf("sources %s, %s; cids %s, %s", got[0].Source, got[1].Source, got[0].CID, got[1].CID)
	}
	out, _, code := run(t, f.args("inspect", filepath.Join(f.dir, "out.blob"))...)
	if code != 0 || !strings.Contains(out, "compatible") {
		t.Fatalf("inspect: exit %d: %s", code, out)
	}
	out, _, code = run(t, f.args("verify")...)
	if code != 0 || !strings.Contains(out, "0 corrupt") {
		t.Fatalf("verify: exit %d: %s", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	t.Setenv("NPU_AGENT_COMPILER_SIM_COMPILE_TIME", "1ms")
	f := newFixture(t)
	// No case may reach a daemon of the host (--config /dev/null would mean the default socket).
	t.Setenv("NPU_AGENT_SOCKET", filepath.Join(f.dir, "no-daemon.sock"))
	garbage := filepath.Join(f.dir, "garbage.blob")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("z", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown flag", []string{"ls", "--nope"}, exitUsage, "unknown flag"},
		{"unknown command", []string{"lss"}, exitUsage, "did you mean ls?"},
		{"unknown subcommand", []string{"rollout", "bogus"}, exitUsage, `unknown command "bogus"`},
		{"config problem", []string{"--config", "/nonexistent.yaml", "ls"}, exitUsage, "nonexistent.yaml"},
		{"missing model flag", f.args("fetch"), exitUsage, "--model is required"},
		{"model not found", f.args("fetch", "--model", filepath.Join(f.dir, "none.xml")), exitNotFound, "none.xml"},
		{"bad shape", f.args("fetch", "--model", f.model, "--shape", "x=1,-1"), exitUsage, "x"},
		{"not a blob", f.args("inspect", garbage), exitIncompatible, "missing the NPU metadata"},
		{"bad cid", f.args("rm", "not-a-cid"), exitUsage, "not-a-cid"},
		{"unknown blob", f.args("rm", "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"), exitNotFound, "not found"},
		{"no compiler", []string{"--data-dir", filepath.Join(f.dir, "d2"), "--fingerprint-override", f.fp, "--config", "/dev/null",
			"fetch", "--model", f.model}, exitNoCompiler, "no compiler available"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := run(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.msg) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errOut, tt.code, tt.msg)
			}
			if n := strings.Count(strings.TrimSpace(errOut), "\n"); n != 0 {
				t.Errorf("error spans %d lines, want one: %q", n+1, errOut)
			}
		})
	}
}
