// Package compile holds the compiler backends (OpenVINO helper, operator command, simulator), the model and
// profile identities they compile, and the in-process single flight that shares one compile among callers.
package compile

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/npu-agent/npu-agent/compat"
)

// Backend compiles models for the local NPU stack.
type Backend interface {
	// Name is the backend's name as configured ("openvino", "command", "sim").
	Name() string
	// Probe returns the fingerprint of the stack this backend compiles for.
	Probe(ctx context.Context) (compat.Fingerprint, error)
	// Compile compiles req.Model with req.Profile into a blob at req.OutPath. It honours ctx and req.Timeout,
	// returns the compiler's captured log, and records how long the compile took.
	Compile(ctx context.Context, req Request) (*Result, error)
}

// Request is one compile.
type Request struct {
	Model   Model
	Profile Profile
	OutPath string        // where the blob is written (the backend writes it whole or not at all)
	Timeout time.Duration // 0: no limit beyond ctx
}

// Result is a finished compile.
type Result struct {
	Path     string
	Size     int64 // bytes written at Path
	Duration time.Duration
	Log      string // captured compiler output, bounded
	// RuntimeRequirements is the compiled model's RUNTIME_REQUIREMENTS where the compiler reports it.
	RuntimeRequirements string
}

// Errors of this package; match with errors.Is.
var (
	// ErrNoCompiler: no backend is configured and OpenVINO cannot be imported.
	ErrNoCompiler = errors.New("no compiler available: install OpenVINO (python3 -c 'import openvino') or configure a command backend; the simulator must be chosen explicitly")
	// ErrCompileFailed: the compiler ran and reported failure (non-zero exit, error response).
	ErrCompileFailed = errors.New("compile failed")
	// ErrNoOutput: the compiler reported success but left no blob, or an empty one.
	ErrNoOutput = errors.New("compiler produced no blob")
	// ErrTimeout: Request.Timeout ran out. Errors wrapping it also match context.DeadlineExceeded.
	ErrTimeout = errors.New("compile timed out")
	// ErrHelperProtocol: the OpenVINO helper answered outside its JSON contract.
	ErrHelperProtocol = errors.New("openvino helper protocol error")
	// ErrNoDevice: OpenVINO runs but the requested device is not present.
	ErrNoDevice = errors.New("device not available")
)

// maxErrorLog bounds the log tail quoted in an error message; the whole bounded log is in CompileError.Log.
const maxErrorLog = 512

// CompileError is a failed compile with the compiler's captured log (bounded).
type CompileError struct {
	Backend string
	Err     error
	Log     string
}

func (e *CompileError) Error() string {
	msg := e.Backend + " backend: " + e.Err.Error()
	if tail := lastLines(e.Log, maxErrorLog); tail != "" {
		msg += ": " + tail
	}
	return msg
}

func (e *CompileError) Unwrap() error { return e.Err }

// lastLines returns the end of log, at most n bytes, folded onto one line.
func lastLines(log string, n int) string {
	log = strings.TrimSpace(log)
	if len(log) > n {
		log = "..." + log[len(log)-n:]
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(log, "\n", " | ")), " ")
}

// prepare checks req and returns its canonical profile and a context bounded by req.Timeout.
func prepare(ctx context.Context, req Request) (Profile, context.Context, context.CancelFunc, error) {
	if err := req.Model.Validate(); err != nil {
		return Profile{}, nil, nil, err
	}
	p, err := req.Profile.Canonical()
	if err != nil {
		return Profile{}, nil, nil, err
	}
	if req.OutPath == "" {
		return Profile{}, nil, nil, errors.New("compile request has no output path")
	}
	if req.Timeout < 0 {
		return Profile{}, nil, nil, fmt.Errorf("compile request has a negative timeout %s", req.Timeout)
	}
	if req.Timeout == 0 {
		ctx, cancel := context.WithCancel(ctx)
		return p, ctx, cancel, nil
	}
	ctx, cancel := context.WithTimeoutCause(ctx, req.Timeout, ErrTimeout)
	return p, ctx, cancel, nil
}

// ctxErr explains why ctx ended: ErrTimeout (with the limit) for Request.Timeout, else the caller's error.
func ctxErr(ctx context.Context, timeout time.Duration) error {
	if errors.Is(context.Cause(ctx), ErrTimeout) {
		return fmt.Errorf("%w after %s (%w)", ErrTimeout, timeout, context.DeadlineExceeded)
	}
	return ctx.Err()
}
