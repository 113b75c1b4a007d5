package ovcache_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
)

func lnl() compat.Fingerprint {
	return compat.Fingerprint{
		OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64",
	}
}

func TestKey(t *testing.T) {
	t.Parallel()
	r := compat.DefaultRules()
	base, err := ovcache.Key(r, lnl(), ovcachetest.Build)
	if err != nil {
		t.Fatal(err)
	}
	if len(base) != 64 {
		t.Fatalf("key %q", base)
	}
	tests := []struct {
		name  string
		fp    func(*compat.Fingerprint)
		build string
		same  bool
	}{
		{"same host", func(*compat.Fingerprint) {}, ovcachetest.Build, true},
		{"other firmware MI minor (range rule, same class)", func(f *compat.Fingerprint) { f.FirmwareMI = "11.6" }, ovcachetest.Build, true},
		{"other driver, plugin compiler", func(f *compat.Fingerprint) { f.DriverVersion = "1750000000" }, ovcachetest.Build, true},
		{"other build string", func(*compat.Fingerprint) {}, ovcachetest.Build + "x", false},
		{"other OS (std::hash differs)", func(f *compat.Fingerprint) { f.OS = "windows" }, ovcachetest.Build, false},
		{"other CPU arch", func(f *compat.Fingerprint) { f.CPUArch = "arm64" }, ovcachetest.Build, false},
		{"other NPU", func(f *compat.Fingerprint) { f.Arch = "3720" }, ovcachetest.Build, false},
		{"other compiler version", func(f *compat.Fingerprint) { f.CompilerVersion = "7.5" }, ovcachetest.Build, false},
		{"other MI major", func(f *compat.Fingerprint) { f.FirmwareMI = "12.0" }, ovcachetest.Build, false},
	}
	for _, tt := range tests {
		fp := lnl()
		tt.fp(&fp)
		k, err := ovcache.Key(r, fp, tt.build)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if (k == base) != tt.same {
			t.Errorf("%s: same key = %v, want %v", tt.name, k == base, tt.same)
		}
	}
	for _, bad := range []string{"", "a\nb", strings.Repeat("x", ovcache.MaxAttr+1)} {
		if _, err := ovcache.Key(r, lnl(), bad); err == nil {
			t.Errorf("build %q: no error", bad)
		}
	}
	for _, fp := range []compat.Fingerprint{{}, {OS: "linux", CPUArch: "amd64", Arch: "x"}} {
		if _, err := ovcache.Key(r, fp, ovcachetest.Build); err == nil {
			t.Errorf("fingerprint %+v: no error", fp)
		}
	}
}

func TestCheckEntry(t *testing.T) {
	t.Parallel()
	r := compat.DefaultRules()
	entry := func(build string, tr compat.Trailer) *ovcache.Entry {
		data := ovcachetest.Entry(ovcache.Header{Build: build, FileInfo: "1", Alignment: 4096}, false, ovcachetest.Blob(tr, 100, 9))
		e, err := ovcache.Parse(bytes.NewReader(data), int64(len(data)), 0)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	good := ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4)
	weightless := good
	weightless.Metadata.Minor, weightless.InitSizes = 4, []uint64{10}
	newer := ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 2}, 7, 4)
	otherCompiler := ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 5)
	tests := []struct {
		name  string
		e     *ovcache.Entry
		build string
		msg   string
		// usable: CheckUsable passes (the entry may stay in this host's own directory) though it is not shared.
		usable bool
	}{
		{"matching", entry(ovcachetest.Build, good), ovcachetest.Build, "", false},
		{"build unknown to the caller", entry(ovcachetest.Build, good), "", "", false},
		{"unversioned build string", entry("custom_build", good), "custom_build", "", false},
		{"other build", entry(ovcachetest.Build, good), "2026.1.0-1", "this host runs", false},
		{"header and trailer disagree", entry("2026.2.0-1", good), "2026.2.0-1", "header says OpenVINO 2026.2.0", false},
		{"weightless", entry(ovcachetest.Build, weightless), ovcachetest.Build, "weightless", true},
		{"newer OpenVINO in the trailer", entry("2026.2.0-1", newer), "2026.2.0-1", "openvino", false},
		{"other compiler", entry(ovcachetest.Build, otherCompiler), ovcachetest.Build, "compiler_version", false},
	}
	for _, tt := range tests {
		uerr := ovcache.CheckUsable(r, tt.e, lnl(), tt.build)
		if (uerr == nil) != (tt.msg == "" || tt.usable) {
			t.Errorf("%s: CheckUsable = %v", tt.name, uerr)
		}
		err := ovcache.CheckEntry(r, tt.e, lnl(), tt.build)
		if tt.msg == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, ovcache.ErrIncompatible) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: err %v, want ErrIncompatible with %q", tt.name, err, tt.msg)
		}
	}
}
