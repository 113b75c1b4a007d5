package compat

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// fixture copies testdata/sysfs/name into a temporary root and creates the given symlinks (path -> target,
// relative to the root), which git and module zips do not carry well.
func fixture(t *testing.T, name string, links map[string]string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS(filepath.Join("testdata", "sysfs", name))); err != nil {
		t.Fatal(err)
	}
	for path, target := range links {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// lnlLinks reproduce the real sysfs shape: the class entry and the device link are symlinks into sys/devices
// (PCI directory names use '_' for ':' in the fixture).
var lnlLinks = map[string]string{
	"sys/class/accel/accel0":                                  "../../devices/pci0000_00/0000_00_0b.0/accel/accel0",
	"sys/devices/pci0000_00/0000_00_0b.0/accel/accel0/device": "../../../0000_00_0b.0",
	"sys/devices/pci0000_00/0000_00_0b.0/driver":              "../../../bus/pci/drivers/intel_vpu",
	"usr/lib/x86_64-linux-gnu/libze_intel_vpu.so.1":           "libze_intel_vpu.so.1.10.0",
}

func TestProbeSysfs(t *testing.T) {
	t.Parallel()
	f, err := ProbeSysfs(fixture(t, "lnl", lnlLinks))
	if err != nil {
		t.Fatal(err)
	}
	want := Fingerprint{Arch: "4000", Stepping: 4, UMDVersion: "1.10.0", KernelDriver: "intel_vpu",
		OS: runtime.GOOS, CPUArch: runtime.GOARCH}
	if f != want {
		t.Fatalf("got  %+v\nwant %+v", f, want)
	}

	// Two Meteor/Arrow Lake NPUs and an AMD accelerator; the newest Level Zero library of several installs.
	f, err = ProbeSysfs(fixture(t, "multi", map[string]string{
		"sys/class/accel/accel0/device/driver": "../../../bus/pci/drivers/intel_vpu",
		"sys/class/accel/accel2/device/driver": "../../../bus/pci/drivers/amdxdna",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want = Fingerprint{Arch: "3720", Stepping: 0, UMDVersion: "1.13.0", KernelDriver: "intel_vpu",
		OS: runtime.GOOS, CPUArch: runtime.GOARCH}
	if f != want {
		t.Fatalf("got  %+v\nwant %+v", f, want)
	}
}

func TestProbeSysfsErrors(t *testing.T) {
	t.Parallel()
	badRevision := fixture(t, "lnl", lnlLinks)
	if err := os.WriteFile(filepath.Join(badRevision, "sys/devices/pci0000_00/0000_00_0b.0/revision"),
		[]byte("4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	emptyClass := t.TempDir()
	if err := os.MkdirAll(filepath.Join(emptyClass, "sys/class/accel"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		root string
		is   error
		want string
	}{
		{"no accel class", t.TempDir(), ErrNoNPU, "does not exist"},
		{"empty accel class", emptyClass, ErrNoNPU, "no Intel device"},
		{"only AMD", fixture(t, "amd-only", nil), ErrNoNPU, "no Intel device"},
		{"unknown device id", fixture(t, "unknown", nil), ErrNoNPU, "unknown NPU PCI device id 0x1234"},
		{"mixed architectures", fixture(t, "mixed", nil), ErrNoNPU, "accel0 is NPU 3720 but accel1 is NPU 4000"},
		{"revision not hex", badRevision, nil, `holds "4", want a 0x-prefixed hex number`},
	}
	for _, tt := range tests {
		_, err := ProbeSysfs(tt.root)
		if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %v containing %q", tt.name, err, tt.is, tt.want)
		}
	}
}

func TestOverride(t *testing.T) {
	t.Parallel()
	probed, err := ProbeSysfs(fixture(t, "lnl", lnlLinks))
	if err != nil {
		t.Fatal(err)
	}
	o, err := LoadOverride("testdata/override/pin-mi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := o.Apply(probed)
	if err != nil {
		t.Fatal(err)
	}
	want := probed
	want.FirmwareMI, want.MaxTiles = "11.4", 6
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}

	// A full JSON override replaces everything, and "" clears a probed value.
	o, err = LoadOverride("testdata/override/full.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err = o.Apply(probed)
	if err != nil {
		t.Fatal(err)
	}
	want = lnl()
	want.KernelDriver = "intel_vpu"
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}

	var none *Override
	if got, err := none.Apply(probed); err != nil || got != probed {
		t.Fatalf("nil override: %+v, %v", got, err)
	}
	if o, err := ParseOverride(nil); err != nil || *o != (Override{}) {
		t.Fatalf("empty override: %+v, %v", o, err)
	}

	bad := []struct{ data, want string }{
		{"gpu: 1", "field gpu not found"},
		{"max_tiles: six", "cannot unmarshal"},
		{"openvino: 2025.3", "openvino"},
		{"compiler_type: GPU", "compiler_type"},
		{"arch: \"4000\"\n---\narch: \"3720\"", "more than one document"},
		{"[1, 2]", "cannot unmarshal"},
	}
	for _, b := range bad {
		if _, err := ParseOverride([]byte(b.data)); !errors.Is(err, ErrOverride) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseOverride(%q) = %v, want ErrOverride containing %q", b.data, err, b.want)
		}
	}

	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxOverrideSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOverride(big); !errors.Is(err, ErrOverride) {
		t.Errorf("oversized override: %v", err)
	}
	if _, err := LoadOverride(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing override: %v", err)
	}
}

func FuzzParseOverride(f *testing.F) {
	for _, p := range []string{"testdata/override/pin-mi.yaml", "testdata/override/full.json"} {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("stepping: 0\nos: \"\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseOverride(data)
		if err != nil {
			return
		}
		// An accepted override applies cleanly to any valid fingerprint.
		if _, err := o.Apply(lnl()); err != nil {
			t.Fatalf("accepted override fails to apply: %v", err)
		}
	})
}
