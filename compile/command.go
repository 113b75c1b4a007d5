package compile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/npu-agent/npu-agent/compat"
)

// Command template placeholders (docs/design.md, section 5.6). Each is replaced inside any argument.
const (
	PhModel       = "{model}"        // the model file the compiler reads: the IR .xml or the .onnx
	PhModelXML    = "{model_xml}"    // the IR .xml (IR models only)
	PhModelBin    = "{model_bin}"    // the IR .bin (IR models only)
	PhModelONNX   = "{model_onnx}"   // the .onnx (ONNX models only)
	PhOut         = "{out}"          // where the blob must be written
	PhDevice      = "{device}"       // the profile's device, e.g. NPU
	PhProfileJSON = "{profile_json}" // the canonical profile JSON as one argument
	PhProfileFile = "{profile_file}" // a file holding the canonical profile JSON
	PhModelID     = "{model_id}"
	PhProfileID   = "{profile_id}"
)

var placeholderRE = regexp.MustCompile(`\{[a-z_]+\}`)

var knownPlaceholders = map[string]bool{
	PhModel: true, PhModelXML: true, PhModelBin: true, PhModelONNX: true, PhOut: true, PhDevice: true,
	PhProfileJSON: true, PhProfileFile: true, PhModelID: true, PhProfileID: true,
}

// Command runs an operator-supplied compiler command. It cannot probe the stack, so its fingerprint comes from
// configuration.
type Command struct {
	argv []string
	fp   compat.Fingerprint
	env  []string
}

var _ Backend = (*Command)(nil)

// NewCommand checks the argv template (argv[0] literal, only known placeholders, {out} present) and the
// fingerprint (valid, with openvino and arch) and returns the backend, which reports fp normalised. env is added
// to the agent's environment for the command.
func NewCommand(argv []string, fp compat.Fingerprint, env []string) (*Command, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("command backend: empty command")
	}
	if placeholderRE.MatchString(argv[0]) {
		return nil, fmt.Errorf("command backend: the program %q must not be a placeholder", argv[0])
	}
	hasOut := false
	for _, a := range argv {
		for _, ph := range placeholderRE.FindAllString(a, -1) {
			if !knownPlaceholders[ph] {
				return nil, fmt.Errorf("command backend: unknown placeholder %s in %q", ph, a)
			}
			hasOut = hasOut || ph == PhOut
		}
	}
	if !hasOut {
		return nil, fmt.Errorf("command backend: the command must name the output with %s", PhOut)
	}
	if err := fp.Validate(); err != nil {
		return nil, fmt.Errorf("command backend: %w", err)
	}
	fp = fp.Normalize()
	if fp.OpenVINO == "" || fp.Arch == "" {
		return nil, errors.New("command backend: a fingerprint (at least openvino and arch) must be configured, a command cannot be probed")
	}
	return &Command{argv: append([]string(nil), argv...), fp: fp, env: env}, nil
}

// Name is "command".
func (c *Command) Name() string { return "command" }

// Probe returns the configured fingerprint.
func (c *Command) Probe(context.Context) (compat.Fingerprint, error) { return c.fp, nil }

// Compile runs the command in a private staging directory next to req.OutPath (its working directory, removed
// afterwards) and moves {out} to req.OutPath if the command exits 0 and left a non-empty file.
func (c *Command) Compile(ctx context.Context, req Request) (*Result, error) {
	start := time.Now()
	prof, ctx, cancel, err := prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	defer cancel()
	profJSON, err := prof.CanonicalJSON()
	if err != nil {
		return nil, err
	}
	profID := rawCID(profJSON)
	st, err := newStaging(req.OutPath)
	if err != nil {
		return nil, err
	}
	defer st.cleanup()
	profFile := filepath.Join(st.dir, "profile.json")
	if err := os.WriteFile(profFile, profJSON, 0o644); err != nil {
		return nil, err
	}
	vals := map[string]string{
		PhOut: st.path, PhDevice: prof.Device, PhProfileJSON: string(profJSON), PhProfileFile: profFile,
		PhModelID: req.Model.ID, PhProfileID: profID,
	}
	for role, ph := range map[string]string{RoleXML: PhModelXML, RoleBin: PhModelBin, RoleONNX: PhModelONNX} {
		if f, ok := req.Model.File(role); ok {
			vals[ph] = f.Path
			if role != RoleBin {
				vals[PhModel] = f.Path
			}
		}
	}
	argv := make([]string, len(c.argv))
	for i, a := range c.argv {
		var missing string
		argv[i] = placeholderRE.ReplaceAllStringFunc(a, func(ph string) string {
			v, ok := vals[ph]
			if !ok {
				missing = ph
			}
			return v
		})
		if missing != "" {
			return nil, fmt.Errorf("command backend: %s is not available for model %s", missing, req.Model.ID)
		}
	}
	log := newTailBuffer(maxLog)
	runErr := process{argv: argv, dir: st.dir, env: c.env, log: log}.run(ctx)
	if ctx.Err() != nil {
		return nil, &CompileError{Backend: "command", Err: ctxErr(ctx, req.Timeout), Log: log.String()}
	}
	if runErr != nil {
		return nil, &CompileError{Backend: "command", Err: fmt.Errorf("%w: %v", ErrCompileFailed, runErr), Log: log.String()}
	}
	size, err := st.commit()
	if err != nil {
		return nil, &CompileError{Backend: "command", Err: err, Log: log.String()}
	}
	return &Result{Path: req.OutPath, Size: size, Duration: time.Since(start), Log: log.String()}, nil
}
