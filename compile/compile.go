// Package compile holds the compiler backends (OpenVINO helper, operator command, simulator), the model and
// profile identities they compile, and the in-process single flight that shares one compile among callers.
package compile

import (
	"context"
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
	Duration time.Duration
	Log      string // captured compiler output, bounded
}
