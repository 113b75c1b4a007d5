package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

// ProbeHost assembles this host's fingerprint from, in rising priority: the sysfs probe (no OpenVINO needed),
// what the OpenVINO backend reports (nil if there is none), and the operator's override file (empty: none).
// Notes say which sources were missing, for the operator.
func ProbeHost(ctx context.Context, sysfsRoot string, ov compile.Backend, overridePath string) (fp compat.Fingerprint, notes []string, err error) {
	fp, err = compat.ProbeSysfs(sysfsRoot)
	if err != nil {
		if !errors.Is(err, compat.ErrNoNPU) {
			return fp, nil, err
		}
		notes = append(notes, err.Error())
		fp = compat.Fingerprint{OS: runtime.GOOS, CPUArch: runtime.GOARCH}
	}
	if ov != nil {
		ovfp, err := ov.Probe(ctx)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s probe: %v", ov.Name(), err))
		} else {
			fp = compat.Merge(fp, ovfp)
		}
	} else {
		notes = append(notes, "no OpenVINO backend to probe the compiler stack")
	}
	if overridePath != "" {
		o, err := compat.LoadOverride(overridePath)
		if err != nil {
			return fp, notes, err
		}
		if fp, err = o.Apply(fp); err != nil {
			return fp, notes, err
		}
	}
	return fp.Normalize(), notes, fp.Validate()
}
