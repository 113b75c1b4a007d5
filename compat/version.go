package compat

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrVersion reports a malformed dotted version.
var ErrVersion = errors.New("malformed version")

// version is a dotted numeric version with 1 to 4 components, each fitting uint16 (OpenVINO stores versions as
// uint16 components in the blob trailer).
type version []uint16

// parseVersion parses "a.b[.c[.d]]" with exactly want components (want 0: 1 to 4 components). Leading zeros are
// accepted and dropped ("2025.03.0" is 2025.3.0).
func parseVersion(s string, want int) (version, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrVersion)
	}
	if len(s) > 64 {
		return nil, fmt.Errorf("%w: %d characters, at most 64", ErrVersion, len(s))
	}
	parts := strings.Split(s, ".")
	if want > 0 && len(parts) != want {
		return nil, fmt.Errorf("%w: %q has %d components, want %d", ErrVersion, s, len(parts), want)
	}
	if len(parts) > 4 {
		return nil, fmt.Errorf("%w: %q has %d components, at most 4", ErrVersion, s, len(parts))
	}
	v := make(version, len(parts))
	for i, p := range parts {
		if p == "" || strings.TrimLeft(p, "0123456789") != "" {
			return nil, fmt.Errorf("%w: %q: component %d is not a decimal number", ErrVersion, s, i+1)
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: component %d exceeds 65535", ErrVersion, s, i+1)
		}
		v[i] = uint16(n)
	}
	return v, nil
}

func (v version) String() string {
	var b strings.Builder
	for i, c := range v {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strconv.FormatUint(uint64(c), 10))
	}
	return b.String()
}

// compare orders versions component by component; a missing component counts as 0.
func (v version) compare(w version) int {
	for i := 0; i < max(len(v), len(w)); i++ {
		var a, b uint16
		if i < len(v) {
			a = v[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			if a < b {
				return -1
			}
			return 1
		}
	}
	return 0
}

// prefixEqual reports whether the first n components of v and w are equal (missing components count as 0).
func (v version) prefixEqual(w version, n int) bool {
	return version(v.pad(n)[:n]).compare(version(w.pad(n)[:n])) == 0
}

func (v version) pad(n int) version {
	if len(v) >= n {
		return v
	}
	out := make(version, n)
	copy(out, v)
	return out
}

// normVersion returns the canonical spelling of a dotted version, or s unchanged if it does not parse (Validate
// reports that).
func normVersion(s string, want int) string {
	v, err := parseVersion(s, want)
	if err != nil {
		return s
	}
	return v.String()
}
