//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"strconv"
)

// Fingerprint is the NPU stack a daemon claims, written as its fingerprint override file (compat.Override keys).
type Fingerprint struct {
	OpenVINO        string
	Arch            string
	DriverVersion   string
	CompilerType    string
	CompilerVersion string
	MaxTiles        int
	Stepping        int
	FirmwareMI      string
}

// LunarLake is a Lunar Lake NPU (arch 4000) with its compiler in the OpenVINO plugin and firmware MI 11.4, as in
// scripts/demo.sh. Variants differ from it in a field or two.
var LunarLake = Fingerprint{
	OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
	CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4",
}

// YAML renders f as an override file.
func (f Fingerprint) YAML() []byte {
	var b bytes.Buffer
	for _, kv := range []struct{ k, v string }{
		{"openvino", f.OpenVINO}, {"arch", f.Arch}, {"driver_version", f.DriverVersion},
		{"compiler_type", f.CompilerType}, {"compiler_version", f.CompilerVersion}, {"firmware_mi", f.FirmwareMI},
	} {
		if kv.v != "" {
			fmt.Fprintf(&b, "%s: %s\n", kv.k, strconv.Quote(kv.v))
		}
	}
	for _, kv := range []struct {
		k string
		v int
	}{{"max_tiles", f.MaxTiles}, {"stepping", f.Stepping}} {
		if kv.v != 0 {
			fmt.Fprintf(&b, "%s: %d\n", kv.k, kv.v)
		}
	}
	return b.Bytes()
}
