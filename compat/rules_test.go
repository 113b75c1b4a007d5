package compat

import (
	"errors"
	"strings"
	"testing"
)

func TestDefaultRulesLoad(t *testing.T) {
	t.Parallel()
	r := DefaultRules()
	if r.Version != 1 {
		t.Fatalf("version = %d", r.Version)
	}
}

// TestCheckEachField changes one field at a time, on the host or the blob side, and expects the decision and the
// reason the rule table gives. Every fingerprint field must have at least one row.
func TestCheckEachField(t *testing.T) {
	t.Parallel()
	type row struct {
		field  string
		name   string
		blob   func(*Fingerprint)
		host   func(*Fingerprint)
		kind   string
		ok     bool
		reason string // substring of a reason; "" when compatible without notes
	}
	plugin := func(f *Fingerprint) { f.CompilerType = CompilerPlugin }
	rows := []row{
		{field: "openvino", name: "2025.3 host needs equal patch",
			blob: func(f *Fingerprint) { f.OpenVINO = "2025.3.1" }, reason: "openvino: host 2025.3.0 is in the era since 0.0.0 needs equal major.minor.patch: blob 2025.3.1, host 2025.3.0"},
		{field: "openvino", name: "2025.4 host ignores patch",
			blob: func(f *Fingerprint) { f.OpenVINO = "2025.4.0" }, host: func(f *Fingerprint) { f.OpenVINO = "2025.4.1" }, ok: true},
		{field: "openvino", name: "2025.4 host needs equal minor",
			blob: func(f *Fingerprint) { f.OpenVINO = "2025.3.0" }, host: func(f *Fingerprint) { f.OpenVINO = "2025.4.1" }, reason: "needs equal major.minor"},
		{field: "openvino", name: "2026 host takes older blob",
			host: func(f *Fingerprint) { f.OpenVINO = "2026.1.0" }, ok: true},
		{field: "openvino", name: "2026 host rejects newer blob",
			blob: func(f *Fingerprint) { f.OpenVINO = "2026.2.0" }, host: func(f *Fingerprint) { f.OpenVINO = "2026.1.0" }, reason: "rejects blobs from a newer OpenVINO"},
		{field: "openvino", name: "llm needs exact version on 2026",
			blob: func(f *Fingerprint) { f.OpenVINO = "2026.1.0" }, host: func(f *Fingerprint) { f.OpenVINO = "2026.1.1" }, kind: KindLLM, reason: "openvino: kind llm needs equal major.minor.patch"},
		{field: "openvino", name: "llm equal version",
			blob: func(f *Fingerprint) { f.OpenVINO = "2026.1.1" }, host: func(f *Fingerprint) { f.OpenVINO = "2026.1.1" }, kind: KindLLM, ok: true},
		{field: "openvino", name: "unknown on host",
			host: func(f *Fingerprint) { f.OpenVINO = "" }, reason: "openvino: unknown on host"},
		{field: "arch", name: "different architecture",
			host: func(f *Fingerprint) { f.Arch = "3720" }, reason: "arch: blob 4000, host 3720: must be equal"},
		{field: "arch", name: "unknown on blob",
			blob: func(f *Fingerprint) { f.Arch = "" }, reason: "arch: unknown on blob"},
		{field: "driver_version", name: "DRIVER blob needs equal driver",
			host: func(f *Fingerprint) { f.DriverVersion = "1747160000" }, reason: "driver_version: blob 1747152000, host 1747160000: must be equal"},
		{field: "driver_version", name: "PLUGIN blob takes another driver",
			blob: plugin, host: func(f *Fingerprint) { f.DriverVersion = "1747160000" }, ok: true},
		{field: "driver_version", name: "PREFER_PLUGIN blob needs equal driver",
			blob: func(f *Fingerprint) { f.CompilerType = CompilerPreferPlugin }, host: func(f *Fingerprint) { f.DriverVersion = "2" }, reason: "driver_version: blob"},
		{field: "driver_version", name: "unknown falls back to equal UMD",
			blob: func(f *Fingerprint) { f.DriverVersion = ""; f.UMDVersion = "1.10.0" }, host: func(f *Fingerprint) { f.UMDVersion = "1.10.0" }, ok: true,
			reason: "driver_version: unknown on blob; fell back to equal umd_version (1.10.0)"},
		{field: "driver_version", name: "unknown and no UMD",
			blob: func(f *Fingerprint) { f.DriverVersion = "" }, reason: "driver_version: unknown on blob, and fallback umd_version is unknown on blob and host"},
		{field: "compiler_type", name: "host compiler type does not matter",
			host: plugin, ok: true},
		{field: "compiler_version", name: "different compiler",
			host: func(f *Fingerprint) { f.CompilerVersion = "7.5" }, reason: "compiler_version: blob 7.4, host 7.5: must be equal (unverified rule)"},
		{field: "compiler_version", name: "PLUGIN also needs equal compiler",
			blob: plugin, host: func(f *Fingerprint) { f.CompilerVersion = "7.5" }, reason: "compiler_version:"},
		{field: "max_tiles", name: "different tiles",
			host: func(f *Fingerprint) { f.MaxTiles = 4 }, reason: "max_tiles: blob 6, host 4: must be equal (unverified rule)"},
		{field: "max_tiles", name: "unknown tiles",
			host: func(f *Fingerprint) { f.MaxTiles = 0 }, reason: "max_tiles: unknown on host"},
		{field: "stepping", name: "different stepping",
			host: func(f *Fingerprint) { f.Stepping = 5 }, reason: "stepping: blob 4, host 5: must be equal"},
		{field: "stepping", name: "stepping 0 is a value",
			blob: func(f *Fingerprint) { f.Stepping = 0 }, host: func(f *Fingerprint) { f.Stepping = 0 }, ok: true},
		{field: "firmware_mi", name: "newer firmware minor",
			host: func(f *Fingerprint) { f.FirmwareMI = "11.6" }, ok: true},
		{field: "firmware_mi", name: "older firmware minor",
			blob: func(f *Fingerprint) { f.FirmwareMI = "11.5" }, reason: "firmware_mi: blob 11.5 needs firmware minor >= 5, host has 11.4"},
		{field: "firmware_mi", name: "other major",
			host: func(f *Fingerprint) { f.FirmwareMI = "12.4" }, reason: "firmware_mi: blob 11.4 needs firmware major 11, host has 12.4"},
		{field: "firmware_mi", name: "patch ignored",
			blob: func(f *Fingerprint) { f.FirmwareMI = "11.4.10" }, host: func(f *Fingerprint) { f.FirmwareMI = "11.4.2" }, ok: true},
		{field: "firmware_mi", name: "unknown falls back to equal driver",
			host: func(f *Fingerprint) { f.FirmwareMI = "" }, ok: true, reason: "firmware_mi: unknown on host; fell back to equal driver_version (1747152000)"},
		{field: "firmware_mi", name: "unknown with other driver",
			blob: func(f *Fingerprint) { f.FirmwareMI = ""; f.CompilerType = CompilerPlugin }, host: func(f *Fingerprint) { f.DriverVersion = "9" },
			reason: "firmware_mi: unknown on blob; fallback requires equal driver_version: blob 1747152000, host 9"},
		{field: "runtime_requirements", name: "different npu in requirements",
			blob:   func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6;ov=2025.3.0;desc=[npu=4000;mi=11.4.1]" },
			host:   func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6;ov=2025.3.0;desc=[npu=3720;mi=11.4.1]" },
			reason: "runtime_requirements: desc.npu: blob 4000, host 3720: must be equal"},
		{field: "runtime_requirements", name: "newer metadata in requirements",
			blob:   func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.7;ov=2025.3.0" },
			host:   func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6;ov=2025.3.0" },
			reason: "runtime_requirements: meta: blob 2.7 is newer than host 2.6"},
		{field: "runtime_requirements", name: "only the blob has them",
			blob: func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6;ov=2025.3.0;desc=[npu=3720]" }, ok: true},
		{field: "os", name: "other OS", host: func(f *Fingerprint) { f.OS = "windows" }, ok: true},
		{field: "cpu_arch", name: "other CPU", host: func(f *Fingerprint) { f.CPUArch = "arm64" }, ok: true},
		{field: "umd_version", name: "other UMD", host: func(f *Fingerprint) { f.UMDVersion = "1.13.0" }, ok: true},
		{field: "kernel_driver", name: "other kernel driver", host: func(f *Fingerprint) { f.KernelDriver = "other" }, ok: true},
	}
	covered := map[string]bool{}
	for _, tt := range rows {
		covered[tt.field] = true
	}
	for _, f := range fields {
		if !covered[f.name] {
			t.Errorf("no row for field %s", f.name)
		}
	}
	r := DefaultRules()
	for _, tt := range rows {
		t.Run(tt.field+"/"+tt.name, func(t *testing.T) {
			t.Parallel()
			blob, host := lnl(), lnl()
			if tt.blob != nil {
				tt.blob(&blob)
			}
			if tt.host != nil {
				tt.host(&host)
			}
			d := Check(r, blob, host, tt.kind)
			if d.Compatible != tt.ok {
				t.Fatalf("Compatible = %v, want %v; reasons %q", d.Compatible, tt.ok, d.Reasons)
			}
			if tt.reason == "" {
				if len(d.Reasons) != 0 {
					t.Fatalf("unexpected reasons %q", d.Reasons)
				}
				return
			}
			if len(d.Reasons) != 1 || !strings.Contains(d.Reasons[0], tt.reason) {
				t.Fatalf("reasons %q, want exactly one containing %q", d.Reasons, tt.reason)
			}
		})
	}
}

func TestCheckRejectsBadInput(t *testing.T) {
	t.Parallel()
	r := DefaultRules()
	bad := lnl()
	bad.Arch = "x"
	for _, tt := range []struct {
		blob, host Fingerprint
		kind, want string
	}{
		{bad, lnl(), "", "blob fingerprint"},
		{lnl(), bad, "", "host fingerprint"},
		{lnl(), lnl(), "tensor", `kind: unknown blob kind "tensor"`},
	} {
		d := Check(r, tt.blob, tt.host, tt.kind)
		if d.Compatible || len(d.Reasons) != 1 || !strings.Contains(d.Reasons[0], tt.want) {
			t.Errorf("Check = %+v, want incompatible naming %q", d, tt.want)
		}
	}
	if d := Check(r, lnl(), lnl(), KindModel); !d.Compatible {
		t.Fatalf("identical fingerprints incompatible: %q", d.Reasons)
	}
}

func TestClass(t *testing.T) {
	t.Parallel()
	r := DefaultRules()
	class := func(f Fingerprint, kind string) string {
		t.Helper()
		c, err := Class(r, f, kind)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := class(lnl(), "")
	with := func(mut func(*Fingerprint)) Fingerprint { f := lnl(); mut(&f); return f }
	same := map[string]Fingerprint{
		"firmware minor": with(func(f *Fingerprint) { f.FirmwareMI = "11.6" }),
		"os":             with(func(f *Fingerprint) { f.OS = "windows" }),
		"cpu arch":       with(func(f *Fingerprint) { f.CPUArch = "arm64" }),
		"umd":            with(func(f *Fingerprint) { f.UMDVersion = "1.2.3" }),
		"requirements":   with(func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6" }),
		"spelling":       with(func(f *Fingerprint) { f.CompilerType = " driver " }),
	}
	for name, f := range same {
		if got := class(f, ""); got != base {
			t.Errorf("%s changed the class", name)
		}
	}
	differ := map[string]Fingerprint{
		"arch":                with(func(f *Fingerprint) { f.Arch = "3720" }),
		"firmware major":      with(func(f *Fingerprint) { f.FirmwareMI = "12.4" }),
		"driver":              with(func(f *Fingerprint) { f.DriverVersion = "2" }),
		"compiler type":       with(func(f *Fingerprint) { f.CompilerType = CompilerPlugin }),
		"compiler":            with(func(f *Fingerprint) { f.CompilerVersion = "7.5" }),
		"tiles":               with(func(f *Fingerprint) { f.MaxTiles = 4 }),
		"stepping":            with(func(f *Fingerprint) { f.Stepping = 5 }),
		"ov patch":            with(func(f *Fingerprint) { f.OpenVINO = "2025.3.1" }),
		"firmware mi unknown": with(func(f *Fingerprint) { f.FirmwareMI = "" }),
	}
	for name, f := range differ {
		if got := class(f, ""); got == base {
			t.Errorf("%s did not change the class", name)
		}
	}
	if class(lnl(), KindLLM) == base {
		t.Error("kind did not change the class")
	}

	// PLUGIN blobs do not depend on the driver, so neither does their class.
	p1 := with(func(f *Fingerprint) { f.CompilerType = CompilerPlugin })
	p2 := with(func(f *Fingerprint) { f.CompilerType = CompilerPlugin; f.DriverVersion = "2" })
	if class(p1, "") != class(p2, "") {
		t.Error("driver changed the class of PLUGIN hosts")
	}
	// Eras: 2025.4 groups patches, 2026 groups minors (range rule), llm never does.
	ov := func(v string) Fingerprint { return with(func(f *Fingerprint) { f.OpenVINO = v }) }
	if class(ov("2025.4.0"), "") != class(ov("2025.4.1"), "") {
		t.Error("2025.4 era split patches")
	}
	if class(ov("2025.4.0"), "") == class(ov("2025.5.0"), "") {
		t.Error("2025.4 era merged minors")
	}
	if class(ov("2026.1.0"), "") != class(ov("2026.2.0"), "") {
		t.Error("2026 era split minors")
	}
	if class(ov("2026.1.0"), KindLLM) == class(ov("2026.1.1"), KindLLM) {
		t.Error("llm merged patches")
	}
	if _, err := Class(r, with(func(f *Fingerprint) { f.Arch = "x" }), ""); err == nil {
		t.Error("Class accepted an invalid fingerprint")
	}
	if _, err := Class(r, lnl(), "tensor"); err == nil {
		t.Error("Class accepted an unknown kind")
	}
}

func TestLoadRulesRejects(t *testing.T) {
	t.Parallel()
	good := string(defaultRulesYAML)
	tests := []struct {
		name, old, new, want string
	}{
		{"unknown key", "version: 1", "version: 1\nextra: 2", "field extra not found"},
		{"version", "version: 1", "version: 0", "version 0"},
		{"missing field", "  kernel_driver:\n    match: ignore\n    verified: true\n    note: \"informational; only intel_vpu drives these NPUs\"\n", "", "fields.kernel_driver is missing"},
		{"unknown field", "  kernel_driver:", "  gpu:\n    match: ignore\n  kernel_driver:", "no such fingerprint field"},
		{"match", "    match: mi\n    unknown: fallback", "    match: bigger\n    unknown: fallback", `match "bigger"`},
		{"unknown policy", "    match: equal\n    unknown: reject\n    verified: true\n    note: \"the driver's",
			"    match: equal\n    unknown: maybe\n    verified: true\n    note: \"the driver's", `unknown "maybe"`},
		{"fallback", "fallback: umd_version", "fallback: gpu", `fallback "gpu"`},
		{"compiler type", `[DRIVER, PREFER_PLUGIN, ""]`, "[CPU]", `when_compiler_type "CPU"`},
		{"first era", `since: "0.0.0"`, `since: "2024.0.0"`, "want 0.0.0"},
		{"era order", `since: "2026.0.0"`, `since: "2025.1.0"`, "is not after"},
		{"era match", "      match: minor", "      match: exact", `match "exact"`},
		{"kind", "llm: patch", "llm: exact", `openvino.kinds.llm is "exact"`},
		{"rr fallback", "  mi:\n    match: mi\n    unknown: accept", "  mi:\n    match: mi\n    unknown: fallback\n    fallback: arch", "fingerprint fields only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := strings.Replace(good, tt.old, tt.new, 1)
			if data == good {
				t.Fatalf("replacement %q not found", tt.old)
			}
			_, err := LoadRules([]byte(data))
			if !errors.Is(err, ErrRules) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrRules containing %q", err, tt.want)
			}
		})
	}
}

func TestCheckRuntimeRequirements(t *testing.T) {
	t.Parallel()
	r := DefaultRules()
	host := "meta=2.6;ov=2026.2.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10]"
	tests := []struct {
		blob   string
		kind   string
		ok     bool
		reason string
	}{
		{host, "", true, ""},
		{"meta=2.6;ov=2026.1.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.3.0]", "", true, ""},
		{"meta=2.6;ov=2026.1.0;desc=[compiler=8.1;npu=4000]", KindLLM, false, "ov: kind llm needs equal major.minor.patch"},
		{"meta=2.6;ov=2026.3.0", "", false, "ov: host 2026.2.0 is in the era since 2026.0.0 rejects"},
		{"meta=2.7", "", false, "meta: blob 2.7 is newer than host 2.6"},
		{"desc=[mi=11.5.0]", "", false, "desc.mi: blob 11.5.0 needs firmware minor >= 5, host has 11.4.10"},
		{"desc=[t=6]", "", false, "desc.t: blob 6, host 4: must be equal (unverified rule)"},
		{"desc=[elf=1.3.0]", "", false, "desc.elf:"},
		{"desc=[compiler=8.2]", "", false, "desc.compiler:"},
		{"desc=[npu=5010]", "", false, "desc.npu:"},
		{"ws=1;desc=[x=1]", "", true, ""},
		{"desc=[", "", false, "blob: malformed runtime requirements"},
	}
	for _, tt := range tests {
		d := r.checkRuntimeRequirements(tt.blob, host, tt.kind)
		if d.Compatible != tt.ok {
			t.Errorf("%q: Compatible = %v, reasons %q", tt.blob, d.Compatible, d.Reasons)
			continue
		}
		if tt.reason == "" && len(d.Reasons) > 0 || tt.reason != "" && (len(d.Reasons) != 1 ||
			!strings.Contains(d.Reasons[0], tt.reason)) {
			t.Errorf("%q: reasons %q, want one containing %q", tt.blob, d.Reasons, tt.reason)
		}
	}
	// Unlisted keys must agree when both sides carry them.
	if d := r.checkRuntimeRequirements("ws=1", "ws=0", ""); d.Compatible {
		t.Error("unlisted key ws=1 vs ws=0 accepted")
	}
}

func TestCheckBlob(t *testing.T) {
	t.Parallel()
	r := DefaultRules()
	host := lnl()
	host.OpenVINO = "2026.2.0"
	host.CompilerVersion = "8.1"
	tr := func(mut func(*Trailer)) *Trailer {
		t := trailerFor(7)
		mut(&t)
		return &t
	}
	tests := []struct {
		name   string
		t      *Trailer
		host   func(*Fingerprint)
		kind   string
		ok     bool
		reason string
	}{
		{"matching 2.7", tr(func(*Trailer) {}), nil, "", true, ""},
		{"2.0 trailer, older OpenVINO", &Trailer{Metadata: MetadataVersion{2, 0}, OpenVINO: OVVersion{2025, 3, 0}}, nil, "", true, ""},
		{"newer OpenVINO", tr(func(t *Trailer) { t.OpenVINO = OVVersion{2026, 3, 0} }), nil, "", false, "openvino: host 2026.2.0"},
		{"llm patch", tr(func(t *Trailer) { t.OpenVINO = OVVersion{2026, 2, 1} }), func(f *Fingerprint) { f.OpenVINO = "2026.2.0" }, KindLLM, false, "kind llm"},
		{"host 2025.3 needs patch", &Trailer{Metadata: MetadataVersion{2, 0}, OpenVINO: OVVersion{2025, 3, 1}},
			func(f *Fingerprint) { f.OpenVINO = "2025.3.0" }, "", false, "equal major.minor.patch"},
		{"compiler from trailer", tr(func(t *Trailer) { t.CompilerVersion = 8<<16 | 2 }), nil, "", false, "compiler_version: blob 8.2, host 8.1"},
		{"arch from descriptor", tr(func(t *Trailer) { t.RuntimeRequirements = "npu=3720;mi=11.4.0" }), nil, "", false, "arch: blob 3720, host 4000"},
		{"mi from descriptor", tr(func(t *Trailer) { t.RuntimeRequirements = "npu=4000;mi=11.5.0" }), nil, "", false, "firmware_mi: blob 11.5.0 needs firmware minor >= 5"},
		{"descriptor with NUL", tr(func(t *Trailer) { t.RuntimeRequirements = "npu=4000;mi=11.4.0\x00" }), nil, "", true, ""},
		{"bad descriptor", tr(func(t *Trailer) { t.RuntimeRequirements = "npu" }), nil, "", false, "runtime_requirements: blob descriptor"},
		{"host requirements", tr(func(t *Trailer) { t.RuntimeRequirements = "t=6" }),
			func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.7;ov=2026.2.0;desc=[t=4]" }, "", false, "runtime_requirements: desc.t: blob 6, host 4"},
		{"host metadata older", tr(func(*Trailer) {}),
			func(f *Fingerprint) { f.RuntimeRequirements = "meta=2.6;ov=2026.2.0" }, "", false, "runtime_requirements: meta: blob 2.7 is newer than host 2.6"},
		{"host OpenVINO unknown", tr(func(*Trailer) {}), func(f *Fingerprint) { f.OpenVINO = "" }, "", false, "openvino: unknown on host"},
		{"host MI unknown is not checked", tr(func(*Trailer) {}), func(f *Fingerprint) { f.FirmwareMI = "" }, "", true, ""},
		{"nil trailer", nil, nil, "", false, "trailer: none"},
		{"bad kind", tr(func(*Trailer) {}), nil, "x", false, "kind: unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := host
			if tt.host != nil {
				tt.host(&h)
			}
			d := CheckBlob(r, tt.t, h, tt.kind)
			if d.Compatible != tt.ok {
				t.Fatalf("Compatible = %v, reasons %q", d.Compatible, d.Reasons)
			}
			if tt.reason == "" && len(d.Reasons) > 0 || tt.reason != "" && (len(d.Reasons) != 1 ||
				!strings.Contains(d.Reasons[0], tt.reason)) {
				t.Fatalf("reasons %q, want one containing %q", d.Reasons, tt.reason)
			}
		})
	}
}
