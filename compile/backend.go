package compile

import (
	"context"
	"fmt"

	"github.com/npu-agent/npu-agent/compat"
)

// Backend names for Config.Backend.
const (
	BackendAuto     = ""
	BackendOpenVINO = "openvino"
	BackendCommand  = "command"
	BackendSim      = "sim"
)

// Config selects and configures a backend.
type Config struct {
	// Backend is "openvino", "command", "sim", or "" to detect: command if Command is set, else openvino if
	// Python can import it, else ErrNoCompiler. The simulator is never detected.
	Backend string
	// Python is the interpreter for the OpenVINO helper; "" means DefaultPython.
	Python string
	// HelperDir is where the embedded helper is written; "" means the user's cache directory.
	HelperDir string
	// Env is added to the environment of every compiler process (e.g. PYTHONPATH, ZE_INTEL_NPU_CACHE_DIR).
	Env []string
	// Command is the command backend's argv template (section 5.6 of docs/design.md).
	Command []string
	// Fingerprint is the stack the command and sim backends compile for; they cannot probe.
	Fingerprint compat.Fingerprint
	// Sim configures the simulator.
	Sim SimOptions
}

// New returns the configured backend; with Backend "" it detects one (see Detect).
func New(cfg Config) (Backend, error) {
	switch cfg.Backend {
	case BackendAuto:
		return Detect(context.Background(), cfg)
	case BackendOpenVINO:
		return NewOpenVINO(cfg.Python, cfg.HelperDir, cfg.Env)
	case BackendCommand:
		return NewCommand(cfg.Command, cfg.Fingerprint, cfg.Env)
	case BackendSim:
		return NewSim(cfg.Fingerprint, cfg.Sim)
	default:
		return nil, fmt.Errorf("unknown compile backend %q (want %q, %q or %q)", cfg.Backend, BackendOpenVINO, BackendCommand, BackendSim)
	}
}

// Detect picks a backend for cfg.Backend "": the command backend if a command is configured, else OpenVINO if
// cfg.Python can import openvino, else ErrNoCompiler. It never picks the simulator.
func Detect(ctx context.Context, cfg Config) (Backend, error) {
	if len(cfg.Command) > 0 {
		return NewCommand(cfg.Command, cfg.Fingerprint, cfg.Env)
	}
	if HasOpenVINO(ctx, cfg.Python, cfg.Env) {
		return NewOpenVINO(cfg.Python, cfg.HelperDir, cfg.Env)
	}
	return nil, ErrNoCompiler
}
