//go:build linux

package fleetbench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/internal/e2e"
)

// Blob is the file being distributed.
type Blob struct {
	Path   string
	Size   int64
	SHA256 [32]byte
	// Model is the model the blob was compiled from (an IR .xml); npu-agent registers the blob under it.
	Model string
}

// chunk is the unit of blob I/O: files are streamed, never held whole.
const chunk = 1 << 20

// SeedFingerprint is the NPU stack the seed blob is compiled for. npu-agent hosts of the benchmark claim it, so
// that the blob is valid on all of them.
var SeedFingerprint = e2e.LunarLake

// SeedShape is the static input shape of the profile the seed blob is compiled with (npu-agent's --shape).
const SeedShape = "x=1,8"

// MakeSeed writes the blob every system distributes into dir: an NPU blob as npu-agent's simulated compiler makes
// it for SeedFingerprint, that is an ELF payload of size pseudo-random (incompressible) bytes followed by an OVNPU
// trailer, compiled from a small model written beside it. npu-agent accepts it like any blob compiled for the host;
// to the other systems it is just a file.
func MakeSeed(ctx context.Context, dir string, size int64) (Blob, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Blob{}, fmt.Errorf("fleetbench: %w", err)
	}
	modelPath, err := e2e.WriteModel(dir, "fleetbench", 4096)
	if err == nil {
		modelPath, err = filepath.Abs(modelPath) // daemons are given it through their API
	}
	if err != nil {
		return Blob{}, err
	}
	model, err := compile.LoadModel(modelPath)
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: %w", err)
	}
	o, err := compat.ParseOverride(SeedFingerprint.YAML())
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: seed fingerprint: %w", err)
	}
	fp, err := o.Apply(compat.Fingerprint{})
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: seed fingerprint: %w", err)
	}
	sim, err := compile.NewSim(fp, compile.SimOptions{PayloadSize: size})
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: %w", err)
	}
	prof, err := seedProfile()
	if err != nil {
		return Blob{}, err
	}
	path := filepath.Join(dir, "blob")
	if _, err := sim.Compile(ctx, compile.Request{Model: model, Profile: prof, OutPath: path}); err != nil {
		return Blob{}, fmt.Errorf("fleetbench: make seed blob: %w", err)
	}
	b, err := hashFile(path)
	b.Model = modelPath
	return b, err
}

// seedProfile is the compile profile of the seed blob.
func seedProfile() (compile.Profile, error) {
	name, dims, err := compile.ParseShape(SeedShape)
	if err != nil {
		return compile.Profile{}, err
	}
	return compile.Profile{Device: "NPU", Shapes: map[string][]int64{name: dims}}.Canonical()
}

// hashFile returns path as a Blob: its size and SHA-256.
func hashFile(path string) (Blob, error) {
	f, err := os.Open(path)
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, bufio.NewReaderSize(f, chunk))
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: read %s: %w", path, err)
	}
	b := Blob{Path: path, Size: n}
	h.Sum(b.SHA256[:0])
	return b, nil
}

// VerifyFile checks that the file at path has want's size and SHA-256.
func VerifyFile(path string, want Blob) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	// One byte more than expected is enough to tell a long file.
	n, err := io.Copy(h, bufio.NewReaderSize(io.LimitReader(f, want.Size+1), chunk))
	if err != nil {
		return fmt.Errorf("fleetbench: read %s: %w", path, err)
	}
	if n != want.Size {
		return fmt.Errorf("%w: %s has %d bytes, want %d", ErrVerify, path, n, want.Size)
	}
	if got := h.Sum(nil); [32]byte(got) != want.SHA256 {
		return fmt.Errorf("%w: %s has sha256 %s, want %s", ErrVerify, path, hex.EncodeToString(got), hex.EncodeToString(want.SHA256[:]))
	}
	return nil
}

// ErrSize is returned (wrapped) for a size ParseSize does not accept.
var ErrSize = errors.New("invalid size")

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
	{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3},
	{"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10},
	{"b", 1}, {"", 1},
}

// ParseSize parses a size such as "128MiB", "1GiB", "500MB" or "4096"; the single letters k, m, g are binary.
func ParseSize(s string) (int64, error) {
	if len(s) > 32 {
		return 0, fmt.Errorf("%w: %.32q... is too long", ErrSize, s)
	}
	in := strings.ToLower(strings.TrimSpace(s))
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(in, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || math.IsNaN(v) || v <= 0 || v*float64(u.mult) > MaxSize {
			return 0, fmt.Errorf("%w: %q (want a positive number of bytes up to 8GiB, e.g. 128MiB)", ErrSize, s)
		}
		n := int64(math.Round(v * float64(u.mult)))
		if n < 1 {
			return 0, fmt.Errorf("%w: %q is less than one byte", ErrSize, s)
		}
		return n, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrSize, s) // unreachable: the empty suffix matches everything
}

// FormatSize prints n bytes in binary units, e.g. "128.0 MiB".
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
