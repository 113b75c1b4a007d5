// Package compat holds the NPU stack fingerprint, its probes, the OVNPU blob-trailer parser and the compatibility
// rules (embedded, versioned data) with a pure matcher. It imports nothing of the project.
package compat

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"
)

// Fingerprint describes the NPU software and hardware stack a blob is compiled on or loaded by. Fields that are
// unknown are left empty (or zero); the rules say what an unknown field means. DEVICE_UUID is per device and
// never part of a fingerprint.
type Fingerprint struct {
	OpenVINO            string `json:"openvino"`                       // "2025.3.0" (major.minor.patch)
	Arch                string `json:"arch"`                           // NPU architecture: "3720", "4000", "5010", "5020"
	DriverVersion       string `json:"driver_version"`                 // NPU_DRIVER_VERSION, compared for equality only
	CompilerType        string `json:"compiler_type"`                  // "DRIVER", "PLUGIN" or "PREFER_PLUGIN"
	CompilerVersion     string `json:"compiler_version"`               // "major.minor" from NPU_COMPILER_VERSION
	MaxTiles            int    `json:"max_tiles"`                      // NPU_MAX_TILES; 0 = unknown
	Stepping            int    `json:"stepping"`                       // NPU_STEPPING or PCI revision; 0 is a value
	FirmwareMI          string `json:"firmware_mi,omitempty"`          // mapped-inference version "major.minor[.patch]"
	RuntimeRequirements string `json:"runtime_requirements,omitempty"` // RUNTIME_REQUIREMENTS string, where known
	OS                  string `json:"os"`                             // GOOS of the host
	CPUArch             string `json:"cpu_arch"`                       // GOARCH of the host
	UMDVersion          string `json:"umd_version,omitempty"`          // Level Zero NPU library version, from its file name
	KernelDriver        string `json:"kernel_driver,omitempty"`        // kernel driver bound to the NPU ("intel_vpu")
}

// ErrInvalidFingerprint reports a fingerprint field with a malformed value.
var ErrInvalidFingerprint = errors.New("invalid fingerprint")

// Compiler types (NPU_COMPILER_TYPE). MLIR is the older name of PLUGIN and is normalised to it.
const (
	CompilerDriver       = "DRIVER"
	CompilerPlugin       = "PLUGIN"
	CompilerPreferPlugin = "PREFER_PLUGIN"
)

var (
	archRE   = regexp.MustCompile(`^[0-9]{1,8}$`)
	tokenRE  = regexp.MustCompile(`^[A-Za-z0-9._+-]{1,64}$`)
	lowerRE  = regexp.MustCompile(`^[a-z0-9_]{1,32}$`)
	driverRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
)

// Normalize returns f with canonical spellings: strings trimmed, versions without leading zeros, compiler type
// upper-case (MLIR becomes PLUGIN), OS and CPU arch lower-case, runtime requirements in canonical order. Values
// that do not parse are left for Validate to report.
func (f Fingerprint) Normalize() Fingerprint {
	trim := strings.TrimSpace
	f.OpenVINO = normVersion(trim(f.OpenVINO), 3)
	f.Arch = trim(f.Arch)
	f.DriverVersion = trim(f.DriverVersion)
	f.CompilerType = strings.ToUpper(trim(f.CompilerType))
	if f.CompilerType == "MLIR" {
		f.CompilerType = CompilerPlugin
	}
	f.CompilerVersion = normVersion(trim(f.CompilerVersion), 2)
	f.FirmwareMI = normVersion(trim(f.FirmwareMI), 0)
	f.RuntimeRequirements = trim(f.RuntimeRequirements)
	if rr, err := ParseRuntimeRequirements(f.RuntimeRequirements); err == nil {
		f.RuntimeRequirements = rr.String()
	}
	f.OS = strings.ToLower(trim(f.OS))
	f.CPUArch = strings.ToLower(trim(f.CPUArch))
	f.UMDVersion = normVersion(trim(f.UMDVersion), 0)
	f.KernelDriver = trim(f.KernelDriver)
	return f
}

// Validate reports the first malformed field of f's normalised form. Empty fields (unknown) are valid.
func (f Fingerprint) Validate() error {
	f = f.Normalize()
	bad := func(field, value, why string) error {
		return fmt.Errorf("%w: %s %q: %s", ErrInvalidFingerprint, field, value, why)
	}
	checkVersion := func(field, value string, want int) error {
		if value == "" {
			return nil
		}
		if _, err := parseVersion(value, want); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrInvalidFingerprint, field, err)
		}
		return nil
	}
	if err := checkVersion("openvino", f.OpenVINO, 3); err != nil {
		return err
	}
	if f.Arch != "" && !archRE.MatchString(f.Arch) {
		return bad("arch", f.Arch, "want a decimal NPU architecture such as 3720 or 4000")
	}
	if f.DriverVersion != "" && !tokenRE.MatchString(f.DriverVersion) {
		return bad("driver_version", f.DriverVersion, "want 1 to 64 characters of [A-Za-z0-9._+-]")
	}
	switch f.CompilerType {
	case "", CompilerDriver, CompilerPlugin, CompilerPreferPlugin:
	default:
		return bad("compiler_type", f.CompilerType, "want DRIVER, PLUGIN or PREFER_PLUGIN")
	}
	if err := checkVersion("compiler_version", f.CompilerVersion, 2); err != nil {
		return err
	}
	if f.MaxTiles < 0 || f.MaxTiles > 256 {
		return bad("max_tiles", strconv.Itoa(f.MaxTiles), "want 0 (unknown) to 256")
	}
	if f.Stepping < 0 || f.Stepping > 255 {
		return bad("stepping", strconv.Itoa(f.Stepping), "want 0 to 255")
	}
	if f.FirmwareMI != "" {
		v, err := parseVersion(f.FirmwareMI, 0)
		if err != nil {
			return fmt.Errorf("%w: firmware_mi: %w", ErrInvalidFingerprint, err)
		}
		if len(v) < 2 || len(v) > 3 {
			return bad("firmware_mi", f.FirmwareMI, "want major.minor or major.minor.patch")
		}
	}
	if f.RuntimeRequirements != "" {
		if _, err := ParseRuntimeRequirements(f.RuntimeRequirements); err != nil {
			return fmt.Errorf("%w: runtime_requirements: %w", ErrInvalidFingerprint, err)
		}
	}
	if f.OS != "" && !lowerRE.MatchString(f.OS) {
		return bad("os", f.OS, "want a GOOS name such as linux")
	}
	if f.CPUArch != "" && !lowerRE.MatchString(f.CPUArch) {
		return bad("cpu_arch", f.CPUArch, "want a GOARCH name such as amd64")
	}
	if err := checkVersion("umd_version", f.UMDVersion, 0); err != nil {
		return err
	}
	if f.KernelDriver != "" && !driverRE.MatchString(f.KernelDriver) {
		return bad("kernel_driver", f.KernelDriver, "want a kernel module name such as intel_vpu")
	}
	return nil
}

// Canonical returns the canonical encoding of f: the JSON object of its normalised form with the fields in
// declaration order, no insignificant white space, and firmware_mi, runtime_requirements, umd_version and
// kernel_driver omitted when empty. Two fingerprints describe the same stack exactly when their canonical
// encodings are equal.
func (f Fingerprint) Canonical() ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(f.Normalize())
}

// Hash returns the lower-case hex sha256 of f's canonical encoding.
func (f Fingerprint) Hash() (string, error) {
	b, err := f.Canonical()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// OpenVINO property names FromProperties reads.
const (
	PropDeviceArchitecture  = "DEVICE_ARCHITECTURE"
	PropDriverVersion       = "NPU_DRIVER_VERSION"
	PropCompilerVersion     = "NPU_COMPILER_VERSION"
	PropCompilerType        = "NPU_COMPILER_TYPE"
	PropMaxTiles            = "NPU_MAX_TILES"
	PropStepping            = "NPU_STEPPING"
	PropRuntimeRequirements = "RUNTIME_REQUIREMENTS"
)

// ovVersionRE matches the major.minor.patch that openvino.get_version() starts with
// ("2025.3.0-19807-44526285f24-releases/2025/3").
var ovVersionRE = regexp.MustCompile(`^([0-9]+\.[0-9]+\.[0-9]+)(?:[-+ ].*)?$`)

// FromProperties maps raw OpenVINO NPU property values, as the OpenVINO helper read them on this host, into a
// validated Fingerprint. ovVersion is openvino.get_version(). NPU_COMPILER_VERSION is the decimal uint32
// major<<16|minor (0 = unknown). A leading "NPU" on DEVICE_ARCHITECTURE is dropped. Missing properties stay
// unknown; other properties (DEVICE_UUID, ...) are ignored. FirmwareMI is taken from the mi key of
// RUNTIME_REQUIREMENTS when present. OS and CPUArch are this process's GOOS and GOARCH.
func FromProperties(props map[string]string, ovVersion string) (Fingerprint, error) {
	m := ovVersionRE.FindStringSubmatch(strings.TrimSpace(ovVersion))
	if m == nil {
		return Fingerprint{}, fmt.Errorf("%w: openvino version %q does not start with major.minor.patch",
			ErrInvalidFingerprint, ovVersion)
	}
	f := Fingerprint{
		OpenVINO:      m[1],
		Arch:          strings.TrimSpace(props[PropDeviceArchitecture]),
		DriverVersion: props[PropDriverVersion],
		CompilerType:  props[PropCompilerType],
		OS:            runtime.GOOS,
		CPUArch:       runtime.GOARCH,
	}
	if len(f.Arch) > 3 && strings.EqualFold(f.Arch[:3], "NPU") {
		f.Arch = f.Arch[3:]
	}
	if s := strings.TrimSpace(props[PropCompilerVersion]); s != "" {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return Fingerprint{}, fmt.Errorf("%w: %s %q: want a decimal uint32 (major<<16|minor)",
				ErrInvalidFingerprint, PropCompilerVersion, s)
		}
		if n != 0 {
			f.CompilerVersion = compilerVersionString(uint32(n))
		}
	}
	for _, p := range []struct {
		name string
		dst  *int
	}{{PropMaxTiles, &f.MaxTiles}, {PropStepping, &f.Stepping}} {
		s := strings.TrimSpace(props[p.name])
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return Fingerprint{}, fmt.Errorf("%w: %s %q: want a decimal integer", ErrInvalidFingerprint, p.name, s)
		}
		*p.dst = n
	}
	if s := strings.TrimSpace(props[PropRuntimeRequirements]); s != "" {
		rr, err := ParseRuntimeRequirements(s)
		if err != nil {
			return Fingerprint{}, fmt.Errorf("%w: %s: %w", ErrInvalidFingerprint, PropRuntimeRequirements, err)
		}
		f.RuntimeRequirements = rr.String()
		if mi, ok := rr.Desc["mi"]; ok {
			f.FirmwareMI = mi
		}
	}
	f = f.Normalize()
	if err := f.Validate(); err != nil {
		return Fingerprint{}, err
	}
	return f, nil
}

// compilerVersionString renders NPU_COMPILER_VERSION (major<<16|minor) as "major.minor".
func compilerVersionString(v uint32) string {
	return strconv.FormatUint(uint64(v>>16), 10) + "." + strconv.FormatUint(uint64(v&0xffff), 10)
}

// Merge returns base with every field that is set in more (non-empty, non-zero) replaced by more's value. The
// agent merges the sysfs probe (base) with the OpenVINO probe (more), so OpenVINO's values win where it has them.
// Stepping 0 in more counts as unset.
func Merge(base, more Fingerprint) Fingerprint {
	str := func(dst *string, v string) {
		if strings.TrimSpace(v) != "" {
			*dst = v
		}
	}
	str(&base.OpenVINO, more.OpenVINO)
	str(&base.Arch, more.Arch)
	str(&base.DriverVersion, more.DriverVersion)
	str(&base.CompilerType, more.CompilerType)
	str(&base.CompilerVersion, more.CompilerVersion)
	if more.MaxTiles != 0 {
		base.MaxTiles = more.MaxTiles
	}
	if more.Stepping != 0 {
		base.Stepping = more.Stepping
	}
	str(&base.FirmwareMI, more.FirmwareMI)
	str(&base.RuntimeRequirements, more.RuntimeRequirements)
	str(&base.OS, more.OS)
	str(&base.CPUArch, more.CPUArch)
	str(&base.UMDVersion, more.UMDVersion)
	str(&base.KernelDriver, more.KernelDriver)
	return base.Normalize()
}
