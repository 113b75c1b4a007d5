package compat

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// ErrRuntimeRequirements reports a malformed RUNTIME_REQUIREMENTS string or compatibility descriptor.
var ErrRuntimeRequirements = errors.New("malformed runtime requirements")

// Limits on a RUNTIME_REQUIREMENTS string; real ones are under 200 bytes.
const (
	maxRuntimeRequirementsLen = 4096
	maxRuntimeRequirementKeys = 32
)

// RuntimeRequirements is a parsed RUNTIME_REQUIREMENTS string, for example
// "meta=2.6;ov=2026.2.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10]". Top holds the top-level keys except
// desc (meta, ov, and any others such as ws or batch); Desc holds the keys inside desc=[...]. Unknown keys are kept
// so that the rules can require them equal.
type RuntimeRequirements struct {
	Top  map[string]string
	Desc map[string]string
}

// ParseRuntimeRequirements parses a RUNTIME_REQUIREMENTS string: key=value pairs separated by ';', where the value of
// desc is a bracketed list of key=value pairs. Keys are lower-case [a-z0-9_]; values are [A-Za-z0-9._+-]; no key
// appears twice at one level.
func ParseRuntimeRequirements(s string) (RuntimeRequirements, error) {
	if len(s) > maxRuntimeRequirementsLen {
		return RuntimeRequirements{}, fmt.Errorf("%w: %d bytes, at most %d", ErrRuntimeRequirements, len(s),
			maxRuntimeRequirementsLen)
	}
	rr := RuntimeRequirements{Top: map[string]string{}}
	rest := s
	for rest != "" {
		var item string
		// desc=[...] may contain ';', so it is cut at its closing bracket.
		if strings.HasPrefix(rest, "desc=[") {
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return RuntimeRequirements{}, fmt.Errorf("%w: desc=[ is not closed", ErrRuntimeRequirements)
			}
			item, rest = rest[:end+1], rest[end+1:]
			if rest != "" {
				if rest[0] != ';' {
					return RuntimeRequirements{}, fmt.Errorf("%w: want ';' after desc=[...], got %q",
						ErrRuntimeRequirements, rest[0])
				}
				rest = rest[1:]
				if rest == "" {
					return RuntimeRequirements{}, fmt.Errorf("%w: trailing ';'", ErrRuntimeRequirements)
				}
			}
		} else {
			var found bool
			item, rest, found = strings.Cut(rest, ";")
			if found && rest == "" {
				return RuntimeRequirements{}, fmt.Errorf("%w: trailing ';'", ErrRuntimeRequirements)
			}
		}
		key, value, ok := strings.Cut(item, "=")
		if !ok {
			return RuntimeRequirements{}, fmt.Errorf("%w: %q is not key=value", ErrRuntimeRequirements, item)
		}
		if key == "desc" {
			if rr.Desc != nil {
				return RuntimeRequirements{}, fmt.Errorf("%w: key %q repeated", ErrRuntimeRequirements, key)
			}
			if len(value) < 2 || value[0] != '[' || value[len(value)-1] != ']' {
				return RuntimeRequirements{}, fmt.Errorf("%w: desc value %q is not bracket-enclosed",
					ErrRuntimeRequirements, value)
			}
			desc, err := ParseDescriptor(value[1 : len(value)-1])
			if err != nil {
				return RuntimeRequirements{}, err
			}
			rr.Desc = desc
			continue
		}
		if err := addPair(rr.Top, key, value); err != nil {
			return RuntimeRequirements{}, err
		}
	}
	if len(rr.Top) == 0 && rr.Desc == nil {
		return RuntimeRequirements{}, fmt.Errorf("%w: empty", ErrRuntimeRequirements)
	}
	if err := rr.validateKnown(); err != nil {
		return RuntimeRequirements{}, err
	}
	return rr, nil
}

// ParseDescriptor parses the inside of desc=[...] ("compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10"), which is
// also what a metadata 2.6+ trailer stores as its compatibility descriptor.
func ParseDescriptor(s string) (map[string]string, error) {
	if len(s) > maxRuntimeRequirementsLen {
		return nil, fmt.Errorf("%w: descriptor of %d bytes, at most %d", ErrRuntimeRequirements, len(s),
			maxRuntimeRequirementsLen)
	}
	desc := map[string]string{}
	if s == "" {
		return desc, nil
	}
	for item := range strings.SplitSeq(s, ";") {
		key, value, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%w: %q in desc is not key=value", ErrRuntimeRequirements, item)
		}
		if err := addPair(desc, key, value); err != nil {
			return nil, err
		}
	}
	if err := (RuntimeRequirements{Desc: desc}).validateKnown(); err != nil {
		return nil, err
	}
	return desc, nil
}

func addPair(m map[string]string, key, value string) error {
	if !validToken(key, "abcdefghijklmnopqrstuvwxyz0123456789_") {
		return fmt.Errorf("%w: bad key %q", ErrRuntimeRequirements, key)
	}
	if !validToken(value, tokenChars) {
		return fmt.Errorf("%w: bad value %q for key %q", ErrRuntimeRequirements, value, key)
	}
	if _, dup := m[key]; dup {
		return fmt.Errorf("%w: key %q repeated", ErrRuntimeRequirements, key)
	}
	if len(m) >= maxRuntimeRequirementKeys {
		return fmt.Errorf("%w: more than %d keys", ErrRuntimeRequirements, maxRuntimeRequirementKeys)
	}
	m[key] = value
	return nil
}

const tokenChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-"

func validToken(s, allowed string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(allowed, s[i]) < 0 {
			return false
		}
	}
	return true
}

// versionKeys says how many components a known key's version value has (0: 1 to 4).
var versionKeys = map[string]int{"meta": 2, "ov": 3, "compiler": 2, "elf": 0, "mi": 0}

// numberKeys are known keys whose values are decimal numbers.
var numberKeys = []string{"npu", "t"}

func (rr RuntimeRequirements) validateKnown() error {
	for _, m := range []map[string]string{rr.Top, rr.Desc} {
		for key, want := range versionKeys {
			if v, ok := m[key]; ok {
				if _, err := parseVersion(v, want); err != nil {
					return fmt.Errorf("%w: %s: %w", ErrRuntimeRequirements, key, err)
				}
			}
		}
		for _, key := range numberKeys {
			if v, ok := m[key]; ok && strings.TrimLeft(v, "0123456789") != "" {
				return fmt.Errorf("%w: %s=%q is not a decimal number", ErrRuntimeRequirements, key, v)
			}
		}
	}
	return nil
}

// String renders the canonical form: meta, ov, the other top-level keys sorted, then desc=[...] with its keys
// sorted; known version values in canonical spelling.
func (rr RuntimeRequirements) String() string {
	var b strings.Builder
	sep := func() {
		if b.Len() > 0 {
			b.WriteByte(';')
		}
	}
	keys := slices.Sorted(maps.Keys(rr.Top))
	slices.SortStableFunc(keys, func(a, b string) int { return topRank(a) - topRank(b) })
	for _, k := range keys {
		sep()
		b.WriteString(k + "=" + canonValue(k, rr.Top[k]))
	}
	if rr.Desc != nil {
		sep()
		b.WriteString("desc=[" + descString(rr.Desc) + "]")
	}
	return b.String()
}

func descString(desc map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(desc)) {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(k + "=" + canonValue(k, desc[k]))
	}
	return b.String()
}

func topRank(k string) int {
	switch k {
	case "meta":
		return 0
	case "ov":
		return 1
	}
	return 2
}

func canonValue(key, value string) string {
	if want, ok := versionKeys[key]; ok {
		return normVersion(value, want)
	}
	if slices.Contains(numberKeys, key) {
		if t := strings.TrimLeft(value, "0"); t != "" {
			return t
		}
		return "0"
	}
	return value
}
