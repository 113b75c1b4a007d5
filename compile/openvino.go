package compile

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

//go:embed ovhelper/npu_agent_ov_helper.py
var helperScript []byte

const (
	// DefaultPython is the interpreter the OpenVINO backend runs when none is configured.
	DefaultPython = "python3"
	// HelperProtocol is the "v" of helper requests (docs/design.md, section 5.5).
	HelperProtocol = 1
	// maxHelperResponse bounds the helper's stdout; a response is a few hundred bytes.
	maxHelperResponse = 1 << 20
	// probeTimeout bounds a probe or check: importing OpenVINO and opening the device take seconds, not minutes.
	probeTimeout = 2 * time.Minute
)

// OpenVINO compiles through the Python helper embedded in the binary, run with the configured interpreter.
type OpenVINO struct {
	python    string
	helperDir string
	env       []string
}

var _ Backend = (*OpenVINO)(nil)

// NewOpenVINO returns the OpenVINO backend. python "" means DefaultPython; helperDir "" means the user's cache
// directory (npu-agent/ under os.UserCacheDir); env is added to the helper's environment (e.g. PYTHONPATH).
func NewOpenVINO(python, helperDir string, env []string) (*OpenVINO, error) {
	if python == "" {
		python = DefaultPython
	}
	if helperDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("openvino backend: no directory for the helper (set a helper directory): %w", err)
		}
		helperDir = filepath.Join(dir, "npu-agent")
	}
	return &OpenVINO{python: python, helperDir: helperDir, env: env}, nil
}

// Name is "openvino".
func (o *OpenVINO) Name() string { return "openvino" }

// ProbeResult is the helper's raw probe: what OpenVINO reports, before any interpretation.
type ProbeResult struct {
	OpenVINO   string            `json:"openvino"`   // openvino.get_version(), e.g. "2025.3.0-19807-..."
	Properties map[string]string `json:"properties"` // core.get_property(device, name) as text, by name
	Absent     []string          `json:"absent"`     // properties the device does not report
}

// ProbeProperties asks OpenVINO for its version and the NPU device properties (docs/design.md, section 5.5).
// This is the seam for compat.FromProperties: it returns the raw values, Probe interprets them.
func (o *OpenVINO) ProbeProperties(ctx context.Context, device string) (ProbeResult, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var pr ProbeResult
	if _, err := o.call(ctx, helperRequest{Op: "probe", Device: device}, &pr, 0); err != nil {
		return ProbeResult{}, err
	}
	if pr.OpenVINO == "" || pr.Properties == nil {
		return ProbeResult{}, fmt.Errorf("%w: probe response without openvino version or properties", ErrHelperProtocol)
	}
	return pr, nil
}

// Probe returns the fingerprint of the local NPU stack as OpenVINO reports it.
func (o *OpenVINO) Probe(ctx context.Context) (compat.Fingerprint, error) {
	pr, err := o.ProbeProperties(ctx, "NPU")
	if err != nil {
		return compat.Fingerprint{}, err
	}
	return fingerprintFromProbe(pr)
}

// fingerprintFromProbe interprets a probe with compat.FromProperties. The helper prints properties with str(), so
// an enum-typed NPU_COMPILER_TYPE may read "CompilerType.DRIVER"; only the name after the dot is kept. The probe
// must report DEVICE_ARCHITECTURE: the helper reads it to find the device, and no blob matches without it.
func fingerprintFromProbe(pr ProbeResult) (compat.Fingerprint, error) {
	props := maps.Clone(pr.Properties)
	if t, ok := props[compat.PropCompilerType]; ok {
		props[compat.PropCompilerType] = t[strings.LastIndexByte(t, '.')+1:]
	}
	fp, err := compat.FromProperties(props, pr.OpenVINO)
	if err != nil {
		return compat.Fingerprint{}, fmt.Errorf("openvino probe: %w", err)
	}
	if fp.Arch == "" {
		return compat.Fingerprint{}, fmt.Errorf("openvino probe: OpenVINO reported no %s", compat.PropDeviceArchitecture)
	}
	return fp, nil
}

// Compile runs the helper's compile op: read_model, reshape to the profile's shapes, compile_model with its
// properties, export_model into a staging file, which is moved to req.OutPath once the helper reports success.
func (o *OpenVINO) Compile(ctx context.Context, req Request) (*Result, error) {
	start := time.Now()
	prof, ctx, cancel, err := prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	defer cancel()
	st, err := newStaging(req.OutPath)
	if err != nil {
		return nil, err
	}
	defer st.cleanup()
	hr := helperRequest{Op: "compile", Device: prof.Device, Properties: prof.Properties, Shapes: prof.Shapes, Out: st.path}
	if f, ok := req.Model.File(RoleONNX); ok {
		hr.Model = f.Path
	} else {
		xml, _ := req.Model.File(RoleXML)
		bin, _ := req.Model.File(RoleBin)
		hr.Model, hr.Weights = xml.Path, bin.Path
	}
	var resp struct {
		Out                 string `json:"out"`
		Size                int64  `json:"size"`
		RuntimeRequirements string `json:"runtime_requirements"`
	}
	log, err := o.call(ctx, hr, &resp, req.Timeout)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Result, error) { return nil, &CompileError{Backend: "openvino", Err: err, Log: log} }
	if resp.Out != st.path {
		return fail(fmt.Errorf("%w: blob written to %q, asked for %q", ErrHelperProtocol, resp.Out, st.path))
	}
	if fi, err := os.Stat(st.path); err == nil && fi.Size() != resp.Size {
		return fail(fmt.Errorf("%w: helper reported %d bytes, file has %d", ErrHelperProtocol, resp.Size, fi.Size()))
	}
	size, err := st.commit()
	if err != nil {
		return fail(err)
	}
	return &Result{Path: req.OutPath, Size: size, Duration: time.Since(start), Log: log, RuntimeRequirements: resp.RuntimeRequirements}, nil
}

// Check imports the blob at path on device (core.import_model). It returns nil if OpenVINO accepts it,
// ErrNoDevice without the device, and a CompileError with OpenVINO's message if the import fails.
func (o *OpenVINO) Check(ctx context.Context, path, device string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	var resp struct {
		OK bool `json:"ok"`
	}
	if _, err := o.call(ctx, helperRequest{Op: "check", Blob: abs, Device: strings.ToUpper(device)}, &resp, 0); err != nil {
		return err
	}
	if !resp.OK {
		return fmt.Errorf("%w: check response without ok", ErrHelperProtocol)
	}
	return nil
}

// helperRequest is the helper's request; fields are used by the ops as documented.
type helperRequest struct {
	V          int                `json:"v"`
	Op         string             `json:"op"`
	Device     string             `json:"device"`
	Model      string             `json:"model,omitempty"`
	Weights    string             `json:"weights,omitempty"`
	Properties map[string]string  `json:"properties,omitempty"`
	Shapes     map[string][]int64 `json:"shapes,omitempty"`
	Out        string             `json:"out,omitempty"`
	Blob       string             `json:"blob,omitempty"`
}

// helperErrors maps the helper's error codes to this package's errors.
var helperErrors = map[string]error{
	"no_device":   ErrNoDevice,
	"no_openvino": ErrNoCompiler,
	"bad_request": ErrHelperProtocol,
	"failed":      ErrCompileFailed,
}

// call runs one helper request and decodes its response into resp. It returns the helper's log (bounded).
// timeout is only used to word a timeout error; ctx carries the deadline.
func (o *OpenVINO) call(ctx context.Context, hr helperRequest, resp any, timeout time.Duration) (string, error) {
	hr.V = HelperProtocol
	script, err := o.installHelper()
	if err != nil {
		return "", err
	}
	in, err := json.Marshal(hr)
	if err != nil {
		return "", err
	}
	out := &capBuffer{n: maxHelperResponse}
	logBuf := newTailBuffer(maxLog)
	runErr := process{
		argv:   []string{o.python, script},
		env:    append(append([]string(nil), o.env...), "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"),
		stdin:  bytes.NewReader(in),
		stdout: out,
		log:    logBuf,
	}.run(ctx)
	log := logBuf.String()
	fail := func(err error) (string, error) { return log, &CompileError{Backend: "openvino", Err: err, Log: log} }
	if ctx.Err() != nil {
		return fail(ctxErr(ctx, timeout))
	}
	if out.overflow {
		return fail(fmt.Errorf("%w: response larger than %d bytes", ErrHelperProtocol, maxHelperResponse))
	}
	body := bytes.TrimSpace(out.buf.Bytes())
	if len(body) == 0 {
		if runErr != nil {
			return fail(fmt.Errorf("%w: helper (%s) failed without a response: %v", ErrCompileFailed, o.python, runErr))
		}
		return fail(fmt.Errorf("%w: empty response", ErrHelperProtocol))
	}
	var e struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if err := decodeOne(body, &e); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrHelperProtocol, err))
	}
	if e.Error != "" {
		sentinel, ok := helperErrors[e.Code]
		if !ok {
			sentinel = ErrCompileFailed
		}
		return fail(fmt.Errorf("%w: %s", sentinel, e.Error))
	}
	if runErr != nil {
		return fail(fmt.Errorf("%w: helper exited with %v after a success response", ErrHelperProtocol, runErr))
	}
	if err := decodeOne(body, resp); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrHelperProtocol, err))
	}
	return log, nil
}

// decodeOne decodes exactly one JSON object from b.
func decodeOne(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("response is not JSON: %v", err)
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("more than one JSON value in the response")
	}
	return nil
}

// installHelper writes the embedded helper into the helper directory, named by its hash, unless an identical
// copy is there, and returns its path. A changed or truncated copy is replaced atomically.
func (o *OpenVINO) installHelper() (string, error) {
	sum := sha256.Sum256(helperScript)
	path := filepath.Join(o.helperDir, "npu_agent_ov_helper-"+hex.EncodeToString(sum[:8])+".py")
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, helperScript) {
		return path, nil
	}
	if err := os.MkdirAll(o.helperDir, 0o700); err != nil {
		return "", fmt.Errorf("openvino backend: installing helper: %w", err)
	}
	if err := atomicfile.WriteFile(path, helperScript, 0o600); err != nil {
		return "", fmt.Errorf("openvino backend: installing helper: %w", err)
	}
	return path, nil
}

// HasOpenVINO reports whether python can import openvino (with env added to its environment).
func HasOpenVINO(ctx context.Context, python string, env []string) bool {
	if python == "" {
		python = DefaultPython
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	return process{argv: []string{python, "-c", "import openvino"}, env: env, log: newTailBuffer(4 << 10)}.run(ctx) == nil
}
