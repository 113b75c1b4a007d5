package compile

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/compat"
)

// fakeOV returns an OpenVINO backend whose helper imports the stand-in package in testdata/fakeov, with the
// given FAKEOV_* settings, and the file the stand-in logs its calls to.
func fakeOV(t *testing.T, env ...string) (*OpenVINO, string) {
	t.Helper()
	if _, err := exec.LookPath(DefaultPython); err != nil {
		t.Skip("python3 not installed")
	}
	fake, err := filepath.Abs(filepath.Join("testdata", "fakeov"))
	if err != nil {
		t.Fatal(err)
	}
	calls := filepath.Join(t.TempDir(), "calls.jsonl")
	env = append([]string{"PYTHONPATH=" + fake, "FAKEOV_CALLS=" + calls}, env...)
	o, err := NewOpenVINO("", t.TempDir(), env)
	if err != nil {
		t.Fatal(err)
	}
	return o, calls
}

type fakeCall struct {
	Call    string             `json:"call"`
	Model   string             `json:"model"`
	Weights string             `json:"weights"`
	Shapes  map[string][]int64 `json:"shapes"`
	Device  string             `json:"device"`
	Config  map[string]string  `json:"config"`
}

func readCalls(t *testing.T, path string) []fakeCall {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var calls []fakeCall
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var c fakeCall
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	return calls
}

func TestOpenVINOProbe(t *testing.T) {
	t.Parallel()
	o, _ := fakeOV(t, "FAKEOV_STDOUT_NOISE=1")
	pr, err := o.ProbeProperties(context.Background(), "NPU")
	if err != nil {
		t.Fatal(err)
	}
	if pr.OpenVINO != "2025.3.0-19807-44526285f24-releases/2025/3" || !reflect.DeepEqual(pr.Absent, []string{"RUNTIME_REQUIREMENTS"}) ||
		pr.Properties["NPU_COMPILER_VERSION"] != "458773" {
		t.Errorf("probe = %+v", pr)
	}
	fp, err := o.Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := compat.Fingerprint{
		OpenVINO: "2025.3.0", Arch: "4000", DriverVersion: "1758000000", CompilerType: "DRIVER",
		CompilerVersion: "7.21", MaxTiles: 6, OS: runtime.GOOS, CPUArch: runtime.GOARCH,
	}
	if fp != want {
		t.Errorf("fingerprint\n got %+v\nwant %+v", fp, want)
	}
}

// The trailer follows the OpenVINO release that exported the blob.
func TestOpenVINOTrailerVersion(t *testing.T) {
	t.Parallel()
	o, _ := fakeOV(t, "FAKEOV_VERSION=2026.1.2-20000-abc-releases/2026/1")
	req := testRequest(t, t.TempDir())
	res, err := o.Compile(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	tr := blobTrailer(t, req.OutPath)
	if tr.OpenVINO.String() != "2026.1.2" || !strings.HasPrefix(res.RuntimeRequirements, "meta=2.7;ov=2026.1.2;") {
		t.Errorf("trailer %+v, runtime requirements %q", tr, res.RuntimeRequirements)
	}
	fp, err := o.Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	assertAccepted(t, tr, fp)
}

func TestFingerprintFromProbe(t *testing.T) {
	t.Parallel()
	base := map[string]string{
		"DEVICE_ARCHITECTURE": "4000", "NPU_DRIVER_VERSION": "1758000000", "NPU_COMPILER_VERSION": "458773",
		"NPU_COMPILER_TYPE": "DRIVER", "NPU_MAX_TILES": "6", "NPU_STEPPING": "0",
	}
	want := compat.Fingerprint{
		OpenVINO: "2025.3.0", Arch: "4000", DriverVersion: "1758000000", CompilerType: "DRIVER",
		CompilerVersion: "7.21", MaxTiles: 6, OS: runtime.GOOS, CPUArch: runtime.GOARCH,
	}
	tests := []struct {
		name    string
		ov      string
		props   map[string]string // merged into base; "" deletes
		want    func(*compat.Fingerprint)
		wantErr bool
	}{
		{name: "plain"},
		{name: "enum compiler type", props: map[string]string{"NPU_COMPILER_TYPE": "CompilerType.PLUGIN"},
			want: func(f *compat.Fingerprint) { f.CompilerType = compat.CompilerPlugin }},
		{name: "NPU prefix on the architecture", props: map[string]string{"DEVICE_ARCHITECTURE": "NPU3720"},
			want: func(f *compat.Fingerprint) { f.Arch = "3720" }},
		{name: "runtime requirements give the firmware MI",
			props: map[string]string{"RUNTIME_REQUIREMENTS": "meta=2.6;ov=2025.3.0;desc=[npu=4000;mi=11.4.10]"},
			want: func(f *compat.Fingerprint) {
				f.FirmwareMI, f.RuntimeRequirements = "11.4.10", "meta=2.6;ov=2025.3.0;desc=[mi=11.4.10;npu=4000]"
			}},
		{name: "compiler version 0 is unknown", props: map[string]string{"NPU_COMPILER_VERSION": "0"},
			want: func(f *compat.Fingerprint) { f.CompilerVersion = "" }},
		{name: "no architecture", props: map[string]string{"DEVICE_ARCHITECTURE": ""}, wantErr: true},
		{name: "compiler version not a number", props: map[string]string{"NPU_COMPILER_VERSION": "7.21"}, wantErr: true},
		{name: "tiles not a number", props: map[string]string{"NPU_MAX_TILES": "six"}, wantErr: true},
		{name: "bad runtime requirements", props: map[string]string{"RUNTIME_REQUIREMENTS": "desc=["}, wantErr: true},
		{name: "bad openvino version", ov: "master", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pr := ProbeResult{OpenVINO: "2025.3.0-19807-44526285f24-releases/2025/3", Properties: maps.Clone(base)}
			if tc.ov != "" {
				pr.OpenVINO = tc.ov
			}
			for k, v := range tc.props {
				if v == "" {
					delete(pr.Properties, k)
				} else {
					pr.Properties[k] = v
				}
			}
			got, err := fingerprintFromProbe(pr)
			if tc.wantErr {
				if err == nil || !strings.HasPrefix(err.Error(), "openvino probe: ") {
					t.Fatalf("got %+v, %v; want an openvino probe error", got, err)
				}
				return
			}
			w := want
			if tc.want != nil {
				tc.want(&w)
			}
			if err != nil || got != w {
				t.Fatalf("got %+v, %v\nwant %+v", got, err, w)
			}
		})
	}
}

func TestOpenVINONoDevice(t *testing.T) {
	t.Parallel()
	o, _ := fakeOV(t, "FAKEOV_DEVICES=CPU")
	if _, err := o.Probe(context.Background()); !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("probe: err = %v, want ErrNoDevice", err)
	}
	req := testRequest(t, t.TempDir())
	if _, err := o.Compile(context.Background(), req); !errors.Is(err, ErrNoDevice) {
		t.Errorf("compile: err = %v, want ErrNoDevice", err)
	}
	if err := o.Check(context.Background(), req.Model.Files[0].Path, "npu"); !errors.Is(err, ErrNoDevice) {
		t.Errorf("check: err = %v, want ErrNoDevice", err)
	}
}

func TestOpenVINOCompile(t *testing.T) {
	t.Parallel()
	o, callsFile := fakeOV(t, "FAKEOV_STDOUT_NOISE=1")
	dir := t.TempDir()
	req := testRequest(t, dir)
	req.Profile.Properties = map[string]string{"performance_hint": "LATENCY", "NPU_TURBO": "true", "CACHE_DIR": "/tmp/x"}
	res, err := o.Compile(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	assertOnlyOutput(t, dir, true)
	// The stand-in's blob carries a trailer compat reads, and the rules accept it on the probed stack.
	tr := blobTrailer(t, req.OutPath)
	if tr.Metadata.String() != "2.7" || tr.OpenVINO.String() != "2025.3.0" || tr.CompilerVersionString() != "7.21" ||
		tr.BlobType != compat.BlobTypeELF {
		t.Errorf("trailer = %+v", tr)
	}
	st, _ := os.Stat(req.OutPath)
	if wantRR := "meta=2.7;ov=2025.3.0;desc=[" + tr.RuntimeRequirements + "]"; res.Size != st.Size() ||
		tr.RuntimeRequirements == "" || res.RuntimeRequirements != wantRR {
		t.Errorf("result = %+v, trailer %+v", res, tr)
	}
	fp, err := o.Probe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	assertAccepted(t, tr, fp)
	fp.RuntimeRequirements = res.RuntimeRequirements
	assertAccepted(t, tr, fp)
	if !strings.Contains(res.Log, "native plugin chatter") {
		t.Errorf("log %q lacks what the plugin printed to stdout", res.Log)
	}
	xml, _ := req.Model.File(RoleXML)
	bin, _ := req.Model.File(RoleBin)
	want := []fakeCall{
		{Call: "read_model", Model: xml.Path, Weights: bin.Path},
		{Call: "reshape", Shapes: map[string][]int64{"input": {1, 3, 224, 224}}},
		{Call: "compile_model", Device: "NPU", Config: map[string]string{"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "YES"}},
	}
	if got := readCalls(t, callsFile); !reflect.DeepEqual(got, want) {
		t.Errorf("OpenVINO calls\n got %+v\nwant %+v", got, want)
	}

	// The blob imports; a blob without the trailer does not.
	if err := o.Check(context.Background(), req.OutPath, "NPU"); err != nil {
		t.Errorf("check of a good blob: %v", err)
	}
	bad := writeFile(t, filepath.Join(t.TempDir(), "bad.blob"), "\x7fELF not a blob")
	if err := o.Check(context.Background(), bad, "NPU"); !errors.Is(err, ErrCompileFailed) || !strings.Contains(err.Error(), "missing the NPU metadata") {
		t.Errorf("check of a bad blob: err = %v", err)
	}
}

func TestOpenVINOCompileONNX(t *testing.T) {
	t.Parallel()
	o, callsFile := fakeOV(t, "FAKEOV_NO_RR=1")
	dir := t.TempDir()
	m, err := LoadModel(writeFile(t, filepath.Join(dir, "model", "m.onnx"), "onnx"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := o.Compile(context.Background(), Request{Model: m, Profile: Profile{Device: "NPU"}, OutPath: filepath.Join(dir, "out.blob")})
	if err != nil {
		t.Fatal(err)
	}
	if res.RuntimeRequirements != "" {
		t.Errorf("runtime requirements %q without the property", res.RuntimeRequirements)
	}
	calls := readCalls(t, callsFile)
	if len(calls) != 2 || calls[0].Model != m.Files[0].Path || calls[0].Weights != "" || calls[1].Call != "compile_model" {
		t.Errorf("calls = %+v", calls)
	}
}

func TestOpenVINOCompileFails(t *testing.T) {
	t.Parallel()
	o, _ := fakeOV(t, "FAKEOV_FAIL_COMPILE=Check 'layer' failed at compiler.cpp:42")
	dir := t.TempDir()
	_, err := o.Compile(context.Background(), testRequest(t, dir))
	var ce *CompileError
	if !errors.Is(err, ErrCompileFailed) || !errors.As(err, &ce) || !strings.Contains(err.Error(), "compiler.cpp:42") ||
		!strings.Contains(ce.Log, "Traceback") {
		t.Fatalf("err = %v", err)
	}
	assertOnlyOutput(t, dir, false)
}

func TestOpenVINOCancelKillsGroup(t *testing.T) {
	t.Parallel()
	for _, byTimeout := range []bool{false, true} {
		t.Run(map[bool]string{false: "cancel", true: "timeout"}[byTimeout], func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			pidFile := filepath.Join(t.TempDir(), "child.pid")
			o, _ := fakeOV(t, "FAKEOV_COMPILE_SLEEP=60", "FAKEOV_CHILD_PID_FILE="+pidFile)
			req := testRequest(t, dir)
			if byTimeout {
				req.Timeout = 2 * time.Second
			}
			assertCancelKillsGroup(t, o, req, pidFile)
		})
	}
}

// A misbehaving interpreter in place of python3: every answer outside the contract is an error, bounded.
func TestOpenVINOHelperMisbehaves(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, script string
		want         error
	}{
		{"not json", `echo 'hello'`, ErrHelperProtocol},
		{"two values", `echo '{"ok":true} {"ok":true}'`, ErrHelperProtocol},
		{"huge", `head -c 3000000 /dev/zero | tr '\0' ' '; echo '{"ok":true}'`, ErrHelperProtocol},
		{"silent crash", `echo 'Segmentation fault' >&2; exit 139`, ErrCompileFailed},
		{"success then non-zero", `echo '{"ok":true}'; exit 2`, ErrHelperProtocol},
		{"error response", `echo '{"error":"boom","code":"weird"}'; exit 1`, ErrCompileFailed},
		{"bad request", `echo '{"error":"no","code":"bad_request"}'; exit 1`, ErrHelperProtocol},
		{"no openvino", `echo '{"error":"cannot import openvino","code":"no_openvino"}'; exit 1`, ErrNoCompiler},
		{"empty", `exit 0`, ErrHelperProtocol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			py := writeFile(t, filepath.Join(dir, "python"), "#!/bin/sh\ncat > /dev/null\n"+tc.script+"\n")
			if err := os.Chmod(py, 0o755); err != nil {
				t.Fatal(err)
			}
			o, err := NewOpenVINO(py, filepath.Join(dir, "helper"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := o.Check(context.Background(), py, "NPU"); !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// The helper validates its requests itself: it is a contract other programs may call too.
func TestHelperRejectsBadRequests(t *testing.T) {
	t.Parallel()
	o, _ := fakeOV(t)
	script, err := o.installHelper()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, req, code string }{
		{"not json", `{`, "bad_request"},
		{"array", `[]`, "bad_request"},
		{"version", `{"v":2,"op":"probe","device":"NPU"}`, "bad_request"},
		{"op", `{"v":1,"op":"delete","device":"NPU"}`, "bad_request"},
		{"no device", `{"v":1,"op":"probe"}`, "bad_request"},
		{"dynamic shape", `{"v":1,"op":"compile","model":"m.xml","device":"NPU","out":"o","shapes":{"x":[1,-1]}}`, "bad_request"},
		{"property type", `{"v":1,"op":"compile","model":"m.xml","device":"NPU","out":"o","properties":{"A":1}}`, "bad_request"},
		{"missing model", `{"v":1,"op":"compile","model":"/nonexistent.xml","device":"NPU","out":"/nonexistent/o"}`, "failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(DefaultPython, script)
			cmd.Env = append(append(os.Environ(), o.env...), "PYTHONDONTWRITEBYTECODE=1")
			cmd.Stdin = strings.NewReader(tc.req)
			out, err := cmd.Output()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v", err)
			}
			var resp struct{ Error, Code string }
			if err := decodeOne(out, &resp); err != nil || resp.Code != tc.code || resp.Error == "" {
				t.Fatalf("response %s (%v), want code %s", out, err, tc.code)
			}
		})
	}
}

func TestInstallHelper(t *testing.T) {
	t.Parallel()
	o, err := NewOpenVINO("", t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := o.installHelper()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("print('tampered')"), 0o644); err != nil {
		t.Fatal(err)
	}
	p2, err := o.installHelper()
	if err != nil || p2 != p {
		t.Fatalf("reinstall: %s %v", p2, err)
	}
	if b, _ := os.ReadFile(p); string(b) != string(helperScript) {
		t.Error("a changed helper copy was not replaced")
	}
}

func TestNewAndDetect(t *testing.T) {
	t.Parallel()
	_, err := exec.LookPath(DefaultPython)
	hasPython := err == nil
	fake, _ := filepath.Abs(filepath.Join("testdata", "fakeov"))
	noOV := writeFile(t, filepath.Join(t.TempDir(), "python"), "#!/bin/sh\nexit 1\n")
	if err := os.Chmod(noOV, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string // backend name, or "" for ErrNoCompiler
		skip bool
	}{
		{"explicit sim", Config{Backend: BackendSim, Fingerprint: testFP}, "sim", false},
		{"explicit openvino", Config{Backend: BackendOpenVINO, HelperDir: t.TempDir()}, "openvino", false},
		{"explicit command", Config{Backend: BackendCommand, Command: []string{"cc", "{out}"}, Fingerprint: testFP}, "command", false},
		{"detect command", Config{Command: []string{"cc", "{out}"}, Fingerprint: testFP, Python: noOV}, "command", false},
		{"detect openvino", Config{Env: []string{"PYTHONPATH=" + fake}, HelperDir: t.TempDir()}, "openvino", !hasPython},
		{"nothing", Config{Python: noOV, Fingerprint: testFP, Sim: SimOptions{PayloadSize: 10}}, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.skip {
				t.Skip("python3 not installed")
			}
			b, err := New(tc.cfg)
			if tc.want == "" {
				if !errors.Is(err, ErrNoCompiler) || !strings.Contains(err.Error(), "simulator must be chosen explicitly") {
					t.Fatalf("err = %v, want ErrNoCompiler", err)
				}
				return
			}
			if err != nil || b.Name() != tc.want {
				t.Fatalf("New = %v, %v; want %s", b, err, tc.want)
			}
		})
	}
	if _, err := New(Config{Backend: "magic"}); err == nil {
		t.Error("accepted an unknown backend")
	}
}
