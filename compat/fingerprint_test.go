package compat

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

// lnl is a valid Lunar Lake fingerprint used across the tests.
func lnl() Fingerprint {
	return Fingerprint{
		OpenVINO:        "2025.3.0",
		Arch:            "4000",
		DriverVersion:   "1747152000",
		CompilerType:    "DRIVER",
		CompilerVersion: "7.4",
		MaxTiles:        6,
		Stepping:        4,
		FirmwareMI:      "11.4",
		OS:              "linux",
		CPUArch:         "amd64",
	}
}

func TestCanonicalNormalises(t *testing.T) {
	t.Parallel()
	messy := lnl()
	messy.OpenVINO = " 2025.03.0 "
	messy.CompilerType = "driver"
	messy.CompilerVersion = "07.04"
	messy.FirmwareMI = "11.04"
	messy.OS = "Linux"
	messy.CPUArch = " AMD64"
	a, err := lnl().Canonical()
	if err != nil {
		t.Fatal(err)
	}
	b, err := messy.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Fatalf("canonical forms differ:\n%s\n%s", a, b)
	}
	want := `{"openvino":"2025.3.0","arch":"4000","driver_version":"1747152000","compiler_type":"DRIVER",` +
		`"compiler_version":"7.4","max_tiles":6,"stepping":4,"firmware_mi":"11.4","os":"linux","cpu_arch":"amd64"}`
	if string(a) != want {
		t.Fatalf("canonical = %s\nwant        %s", a, want)
	}
	ha, _ := lnl().Hash()
	hb, _ := messy.Hash()
	if ha != hb || len(ha) != 64 {
		t.Fatalf("hashes %q %q", ha, hb)
	}
	mlir := lnl()
	mlir.CompilerType = "mlir"
	if got := mlir.Normalize().CompilerType; got != CompilerPlugin {
		t.Fatalf("MLIR normalised to %q", got)
	}
}

func TestHashChangesWithEveryField(t *testing.T) {
	t.Parallel()
	base, err := lnl().Hash()
	if err != nil {
		t.Fatal(err)
	}
	muts := map[string]func(*Fingerprint){
		"openvino":             func(f *Fingerprint) { f.OpenVINO = "2025.3.1" },
		"arch":                 func(f *Fingerprint) { f.Arch = "3720" },
		"driver_version":       func(f *Fingerprint) { f.DriverVersion = "1" },
		"compiler_type":        func(f *Fingerprint) { f.CompilerType = "PLUGIN" },
		"compiler_version":     func(f *Fingerprint) { f.CompilerVersion = "7.5" },
		"max_tiles":            func(f *Fingerprint) { f.MaxTiles = 4 },
		"stepping":             func(f *Fingerprint) { f.Stepping = 5 },
		"firmware_mi":          func(f *Fingerprint) { f.FirmwareMI = "11.5" },
		"runtime_requirements": func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6;ov=2025.3.0" },
		"os":                   func(f *Fingerprint) { f.OS = "windows" },
		"cpu_arch":             func(f *Fingerprint) { f.CPUArch = "arm64" },
		"umd_version":          func(f *Fingerprint) { f.UMDVersion = "1.10.0" },
		"kernel_driver":        func(f *Fingerprint) { f.KernelDriver = "intel_vpu" },
	}
	for name, mut := range muts {
		f := lnl()
		mut(&f)
		h, err := f.Hash()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if h == base {
			t.Errorf("%s: hash unchanged", name)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		mut   func(*Fingerprint)
		field string
	}{
		{"openvino two parts", func(f *Fingerprint) { f.OpenVINO = "2025.3" }, "openvino"},
		{"openvino letters", func(f *Fingerprint) { f.OpenVINO = "2025.x.0" }, "openvino"},
		{"openvino overflow", func(f *Fingerprint) { f.OpenVINO = "2025.70000.0" }, "openvino"},
		{"arch", func(f *Fingerprint) { f.Arch = "NPU-4000" }, "arch"},
		{"driver spaces", func(f *Fingerprint) { f.DriverVersion = "1 2" }, "driver_version"},
		{"compiler type", func(f *Fingerprint) { f.CompilerType = "GPU" }, "compiler_type"},
		{"compiler version three parts", func(f *Fingerprint) { f.CompilerVersion = "7.4.1" }, "compiler_version"},
		{"tiles negative", func(f *Fingerprint) { f.MaxTiles = -1 }, "max_tiles"},
		{"stepping big", func(f *Fingerprint) { f.Stepping = 256 }, "stepping"},
		{"mi one part", func(f *Fingerprint) { f.FirmwareMI = "11" }, "firmware_mi"},
		{"rr", func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6;desc=[" }, "runtime_requirements"},
		{"os", func(f *Fingerprint) { f.OS = "lin ux" }, "os"},
		{"cpu arch", func(f *Fingerprint) { f.CPUArch = "x86/64" }, "cpu_arch"},
		{"umd", func(f *Fingerprint) { f.UMDVersion = "1..0" }, "umd_version"},
		{"kernel driver", func(f *Fingerprint) { f.KernelDriver = "intel vpu" }, "kernel_driver"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := lnl()
			tt.mut(&f)
			err := f.Validate()
			if !errors.Is(err, ErrInvalidFingerprint) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("Validate = %v, want ErrInvalidFingerprint naming %s", err, tt.field)
			}
			if _, err := f.Hash(); err == nil {
				t.Fatal("Hash accepted an invalid fingerprint")
			}
		})
	}
	if err := (Fingerprint{}).Validate(); err != nil {
		t.Fatalf("empty fingerprint: %v", err)
	}
}

func TestFromProperties(t *testing.T) {
	t.Parallel()
	props := map[string]string{
		PropDeviceArchitecture:  "4000",
		PropDriverVersion:       "1747152000",
		PropCompilerVersion:     "458756", // 7<<16 | 4
		PropCompilerType:        "driver",
		PropMaxTiles:            "6",
		PropStepping:            "4",
		PropRuntimeRequirements: "meta=2.6;ov=2026.2.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10]",
		"DEVICE_UUID":           "ignored",
	}
	f, err := FromProperties(props, "2026.2.0-19807-44526285f24-releases/2026/2")
	if err != nil {
		t.Fatal(err)
	}
	want := Fingerprint{
		OpenVINO: "2026.2.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "DRIVER",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4.10",
		RuntimeRequirements: "meta=2.6;ov=2026.2.0;desc=[compiler=8.1;elf=1.2.2;mi=11.4.10;npu=4000;t=4]",
		OS:                  runtime.GOOS, CPUArch: runtime.GOARCH,
	}
	if f != want {
		t.Fatalf("got  %+v\nwant %+v", f, want)
	}

	f, err = FromProperties(map[string]string{PropDeviceArchitecture: "NPU3720", PropCompilerVersion: "0"}, "2025.1.0")
	if err != nil {
		t.Fatal(err)
	}
	if f.Arch != "3720" || f.CompilerVersion != "" {
		t.Fatalf("got %+v", f)
	}

	bad := []struct {
		props map[string]string
		ov    string
		want  string
	}{
		{nil, "", "openvino version"},
		{nil, "2025.3", "openvino version"},
		{map[string]string{PropCompilerVersion: "7.4"}, "2025.3.0", PropCompilerVersion},
		{map[string]string{PropCompilerVersion: "4294967296"}, "2025.3.0", PropCompilerVersion},
		{map[string]string{PropMaxTiles: "six"}, "2025.3.0", PropMaxTiles},
		{map[string]string{PropStepping: "300"}, "2025.3.0", "stepping"},
		{map[string]string{PropRuntimeRequirements: "x"}, "2025.3.0", PropRuntimeRequirements},
		{map[string]string{PropCompilerType: "CPU"}, "2025.3.0", "compiler_type"},
	}
	for _, b := range bad {
		if _, err := FromProperties(b.props, b.ov); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("FromProperties(%v, %q) = %v, want error naming %s", b.props, b.ov, err, b.want)
		}
	}
}

func TestMerge(t *testing.T) {
	t.Parallel()
	sysfs := Fingerprint{Arch: "4000", Stepping: 4, UMDVersion: "1.10.0", KernelDriver: "intel_vpu", OS: "linux",
		CPUArch: "amd64"}
	ov := Fingerprint{OpenVINO: "2025.3.0", Arch: "4000", DriverVersion: "17", CompilerType: "DRIVER",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 5}
	got := Merge(sysfs, ov)
	want := Fingerprint{OpenVINO: "2025.3.0", Arch: "4000", DriverVersion: "17", CompilerType: "DRIVER",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 5, UMDVersion: "1.10.0", KernelDriver: "intel_vpu",
		OS: "linux", CPUArch: "amd64"}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	if got := Merge(want, Fingerprint{}); got != want {
		t.Fatalf("merging an empty fingerprint changed %+v into %+v", want, got)
	}
}
