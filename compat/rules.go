package compat

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

//go:embed rules/rules.yaml
var defaultRulesYAML []byte

// ErrRules reports a rule table that does not load.
var ErrRules = errors.New("invalid compatibility rules")

// ErrIncompatible reports a blob the rules say a host cannot load; callers wrap it with the decision's reasons.
var ErrIncompatible = errors.New("blob is not compatible with this host")

// Match kinds of a rule.
const (
	MatchEqual               = "equal"
	MatchMI                  = "mi"
	MatchOpenVINO            = "openvino"
	MatchNotNewer            = "not_newer"
	MatchRuntimeRequirements = "runtime_requirements"
	MatchIgnore              = "ignore"
)

// What an unknown value on either side means.
const (
	UnknownReject   = "reject"
	UnknownAccept   = "accept"
	UnknownCompare  = "compare"
	UnknownFallback = "fallback"
)

// OpenVINO era matches.
const (
	ovPatch    = "patch"
	ovMinor    = "minor"
	ovNotNewer = "not_newer"
	ovEra      = "era"
)

// Blob kinds. KindModel is the default; "" means KindModel.
const (
	KindModel = "model"
	KindLLM   = "llm"
)

// Rules is a loaded, validated rule table (compat/rules/rules.yaml).
type Rules struct {
	Version  int `yaml:"version"`
	OpenVINO struct {
		Eras  []Era             `yaml:"eras"`
		Kinds map[string]string `yaml:"kinds"`
	} `yaml:"openvino"`
	Fields              map[string]FieldRule `yaml:"fields"`
	RuntimeRequirements map[string]FieldRule `yaml:"runtime_requirements"`

	eras []version // parsed Era.Since, ascending
}

// Era is the OpenVINO gate of importing hosts from Since on.
type Era struct {
	Since string `yaml:"since"`
	Match string `yaml:"match"`
	Note  string `yaml:"note"`
}

// FieldRule says how one field (or runtime-requirements key) of blob and host must relate.
type FieldRule struct {
	Match            string   `yaml:"match"`
	Unknown          string   `yaml:"unknown"`
	Fallback         string   `yaml:"fallback"`
	WhenCompilerType []string `yaml:"when_compiler_type"`
	Verified         bool     `yaml:"verified"`
	Note             string   `yaml:"note"`
}

// field is one fingerprint field as the rules see it: its canonical text and whether it is unknown.
type field struct {
	name string
	get  func(Fingerprint) (value string, unknown bool)
}

func str(get func(Fingerprint) string) func(Fingerprint) (string, bool) {
	return func(f Fingerprint) (string, bool) { v := get(f); return v, v == "" }
}

func num(get func(Fingerprint) int) func(Fingerprint) (string, bool) {
	return func(f Fingerprint) (string, bool) { v := get(f); return strconv.Itoa(v), v == 0 }
}

// fields lists every Fingerprint field in declaration order; the rule table must cover exactly these.
var fields = []field{
	{"openvino", str(func(f Fingerprint) string { return f.OpenVINO })},
	{"arch", str(func(f Fingerprint) string { return f.Arch })},
	{"driver_version", str(func(f Fingerprint) string { return f.DriverVersion })},
	{"compiler_type", str(func(f Fingerprint) string { return f.CompilerType })},
	{"compiler_version", str(func(f Fingerprint) string { return f.CompilerVersion })},
	{"max_tiles", num(func(f Fingerprint) int { return f.MaxTiles })},
	{"stepping", num(func(f Fingerprint) int { return f.Stepping })},
	{"firmware_mi", str(func(f Fingerprint) string { return f.FirmwareMI })},
	{"runtime_requirements", str(func(f Fingerprint) string { return f.RuntimeRequirements })},
	{"os", str(func(f Fingerprint) string { return f.OS })},
	{"cpu_arch", str(func(f Fingerprint) string { return f.CPUArch })},
	{"umd_version", str(func(f Fingerprint) string { return f.UMDVersion })},
	{"kernel_driver", str(func(f Fingerprint) string { return f.KernelDriver })},
}

func fieldByName(name string) (field, bool) {
	i := slices.IndexFunc(fields, func(f field) bool { return f.name == name })
	if i < 0 {
		return field{}, false
	}
	return fields[i], true
}

var defaultRules = sync.OnceValues(func() (*Rules, error) { return LoadRules(defaultRulesYAML) })

// DefaultRules returns the embedded rule table. It panics if the embedded table is invalid, which the package's
// tests rule out.
func DefaultRules() *Rules {
	r, err := defaultRules()
	if err != nil {
		panic(err)
	}
	return r
}

// LoadRules parses and validates a rule table (YAML, or JSON). Unknown keys, a missing or extra field rule, an
// unknown match or unknown-policy, and eras out of order are errors.
func LoadRules(data []byte) (*Rules, error) {
	if len(data) > 1<<20 {
		return nil, fmt.Errorf("%w: %d bytes, at most 1 MiB", ErrRules, len(data))
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	r := &Rules{}
	if err := dec.Decode(r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRules, err)
	}
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRules, err)
	}
	return r, nil
}

func (r *Rules) validate() error {
	if r.Version < 1 {
		return fmt.Errorf("version %d, want >= 1", r.Version)
	}
	if len(r.OpenVINO.Eras) == 0 {
		return errors.New("openvino.eras is empty")
	}
	r.eras = nil
	for i, e := range r.OpenVINO.Eras {
		v, err := parseVersion(e.Since, 3)
		if err != nil {
			return fmt.Errorf("openvino.eras[%d].since: %w", i, err)
		}
		if i == 0 && v.compare(version{0, 0, 0}) != 0 {
			return fmt.Errorf("openvino.eras[0].since is %s, want 0.0.0 so every host is covered", v)
		}
		if i > 0 && v.compare(r.eras[i-1]) <= 0 {
			return fmt.Errorf("openvino.eras[%d].since %s is not after %s", i, v, r.eras[i-1])
		}
		if !slices.Contains([]string{ovPatch, ovMinor, ovNotNewer}, e.Match) {
			return fmt.Errorf("openvino.eras[%d].match %q, want patch, minor or not_newer", i, e.Match)
		}
		r.eras = append(r.eras, v)
	}
	if _, ok := r.OpenVINO.Kinds[KindModel]; !ok {
		return fmt.Errorf("openvino.kinds has no %q", KindModel)
	}
	for k, m := range r.OpenVINO.Kinds {
		if !slices.Contains([]string{ovEra, ovPatch, ovMinor, ovNotNewer}, m) {
			return fmt.Errorf("openvino.kinds.%s is %q, want era, patch, minor or not_newer", k, m)
		}
	}
	for _, f := range fields {
		if _, ok := r.Fields[f.name]; !ok {
			return fmt.Errorf("fields.%s is missing: every fingerprint field needs a rule", f.name)
		}
	}
	for name, fr := range r.Fields {
		if _, ok := fieldByName(name); !ok {
			return fmt.Errorf("fields.%s: no such fingerprint field", name)
		}
		if err := fr.validate(name, true); err != nil {
			return err
		}
	}
	for name, fr := range r.RuntimeRequirements {
		if fr.Match == MatchRuntimeRequirements || fr.Unknown == UnknownFallback || len(fr.WhenCompilerType) > 0 {
			return fmt.Errorf("runtime_requirements.%s: runtime_requirements, fallback and when_compiler_type "+
				"apply to fingerprint fields only", name)
		}
		if err := fr.validate(name, false); err != nil {
			return err
		}
	}
	return nil
}

func (fr FieldRule) validate(name string, isField bool) error {
	matches := []string{MatchEqual, MatchMI, MatchOpenVINO, MatchNotNewer, MatchIgnore}
	if isField {
		matches = append(matches, MatchRuntimeRequirements)
	}
	if !slices.Contains(matches, fr.Match) {
		return fmt.Errorf("%s: match %q, want one of %s", name, fr.Match, strings.Join(matches, ", "))
	}
	if fr.Match == MatchIgnore {
		return nil
	}
	if !slices.Contains([]string{UnknownReject, UnknownAccept, UnknownCompare, UnknownFallback}, fr.Unknown) {
		return fmt.Errorf("%s: unknown %q, want reject, accept, compare or fallback", name, fr.Unknown)
	}
	if fr.Unknown == UnknownFallback {
		if _, ok := fieldByName(fr.Fallback); !ok || fr.Fallback == name {
			return fmt.Errorf("%s: fallback %q is not another fingerprint field", name, fr.Fallback)
		}
	} else if fr.Fallback != "" {
		return fmt.Errorf("%s: fallback set but unknown is %q", name, fr.Unknown)
	}
	for _, ct := range fr.WhenCompilerType {
		if !slices.Contains([]string{"", CompilerDriver, CompilerPlugin, CompilerPreferPlugin}, ct) {
			return fmt.Errorf("%s: when_compiler_type %q is not a compiler type", name, ct)
		}
	}
	return nil
}

// Decision is the outcome of a compatibility check. Reasons name the field and rule behind the outcome: every
// failed rule when incompatible; fallbacks taken when compatible.
type Decision struct {
	Compatible bool     `json:"compatible"`
	Reasons    []string `json:"reasons"`
}

func (d *Decision) fail(format string, args ...any) {
	d.Compatible = false
	d.Reasons = append(d.Reasons, fmt.Sprintf(format, args...))
}

func (d *Decision) note(format string, args ...any) {
	d.Reasons = append(d.Reasons, fmt.Sprintf(format, args...))
}

// Check decides whether a blob compiled on fingerprint blob can be imported on host, for a blob of the given kind
// (KindModel, KindLLM; "" is KindModel). It is pure: the same inputs always give the same decision.
func Check(r *Rules, blob, host Fingerprint, kind string) Decision {
	d := Decision{Compatible: true}
	if err := blob.Validate(); err != nil {
		d.fail("blob fingerprint: %v", err)
	}
	if err := host.Validate(); err != nil {
		d.fail("host fingerprint: %v", err)
	}
	ovMatch, err := r.kindMatch(kind)
	if err != nil {
		d.fail("%v", err)
	}
	if !d.Compatible {
		return d
	}
	return r.check(blob.Normalize(), host.Normalize(), ovMatch, kind)
}

// check applies every field rule to valid, normalised fingerprints.
func (r *Rules) check(blob, host Fingerprint, ovMatch, kind string) Decision {
	d := Decision{Compatible: true}
	for _, f := range fields {
		r.checkField(&d, f, r.Fields[f.name], blob, host, ovMatch, kind)
	}
	return d
}

func (r *Rules) kindMatch(kind string) (string, error) {
	if kind == "" {
		kind = KindModel
	}
	m, ok := r.OpenVINO.Kinds[kind]
	if !ok {
		return "", fmt.Errorf("kind: unknown blob kind %q", kind)
	}
	return m, nil
}

func (r *Rules) checkField(d *Decision, f field, fr FieldRule, blob, host Fingerprint, ovMatch, kind string) {
	if fr.Match == MatchIgnore {
		return
	}
	if len(fr.WhenCompilerType) > 0 && !slices.Contains(fr.WhenCompilerType, blob.CompilerType) {
		return
	}
	b, bUnknown := f.get(blob)
	h, hUnknown := f.get(host)
	if fr.Unknown != UnknownCompare && (bUnknown || hUnknown) {
		side := unknownSide(bUnknown, hUnknown)
		switch fr.Unknown {
		case UnknownAccept:
			return
		case UnknownReject:
			d.fail("%s: unknown on %s; the rule needs both%s", f.name, side, unverified(fr))
		case UnknownFallback:
			fb, _ := fieldByName(fr.Fallback)
			fbB, fbBUnknown := fb.get(blob)
			fbH, fbHUnknown := fb.get(host)
			switch {
			case fbBUnknown || fbHUnknown:
				d.fail("%s: unknown on %s, and fallback %s is unknown on %s", f.name, side, fb.name,
					unknownSide(fbBUnknown, fbHUnknown))
			case fbB != fbH:
				d.fail("%s: unknown on %s; fallback requires equal %s: blob %s, host %s", f.name, side, fb.name,
					fbB, fbH)
			default:
				d.note("%s: unknown on %s; fell back to equal %s (%s)", f.name, side, fb.name, fbB)
			}
		}
		return
	}
	switch fr.Match {
	case MatchEqual:
		if b != h {
			d.fail("%s: blob %s, host %s: must be equal%s", f.name, b, h, unverified(fr))
		}
	case MatchMI:
		if msg := checkMI(b, h); msg != "" {
			d.fail("%s: %s%s", f.name, msg, unverified(fr))
		}
	case MatchNotNewer:
		if msg := checkNotNewer(b, h); msg != "" {
			d.fail("%s: %s%s", f.name, msg, unverified(fr))
		}
	case MatchOpenVINO:
		if msg := r.checkOpenVINO(b, h, ovMatch, kind); msg != "" {
			d.fail("%s: %s%s", f.name, msg, unverified(fr))
		}
	case MatchRuntimeRequirements:
		rd := r.checkRuntimeRequirements(b, h, kind)
		if !rd.Compatible {
			d.Compatible = false
		}
		for _, reason := range rd.Reasons {
			d.Reasons = append(d.Reasons, f.name+": "+reason)
		}
	}
}

func unknownSide(blob, host bool) string {
	switch {
	case blob && host:
		return "blob and host"
	case blob:
		return "blob"
	}
	return "host"
}

func unverified(fr FieldRule) string {
	if fr.Verified {
		return ""
	}
	return " (unverified rule)"
}

// checkMI applies the mapped-inference rule: same major, blob minor <= host minor. "" means compatible.
func checkMI(blob, host string) string {
	b, errB := parseVersion(blob, 0)
	h, errH := parseVersion(host, 0)
	if errB != nil || errH != nil || len(b) < 2 || len(h) < 2 {
		return fmt.Sprintf("blob %q, host %q: want major.minor versions", blob, host)
	}
	if b[0] != h[0] {
		return fmt.Sprintf("blob %s needs firmware major %d, host has %s", blob, b[0], host)
	}
	if b[1] > h[1] {
		return fmt.Sprintf("blob %s needs firmware minor >= %d, host has %s", blob, b[1], host)
	}
	return ""
}

// checkNotNewer rejects a blob version newer than the host's. "" means compatible.
func checkNotNewer(blob, host string) string {
	b, errB := parseVersion(blob, 0)
	h, errH := parseVersion(host, 0)
	if errB != nil || errH != nil {
		return fmt.Sprintf("blob %q, host %q: want dotted versions", blob, host)
	}
	if b.compare(h) > 0 {
		return fmt.Sprintf("blob %s is newer than host %s", blob, host)
	}
	return ""
}

// era returns the OpenVINO era that applies to a host version.
func (r *Rules) era(host version) Era {
	i := len(r.eras) - 1
	for i > 0 && host.compare(r.eras[i]) < 0 {
		i--
	}
	return r.OpenVINO.Eras[i]
}

// checkOpenVINO applies the OpenVINO gate; ovMatch is the kind's match (era or a fixed one). "" means compatible.
func (r *Rules) checkOpenVINO(blob, host, ovMatch, kind string) string {
	b, errB := parseVersion(blob, 3)
	h, errH := parseVersion(host, 3)
	if errB != nil || errH != nil {
		return fmt.Sprintf("blob %q, host %q: want major.minor.patch", blob, host)
	}
	match, why := ovMatch, "kind "+kindName(kind)
	if ovMatch == ovEra {
		e := r.era(h)
		match, why = e.Match, "host "+host+" is in the era since "+e.Since
	}
	switch match {
	case ovPatch:
		if !b.prefixEqual(h, 3) {
			return fmt.Sprintf("%s needs equal major.minor.patch: blob %s, host %s", why, blob, host)
		}
	case ovMinor:
		if !b.prefixEqual(h, 2) {
			return fmt.Sprintf("%s needs equal major.minor: blob %s, host %s", why, blob, host)
		}
	case ovNotNewer:
		if b.compare(h) > 0 {
			return fmt.Sprintf("%s rejects blobs from a newer OpenVINO: blob %s, host %s", why, blob, host)
		}
	}
	return ""
}

func kindName(kind string) string {
	if kind == "" {
		return KindModel
	}
	return kind
}

// checkRuntimeRequirements compares a blob's RUNTIME_REQUIREMENTS string with the host's, key by key, with the
// rule table's runtime_requirements rules (Check, when both sides carry the string).
func (r *Rules) checkRuntimeRequirements(blob, host, kind string) Decision {
	d := Decision{Compatible: true}
	b, err := ParseRuntimeRequirements(blob)
	if err != nil {
		d.fail("blob: %v", err)
	}
	h, err := ParseRuntimeRequirements(host)
	if err != nil {
		d.fail("host: %v", err)
	}
	if !d.Compatible {
		return d
	}
	ovMatch, _ := r.kindMatch(kind)
	r.checkPairs(&d, "", b.Top, h.Top, ovMatch, kind)
	r.checkPairs(&d, "desc.", b.Desc, h.Desc, ovMatch, kind)
	return d
}

func (r *Rules) checkPairs(d *Decision, prefix string, blob, host map[string]string, ovMatch, kind string) {
	keys := make([]string, 0, len(blob)+len(host))
	for k := range blob {
		keys = append(keys, k)
	}
	for k := range host {
		if _, ok := blob[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		fr, ok := r.RuntimeRequirements[k]
		if !ok {
			fr, ok = r.RuntimeRequirements["*"]
			if !ok {
				continue
			}
		}
		if fr.Match == MatchIgnore {
			continue
		}
		bv, bok := blob[k]
		hv, hok := host[k]
		name := prefix + k
		if !bok || !hok {
			if fr.Unknown == UnknownReject {
				d.fail("%s: missing on %s; the rule needs both%s", name, unknownSide(!bok, !hok), unverified(fr))
			}
			continue
		}
		var msg string
		switch fr.Match {
		case MatchEqual:
			if canonValue(k, bv) != canonValue(k, hv) {
				msg = fmt.Sprintf("blob %s, host %s: must be equal", bv, hv)
			}
		case MatchMI:
			msg = checkMI(bv, hv)
		case MatchNotNewer:
			msg = checkNotNewer(bv, hv)
		case MatchOpenVINO:
			msg = r.checkOpenVINO(bv, hv, ovMatch, kind)
		}
		if msg != "" {
			d.fail("%s: %s%s", name, msg, unverified(fr))
		}
	}
}

// CheckBlob checks a blob's own trailer against host: the OpenVINO rule on the trailer's OpenVINO version, the
// compiler_version rule when the trailer records one, and, from metadata 2.6, the compatibility descriptor: its
// npu and mi keys against the host's arch and firmware_mi, and the whole runtime requirements against the host's
// RUNTIME_REQUIREMENTS when the host has one. The trailer is partial evidence: apart from the OpenVINO gate, a rule
// is applied only where both sides are known; Check on the producer's fingerprint decides the rest.
func CheckBlob(r *Rules, t *Trailer, host Fingerprint, kind string) Decision {
	d := Decision{Compatible: true}
	if t == nil {
		d.fail("trailer: none")
		return d
	}
	if err := host.Validate(); err != nil {
		d.fail("host fingerprint: %v", err)
	}
	ovMatch, err := r.kindMatch(kind)
	if err != nil {
		d.fail("%v", err)
	}
	if !d.Compatible {
		return d
	}
	host = host.Normalize()
	blob := Fingerprint{OpenVINO: t.OpenVINO.String(), CompilerVersion: t.CompilerVersionString()}
	var blobRR string
	if desc := strings.TrimRight(t.RuntimeRequirements, "\x00"); desc != "" {
		rr, err := parseDescriptorField(desc)
		if err != nil {
			d.fail("runtime_requirements: blob descriptor: %v", err)
			return d
		}
		if rr.Top == nil {
			rr.Top = map[string]string{}
		}
		rr.Top["meta"] = t.Metadata.String()
		rr.Top["ov"] = blob.OpenVINO
		blobRR = rr.String()
		blob.Arch = rr.Desc["npu"]
		blob.FirmwareMI = rr.Desc["mi"]
		if blob.CompilerVersion == "" {
			blob.CompilerVersion = normVersion(rr.Desc["compiler"], 2)
		}
	}
	if err := blob.Validate(); err != nil {
		d.fail("blob trailer: %v", err)
		return d
	}
	blob = blob.Normalize()
	for _, name := range []string{"openvino", "arch", "compiler_version", "firmware_mi"} {
		f, _ := fieldByName(name)
		fr := r.Fields[name]
		_, bUnknown := f.get(blob)
		_, hUnknown := f.get(host)
		if name != "openvino" && (bUnknown || hUnknown) {
			continue
		}
		if fr.Match == MatchMI || fr.Match == MatchEqual || fr.Match == MatchOpenVINO || fr.Match == MatchNotNewer {
			fr.WhenCompilerType = nil // the trailer does not say which compiler produced it
			r.checkField(&d, f, fr, blob, host, ovMatch, kind)
		}
	}
	if blobRR != "" && host.RuntimeRequirements != "" {
		rd := r.checkRuntimeRequirements(blobRR, host.RuntimeRequirements, kind)
		if !rd.Compatible {
			d.Compatible = false
		}
		for _, reason := range rd.Reasons {
			d.Reasons = append(d.Reasons, "runtime_requirements: "+reason)
		}
	}
	return d
}

// parseDescriptorField reads a trailer's compatibility descriptor: either the inside of desc=[...] (what OpenVINO
// writes) or, tolerated, a whole RUNTIME_REQUIREMENTS string.
func parseDescriptorField(s string) (RuntimeRequirements, error) {
	if desc, err := ParseDescriptor(s); err == nil {
		return RuntimeRequirements{Desc: desc}, nil
	}
	return ParseRuntimeRequirements(s)
}

// Class returns the compatibility class of f for blobs of the given kind: the hex sha256 of the values that must
// be EQUAL between a blob and its host under r (rule-table version, compiler type, every equal rule that applies
// to f's compiler type, the MI major, and the OpenVINO components the era of f fixes). Peers of one class can
// share one compile, but compatibility is not an equivalence: range rules (MI minor, OpenVINO not_newer) still
// decide within a class: the fleet single flight elects the compiler by rank (p2p/flight elect.go; the agent
// derives the rank from the fingerprint).
func Class(r *Rules, f Fingerprint, kind string) (string, error) {
	if err := f.Validate(); err != nil {
		return "", err
	}
	ovMatch, err := r.kindMatch(kind)
	if err != nil {
		return "", err
	}
	f = f.Normalize()
	key := []string{"rules=" + strconv.Itoa(r.Version), "kind=" + kindName(kind), "compiler_type=" + f.CompilerType}
	for _, fd := range fields {
		fr := r.Fields[fd.name]
		if len(fr.WhenCompilerType) > 0 && !slices.Contains(fr.WhenCompilerType, f.CompilerType) {
			continue
		}
		v, unknown := fd.get(f)
		if unknown && fr.Unknown == UnknownFallback {
			// Peers that fall back must agree on the fallback field instead.
			fb, _ := fieldByName(fr.Fallback)
			fv, _ := fb.get(f)
			key = append(key, fd.name+"=unknown", fb.name+"="+fv)
			continue
		}
		switch fr.Match {
		case MatchEqual:
			key = append(key, fd.name+"="+v)
		case MatchMI:
			major, _, _ := strings.Cut(v, ".")
			key = append(key, fd.name+".major="+major)
		case MatchOpenVINO:
			key = append(key, fd.name+"="+r.classOpenVINO(v, ovMatch))
		}
	}
	return hashStrings(key), nil
}

// classOpenVINO returns the part of the OpenVINO version that a host of version v requires equal.
func (r *Rules) classOpenVINO(v, ovMatch string) string {
	h, err := parseVersion(v, 3)
	if err != nil {
		return v // unknown: "" groups hosts that cannot import anything anyway
	}
	match := ovMatch
	if ovMatch == ovEra {
		e := r.era(h)
		match = e.Match + "@" + e.Since
	}
	switch {
	case strings.HasPrefix(match, ovPatch):
		return match + ":" + h.String()
	case strings.HasPrefix(match, ovMinor):
		return match + ":" + h[:2].String()
	}
	return match // not_newer: a range rule, decided within the class (Check, and the rank of the election)
}

// hashStrings hashes "k=v" parts; values are validated tokens without newlines, so joining is unambiguous.
func hashStrings(parts []string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\n")))
	return hex.EncodeToString(sum[:])
}
