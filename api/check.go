package api

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/npu-agent/npu-agent/compile"
)

// CheckModelProfile rejects requests the agent could only misread (ErrBadRequest): a relative model path means
// nothing to a daemon with another working directory. The client checks before sending, the server on receipt.
func CheckModelProfile(model string, p compile.Profile) error {
	if err := CheckModelPath(model); err != nil {
		return err
	}
	if p.Device == "" {
		return fmt.Errorf("%w: profile.device is missing", ErrBadRequest)
	}
	return nil
}

// CheckModelPath accepts an absolute path of an .xml or .onnx model.
func CheckModelPath(model string) error {
	switch {
	case model == "":
		return fmt.Errorf("%w: model path is missing", ErrBadRequest)
	case !filepath.IsAbs(model):
		return fmt.Errorf("%w: model path %q must be absolute", ErrBadRequest, model)
	case strings.ContainsRune(model, 0):
		return fmt.Errorf("%w: model path contains a NUL byte", ErrBadRequest)
	}
	if ext := strings.ToLower(filepath.Ext(model)); ext != ".xml" && ext != ".onnx" {
		return fmt.Errorf("%w: model %s: expected an OpenVINO IR .xml or an .onnx file", ErrBadRequest, model)
	}
	return nil
}
