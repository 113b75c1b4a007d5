// Package compat holds the NPU stack fingerprint, its probes, the OVNPU blob-trailer parser and the compatibility
// rules (embedded, versioned data) with a pure matcher. It imports nothing of the project.
package compat

// Fingerprint describes the NPU software and hardware stack a blob is compiled on or loaded by. Fields that are
// unknown are left empty (or zero); the rules say what an unknown field means. DEVICE_UUID is per device and
// never part of a fingerprint.
type Fingerprint struct {
	OpenVINO            string `json:"openvino"`                       // "2025.3.0" (major.minor.patch)
	Arch                string `json:"arch"`                           // NPU architecture: "3720", "4000", "5010", "5020"
	DriverVersion       string `json:"driver_version"`                 // NPU_DRIVER_VERSION, compared for equality only
	CompilerType        string `json:"compiler_type"`                  // "DRIVER" or "PLUGIN"
	CompilerVersion     string `json:"compiler_version"`               // "major.minor" from NPU_COMPILER_VERSION
	MaxTiles            int    `json:"max_tiles"`                      // NPU_MAX_TILES
	Stepping            int    `json:"stepping"`                       // NPU_STEPPING
	FirmwareMI          string `json:"firmware_mi,omitempty"`          // mapped-inference version "major.minor"
	RuntimeRequirements string `json:"runtime_requirements,omitempty"` // RUNTIME_REQUIREMENTS string, where known
	OS                  string `json:"os"`                             // GOOS of the host
	CPUArch             string `json:"cpu_arch"`                       // GOARCH of the host
}
