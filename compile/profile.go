package compile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// Limits on a profile, checked before anything is allocated from its content.
const (
	MaxProfileFileSize = 64 << 10
	maxProperties      = 64
	maxShapes          = 64
	maxRank            = 16
	maxNameLen         = 256  // device, property key, input name
	maxValueLen        = 4096 // property value
	maxDim             = 1<<31 - 1
)

// Profile kinds.
const (
	KindModel = ""    // an ordinary model
	KindLLM   = "llm" // an LLM/NPUW pipeline blob: needs the exact OpenVINO version to import
)

// ErrInvalidProfile is returned for a profile that cannot be canonicalised.
var ErrInvalidProfile = errors.New("invalid profile")

// runtimeOnlyProperties never change the compiled blob, so they are dropped from the canonical profile (and never
// passed to the compiler): caching and logging knobs, the per-host device choice and import-time options. Every
// other key is kept, known or not: keeping an irrelevant key only costs an extra compile, dropping a relevant one
// would hand out a wrong blob. The keys OpenVINO itself hashes into its cache key (openvino-npu-facts.md) are
// never in this list.
var runtimeOnlyProperties = map[string]bool{
	"CACHE_DIR":              true, // where OpenVINO caches; also disables the driver cache
	"DEVICE_ID":              true, // which of several identical NPUs; per host
	"ENABLE_MMAP":            true, // how read_model maps the .bin
	"LOG_LEVEL":              true,
	"NPU_BYPASS_UMD_CACHING": true, // driver cache switch
	"WEIGHTS_PATH":           true, // import of weightless blobs only
}

// Profile says how a model is compiled: device, compile properties and static input shapes. Its ID hashes its
// canonical form (sorted keys, normalised values), so the same profile written two ways has one ID.
type Profile struct {
	Device     string             `json:"device"`
	Properties map[string]string  `json:"properties,omitempty"`
	Shapes     map[string][]int64 `json:"shapes,omitempty"`
	// Kind is "" for an ordinary model or "llm" for an LLM/NPUW pipeline blob (exact OpenVINO version needed).
	Kind string `json:"kind,omitempty"`
}

// Canonical returns p in canonical form: device upper-case; property keys trimmed and upper-case, runtime-only
// keys dropped, values trimmed and booleans spelt YES/NO; every shape static (all dims >= 1). Maps are sorted when
// encoded. It rejects what the compiler could not use rather than guessing.
func (p Profile) Canonical() (Profile, error) {
	c := Profile{Device: strings.ToUpper(strings.TrimSpace(p.Device)), Kind: strings.ToLower(strings.TrimSpace(p.Kind))}
	if c.Device == "" {
		return Profile{}, fmt.Errorf("%w: device is empty", ErrInvalidProfile)
	}
	if err := checkName("device", c.Device); err != nil {
		return Profile{}, err
	}
	if c.Kind != KindModel && c.Kind != KindLLM {
		return Profile{}, fmt.Errorf("%w: kind %q is not %q or %q", ErrInvalidProfile, p.Kind, KindModel, KindLLM)
	}
	if len(p.Properties) > maxProperties {
		return Profile{}, fmt.Errorf("%w: %d properties, at most %d", ErrInvalidProfile, len(p.Properties), maxProperties)
	}
	for k, v := range p.Properties {
		key, val, err := canonicalProperty(k, v)
		if err != nil {
			return Profile{}, err
		}
		if runtimeOnlyProperties[key] {
			continue
		}
		if c.Properties == nil {
			c.Properties = make(map[string]string, len(p.Properties))
		}
		if prev, dup := c.Properties[key]; dup && prev != val {
			return Profile{}, fmt.Errorf("%w: property %s given twice with different values", ErrInvalidProfile, key)
		}
		c.Properties[key] = val
	}
	if len(p.Shapes) > maxShapes {
		return Profile{}, fmt.Errorf("%w: %d shapes, at most %d", ErrInvalidProfile, len(p.Shapes), maxShapes)
	}
	for name, dims := range p.Shapes {
		n := strings.TrimSpace(name)
		if err := checkShape(n, dims); err != nil {
			return Profile{}, err
		}
		if c.Shapes == nil {
			c.Shapes = make(map[string][]int64, len(p.Shapes))
		}
		if _, dup := c.Shapes[n]; dup {
			return Profile{}, fmt.Errorf("%w: shape for input %q given twice", ErrInvalidProfile, n)
		}
		c.Shapes[n] = append([]int64(nil), dims...)
	}
	return c, nil
}

// CanonicalJSON is the canonical profile encoded as compact JSON (object keys in the order of the struct, map
// keys sorted, empty fields left out). It is what ID hashes.
func (p Profile) CanonicalJSON() ([]byte, error) {
	c, err := p.Canonical()
	if err != nil {
		return nil, err
	}
	return json.Marshal(c)
}

// ID is the CIDv1 (raw, sha2-256) of the canonical JSON.
func (p Profile) ID() (string, error) {
	b, err := p.CanonicalJSON()
	if err != nil {
		return "", err
	}
	return rawCID(b), nil
}

func canonicalProperty(k, v string) (string, string, error) {
	key := strings.ToUpper(strings.TrimSpace(k))
	if key == "" {
		return "", "", fmt.Errorf("%w: empty property key", ErrInvalidProfile)
	}
	if err := checkName("property key", key); err != nil {
		return "", "", err
	}
	val := strings.TrimSpace(v)
	if len(val) > maxValueLen {
		return "", "", fmt.Errorf("%w: property %s: value is %d bytes, at most %d", ErrInvalidProfile, key, len(val), maxValueLen)
	}
	if strings.IndexFunc(val, unicode.IsControl) >= 0 {
		return "", "", fmt.Errorf("%w: property %s: value contains a control character", ErrInvalidProfile, key)
	}
	// OpenVINO's NPU option parser spells booleans YES/NO; both spellings mean the same compile.
	switch strings.ToUpper(val) {
	case "YES", "TRUE":
		val = "YES"
	case "NO", "FALSE":
		val = "NO"
	}
	return key, val, nil
}

func checkName(what, s string) error {
	if len(s) > maxNameLen {
		return fmt.Errorf("%w: %s is %d bytes, at most %d", ErrInvalidProfile, what, len(s), maxNameLen)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }) {
		return fmt.Errorf("%w: %s %q contains a control or invalid character", ErrInvalidProfile, what, s)
	}
	return nil
}

func checkShape(name string, dims []int64) error {
	if name == "" {
		return fmt.Errorf("%w: shape with an empty input name", ErrInvalidProfile)
	}
	if err := checkName("input name", name); err != nil {
		return err
	}
	if len(dims) == 0 || len(dims) > maxRank {
		return fmt.Errorf("%w: input %q: rank %d, want 1 to %d", ErrInvalidProfile, name, len(dims), maxRank)
	}
	for _, d := range dims {
		if d < 1 || d > maxDim {
			return fmt.Errorf("%w: input %q: dimension %d is not static (the NPU needs every dimension >= 1)", ErrInvalidProfile, name, d)
		}
	}
	return nil
}

// ParseShape parses a CLI shape flag "name=d1,d2,..." (brackets around the dims are allowed). The name may itself
// contain '=' (tensor names are free-form), so the last '=' splits.
func ParseShape(s string) (string, []int64, error) {
	i := strings.LastIndexByte(s, '=')
	if i < 0 {
		return "", nil, fmt.Errorf("%w: shape %q: want name=d1,d2,...", ErrInvalidProfile, s)
	}
	name := strings.TrimSpace(s[:i])
	list := strings.TrimSpace(s[i+1:])
	list = strings.TrimSuffix(strings.TrimPrefix(list, "["), "]")
	if strings.TrimSpace(list) == "" {
		return "", nil, fmt.Errorf("%w: shape %q has no dimensions", ErrInvalidProfile, s)
	}
	parts := strings.Split(list, ",")
	if len(parts) > maxRank {
		return "", nil, fmt.Errorf("%w: shape %q: rank %d, at most %d", ErrInvalidProfile, s, len(parts), maxRank)
	}
	dims := make([]int64, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		d, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return "", nil, fmt.Errorf("%w: shape %q: dimension %q is not a number (dynamic dimensions such as -1 or ? cannot be compiled for the NPU)",
				ErrInvalidProfile, s, p)
		}
		dims = append(dims, d)
	}
	if err := checkShape(name, dims); err != nil {
		return "", nil, err
	}
	return name, dims, nil
}

// ParseProperty parses a CLI property flag "KEY=VALUE" into its canonical key and value. The first '=' splits,
// so values may contain '='.
func ParseProperty(s string) (string, string, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("%w: property %q: want KEY=VALUE", ErrInvalidProfile, s)
	}
	return canonicalProperty(k, v)
}

// profileFile is the on-disk profile. Property values may be written as strings, numbers or booleans.
type profileFile struct {
	Device     string                   `json:"device" yaml:"device"`
	Properties map[string]propertyValue `json:"properties" yaml:"properties"`
	Shapes     map[string][]int64       `json:"shapes" yaml:"shapes"`
	Kind       string                   `json:"kind" yaml:"kind"`
}

type propertyValue string

func (v *propertyValue) UnmarshalJSON(b []byte) error {
	var x any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&x); err != nil {
		return err
	}
	switch x := x.(type) {
	case string:
		*v = propertyValue(x)
	case json.Number:
		*v = propertyValue(x.String())
	case bool:
		*v = propertyValue(strconv.FormatBool(x))
	default:
		return fmt.Errorf("property value must be a string, number or boolean, not %s", b)
	}
	return nil
}

func (v *propertyValue) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: property value must be a scalar", n.Line)
	}
	*v = propertyValue(n.Value)
	return nil
}

// LoadProfile reads a profile file, JSON (.json) or YAML (.yaml, .yml; other extensions are sniffed: a leading
// '{' means JSON), rejects unknown fields and returns the canonical profile.
func LoadProfile(path string) (Profile, error) {
	f, err := os.Open(path)
	if err != nil {
		return Profile{}, fmt.Errorf("%w: %v", ErrInvalidProfile, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxProfileFileSize+1))
	if err != nil {
		return Profile{}, fmt.Errorf("%w: reading %s: %v", ErrInvalidProfile, path, err)
	}
	if len(b) > MaxProfileFileSize {
		return Profile{}, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalidProfile, path, MaxProfileFileSize)
	}
	var isJSON bool
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		isJSON = true
	case ".yaml", ".yml":
	default:
		isJSON = bytes.HasPrefix(bytes.TrimSpace(b), []byte("{"))
	}
	p, err := DecodeProfile(b, isJSON)
	if err != nil {
		return Profile{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// DecodeProfile decodes a profile document (JSON if isJSON, else YAML) and returns it canonical.
func DecodeProfile(b []byte, isJSON bool) (Profile, error) {
	if len(b) > MaxProfileFileSize {
		return Profile{}, fmt.Errorf("%w: document is larger than %d bytes", ErrInvalidProfile, MaxProfileFileSize)
	}
	var pf profileFile
	if isJSON {
		d := json.NewDecoder(bytes.NewReader(b))
		d.DisallowUnknownFields()
		if err := d.Decode(&pf); err != nil {
			return Profile{}, fmt.Errorf("%w: %v", ErrInvalidProfile, err)
		}
		if _, err := d.Token(); err != io.EOF {
			return Profile{}, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalidProfile)
		}
	} else {
		d := yaml.NewDecoder(bytes.NewReader(b))
		d.KnownFields(true)
		if err := d.Decode(&pf); err == io.EOF {
			return Profile{}, fmt.Errorf("%w: empty document", ErrInvalidProfile)
		} else if err != nil {
			return Profile{}, fmt.Errorf("%w: %v", ErrInvalidProfile, err)
		}
		var extra yaml.Node
		if err := d.Decode(&extra); err != io.EOF {
			return Profile{}, fmt.Errorf("%w: more than one YAML document", ErrInvalidProfile)
		}
	}
	p := Profile{Device: pf.Device, Shapes: pf.Shapes, Kind: pf.Kind}
	if len(pf.Properties) > 0 {
		p.Properties = make(map[string]string, len(pf.Properties))
		for k, v := range pf.Properties {
			p.Properties[k] = string(v)
		}
	}
	return p.Canonical()
}
