package fleetbench

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Blob is the file being distributed.
type Blob struct {
	Path   string
	Size   int64
	SHA256 [32]byte
}

// chunk is the unit of blob I/O: files are streamed, never held whole.
const chunk = 1 << 20

// MakeBlob writes size random (incompressible) bytes to path, creating its directory, and returns its digest.
func MakeBlob(path string, size int64) (Blob, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return Blob{}, fmt.Errorf("fleetbench: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: %w", err)
	}
	var seed [32]byte
	for i := range 4 {
		v := rand.Uint64()
		for j := range 8 {
			seed[i*8+j] = byte(v >> (8 * j))
		}
	}
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), chunk)
	_, err = io.CopyN(w, rand.NewChaCha8(seed), size)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Blob{}, fmt.Errorf("fleetbench: write blob %s: %w", path, err)
	}
	b := Blob{Path: path, Size: size}
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
