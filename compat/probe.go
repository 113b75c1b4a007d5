package compat

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// ErrNoNPU reports that a probe found no usable Intel NPU.
var ErrNoNPU = errors.New("no Intel NPU found")

// PCIDeviceArch maps Intel NPU PCI device ids to NPU architectures.
var PCIDeviceArch = map[uint16]string{
	0x7d1d: "3720", // Meteor Lake
	0xad1d: "3720", // Arrow Lake
	0x643e: "4000", // Lunar Lake
	0xb03e: "5010", // Panther Lake
	0xfd3e: "5020",
}

const intelVendor = 0x8086

// levelZeroLibs are the file-name prefixes of the Level Zero NPU driver library (old and new name).
var levelZeroLibs = []string{"libze_intel_vpu.so.", "libze_intel_npu.so."}

// levelZeroDirs are the library directories searched under the root, as globs.
var levelZeroDirs = []string{
	"usr/lib", "usr/lib64", "usr/lib/*-linux-gnu", "usr/local/lib", "usr/local/lib64", "usr/local/lib/*-linux-gnu",
	"lib", "lib64", "lib/*-linux-gnu",
}

// ProbeSysfs fingerprints the NPU from a Linux file tree rooted at root ("/" on a real host), without OpenVINO:
//   - Arch from the PCI device id in sys/class/accel/*/device/device (Intel vendor only);
//   - KernelDriver from the device/driver symlink;
//   - Stepping from device/revision (assumed to equal NPU_STEPPING; unverified);
//   - UMDVersion from the newest libze_intel_vpu.so.X.Y.Z / libze_intel_npu.so.X.Y.Z under the usual library
//     directories (empty if none);
//   - OS and CPUArch from this process.
//
// The firmware MI version is not exposed in sysfs and stays unknown; OpenVINO, RUNTIME_REQUIREMENTS or an
// override supply it. Devices not from Intel are skipped; several Intel NPUs must share one architecture.
func ProbeSysfs(root string) (Fingerprint, error) {
	classDir := filepath.Join(root, "sys", "class", "accel")
	entries, err := os.ReadDir(classDir)
	if errors.Is(err, os.ErrNotExist) {
		return Fingerprint{}, fmt.Errorf("%w: %s does not exist (no accel driver loaded)", ErrNoNPU, classDir)
	}
	if err != nil {
		return Fingerprint{}, fmt.Errorf("probe NPU: %w", err)
	}
	var found *Fingerprint
	var foundName string
	for _, e := range entries { // ReadDir sorts by name
		dev := filepath.Join(classDir, e.Name(), "device")
		vendor, err := readHexID(filepath.Join(dev, "vendor"))
		if err == nil && vendor != intelVendor {
			continue
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return Fingerprint{}, err
		}
		id, err := readHexID(filepath.Join(dev, "device"))
		if err != nil {
			return Fingerprint{}, err
		}
		arch, ok := "", false
		if id <= 0xffff {
			arch, ok = PCIDeviceArch[uint16(id)]
		}
		if !ok {
			return Fingerprint{}, fmt.Errorf("%w: %s has unknown NPU PCI device id 0x%04x (known: %s)", ErrNoNPU,
				e.Name(), id, knownIDs())
		}
		f := Fingerprint{Arch: arch, OS: runtime.GOOS, CPUArch: runtime.GOARCH}
		if target, err := os.Readlink(filepath.Join(dev, "driver")); err == nil {
			f.KernelDriver = filepath.Base(target)
		}
		rev, err := readHexID(filepath.Join(dev, "revision"))
		switch {
		case err == nil && rev <= 0xff:
			f.Stepping = int(rev)
		case err == nil:
			return Fingerprint{}, fmt.Errorf("probe NPU: %s revision 0x%x exceeds 0xff", e.Name(), rev)
		case !errors.Is(err, os.ErrNotExist):
			return Fingerprint{}, err
		}
		if found != nil {
			if found.Arch != f.Arch {
				return Fingerprint{}, fmt.Errorf("%w: %s is NPU %s but %s is NPU %s; pin one with an override",
					ErrNoNPU, foundName, found.Arch, e.Name(), f.Arch)
			}
			continue
		}
		found, foundName = &f, e.Name()
	}
	if found == nil {
		return Fingerprint{}, fmt.Errorf("%w: no Intel device under %s", ErrNoNPU, classDir)
	}
	umd, err := probeLevelZero(root)
	if err != nil {
		return Fingerprint{}, err
	}
	found.UMDVersion = umd
	f := found.Normalize()
	if err := f.Validate(); err != nil {
		return Fingerprint{}, fmt.Errorf("probe NPU: %w", err)
	}
	return f, nil
}

func knownIDs() string {
	ids := make([]string, 0, len(PCIDeviceArch))
	for id, arch := range PCIDeviceArch {
		ids = append(ids, fmt.Sprintf("0x%04x=%s", id, arch))
	}
	slices.Sort(ids)
	return strings.Join(ids, ", ")
}

// readHexID reads a sysfs id file such as "0x643e\n".
func readHexID(path string) (uint64, error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, 64)) // sysfs ids are a few bytes
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	hex, ok := strings.CutPrefix(s, "0x")
	if !ok {
		return 0, fmt.Errorf("probe NPU: %s holds %q, want a 0x-prefixed hex number", path, s)
	}
	n, err := strconv.ParseUint(hex, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("probe NPU: %s holds %q, want a 0x-prefixed hex number", path, s)
	}
	return n, nil
}

// probeLevelZero returns the version in the name of the newest Level Zero NPU library under root, or "" if none.
// The most specific name wins (libze_intel_vpu.so.1.10.0 over its libze_intel_vpu.so.1 symlink); among several
// installs, the highest version.
func probeLevelZero(root string) (string, error) {
	var best version
	for _, dir := range levelZeroDirs {
		for _, lib := range levelZeroLibs {
			matches, err := filepath.Glob(filepath.Join(root, dir, lib+"*"))
			if err != nil {
				return "", fmt.Errorf("probe Level Zero library: %w", err)
			}
			for _, m := range matches {
				v, err := parseVersion(strings.TrimPrefix(filepath.Base(m), lib), 0)
				if err != nil {
					continue // libze_intel_vpu.so.1.debug and the like
				}
				if len(v) > len(best) || len(v) == len(best) && v.compare(best) > 0 {
					best = v
				}
			}
		}
	}
	if best == nil {
		return "", nil
	}
	return best.String(), nil
}
