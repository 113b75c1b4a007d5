package compat

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"
)

// ErrOverride reports an override file that does not load.
var ErrOverride = errors.New("invalid fingerprint override")

// maxOverrideSize bounds an override file; a full one is well under 1 KiB.
const maxOverrideSize = 64 << 10

// Override pins fingerprint fields, for operators (a stack the probes cannot see, such as the firmware MI
// version) and tests. A nil field is not pinned. The file uses the fingerprint's JSON keys, in YAML or JSON.
type Override struct {
	OpenVINO            *string `yaml:"openvino"`
	Arch                *string `yaml:"arch"`
	DriverVersion       *string `yaml:"driver_version"`
	CompilerType        *string `yaml:"compiler_type"`
	CompilerVersion     *string `yaml:"compiler_version"`
	MaxTiles            *int    `yaml:"max_tiles"`
	Stepping            *int    `yaml:"stepping"`
	FirmwareMI          *string `yaml:"firmware_mi"`
	RuntimeRequirements *string `yaml:"runtime_requirements"`
	OS                  *string `yaml:"os"`
	CPUArch             *string `yaml:"cpu_arch"`
	UMDVersion          *string `yaml:"umd_version"`
	KernelDriver        *string `yaml:"kernel_driver"`
}

// LoadOverride reads an override file (YAML or JSON, at most 64 KiB). Unknown keys, wrong types, more than one
// document and values that would make the fingerprint invalid are errors. An empty file pins nothing.
func LoadOverride(path string) (*Override, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load fingerprint override: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxOverrideSize+1))
	if err != nil {
		return nil, fmt.Errorf("load fingerprint override: %w", err)
	}
	if len(data) > maxOverrideSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrOverride, path, maxOverrideSize)
	}
	o, err := ParseOverride(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return o, nil
}

// ParseOverride parses override data as LoadOverride does.
func ParseOverride(data []byte) (*Override, error) {
	o := &Override{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(o); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrOverride, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one document", ErrOverride)
	}
	// Pinned values must be valid on their own, whatever they are applied to.
	if err := o.apply(Fingerprint{}).Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOverride, err)
	}
	return o, nil
}

// Apply returns f with every pinned field replaced, normalised and validated. A pinned empty string or 0 marks
// the field unknown. Apply the override last, after Merge of the probes, so the operator has the final word.
func (o *Override) Apply(f Fingerprint) (Fingerprint, error) {
	f = o.apply(f).Normalize()
	if err := f.Validate(); err != nil {
		return Fingerprint{}, fmt.Errorf("apply fingerprint override: %w", err)
	}
	return f, nil
}

func (o *Override) apply(f Fingerprint) Fingerprint {
	if o == nil {
		return f
	}
	pin := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	pin(&f.OpenVINO, o.OpenVINO)
	pin(&f.Arch, o.Arch)
	pin(&f.DriverVersion, o.DriverVersion)
	pin(&f.CompilerType, o.CompilerType)
	pin(&f.CompilerVersion, o.CompilerVersion)
	if o.MaxTiles != nil {
		f.MaxTiles = *o.MaxTiles
	}
	if o.Stepping != nil {
		f.Stepping = *o.Stepping
	}
	pin(&f.FirmwareMI, o.FirmwareMI)
	pin(&f.RuntimeRequirements, o.RuntimeRequirements)
	pin(&f.OS, o.OS)
	pin(&f.CPUArch, o.CPUArch)
	pin(&f.UMDVersion, o.UMDVersion)
	pin(&f.KernelDriver, o.KernelDriver)
	return f
}
