package compile

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// A minimal writer of the NPU plugin's metadata trailer (openvino-npu-facts.md), version 2.7, for the simulator.
// The parser lives in compat; this package only ever writes the one version it needs.

const (
	ovnpuMagic       = "OVNPU"
	ovnpuVersion27   = 2<<16 | 7
	ovnpuBlobTypeELF = 0 // blob_type value for an ELF payload (the enum's values are unverified)
)

// ovnpuMeta is what the simulator puts in a trailer.
type ovnpuMeta struct {
	OVMajor, OVMinor, OVPatch uint16
	CompilerVersion           uint32 // major<<16 | minor; 0 = none
	RuntimeRequirements       string
}

// appendOVNPUTrailer appends the metadata and footer for a payload of payloadSize bytes:
// metadata (at offset payloadSize), uint64 LE payloadSize, "OVNPU".
func appendOVNPUTrailer(b []byte, payloadSize uint64, m ovnpuMeta) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, ovnpuVersion27)
	b = le.AppendUint16(b, m.OVMajor)
	b = le.AppendUint16(b, m.OVMinor)
	b = le.AppendUint16(b, m.OVPatch)
	b = le.AppendUint64(b, 0) // n_inits: not weightless
	b = le.AppendUint64(b, 0) // batch: none
	b = le.AppendUint64(b, 0) // input layouts
	b = le.AppendUint64(b, 0) // output layouts
	b = le.AppendUint32(b, m.CompilerVersion)
	b = append(b, 0) // not encrypted
	b = le.AppendUint64(b, uint64(len(m.RuntimeRequirements)))
	b = append(b, m.RuntimeRequirements...)
	b = append(b, ovnpuBlobTypeELF)
	b = le.AppendUint64(b, payloadSize)
	return append(b, ovnpuMagic...)
}

// parseOVVersion reads major.minor.patch from an OpenVINO version such as "2025.3.0" or
// "2025.3.0-19807-44526285f24-releases/2025/3".
func parseOVVersion(s string) (major, minor, patch uint16, err error) {
	core, _, _ := strings.Cut(strings.TrimSpace(s), "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return 0, 0, 0, fmt.Errorf("OpenVINO version %q is not major.minor.patch", s)
	}
	var v [3]uint16
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("OpenVINO version %q is not major.minor.patch", s)
		}
		v[i] = uint16(n)
	}
	return v[0], v[1], v[2], nil
}

// parseCompilerVersion turns "major.minor" into NPU_COMPILER_VERSION's major<<16 | minor; "" is 0 (none).
func parseCompilerVersion(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	ma, mi, ok := strings.Cut(s, ".")
	major, err1 := strconv.ParseUint(ma, 10, 16)
	minor, err2 := strconv.ParseUint(mi, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("compiler version %q is not major.minor", s)
	}
	return uint32(major)<<16 | uint32(minor), nil
}

// formatCompilerVersion is the inverse of parseCompilerVersion.
func formatCompilerVersion(v uint32) string {
	return strconv.FormatUint(uint64(v>>16), 10) + "." + strconv.FormatUint(uint64(v&0xffff), 10)
}
