package rollout

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/ovcache"
)

// Limits of a manifest, checked before anything is allocated from its content.
const (
	// MaxSignedSize bounds a signed manifest (envelope and payload); a real one is 2 to 8 KiB.
	MaxSignedSize = 64 << 10
	// MaxNameLen bounds a rollout name.
	MaxNameLen = 64
	// MaxProfiles bounds the profiles of one rollout.
	MaxProfiles = 32
	// MaxSelector bounds the selector's entries.
	MaxSelector = 16

	// MaxCacheEntries bounds the cache entries of one rollout.
	MaxCacheEntries = 64

	maxSignatures    = 16
	maxCacheBuild    = 256
	maxCacheSize     = 64 << 30
	maxSelectorValue = 128
	maxFileName      = 255
)

// ManifestType is the envelope type of a signed rollout manifest; it is also the signing context.
const ManifestType = "npu-agent/rollout-manifest/v1"

// Manifest errors. Verify and Acceptor.Accept wrap exactly one of them (ErrSourceMismatch may come wrapped in
// ErrInvalidManifest's message), so callers and tests can tell attacks apart with errors.Is.
var (
	ErrTooLarge        = errors.New("too large")
	ErrInvalidManifest = errors.New("invalid rollout manifest")
	ErrNonCanonical    = errors.New("rollout manifest is not in canonical form")
	ErrUnsigned        = errors.New("rollout manifest is not signed")
	ErrUnknownKey      = errors.New("rollout manifest is signed only by unknown keys")
	ErrBadSignature    = errors.New("rollout manifest has a bad signature")
	ErrThreshold       = errors.New("rollout manifest has too few trusted signatures")
	ErrExpired         = errors.New("rollout manifest has expired")
	ErrSourceMismatch  = errors.New("source model does not match its ID")
)

// Manifest is one version of a named rollout: which source model every selected agent prepares, with which
// profiles. It is the signed payload; see docs/design.md section 8 for the canonical encoding.
type Manifest struct {
	Name     string            `json:"name"`    // [a-z0-9][a-z0-9._-]*, at most 64 bytes
	Version  uint64            `json:"version"` // >= 1; each new version of a name must be higher
	Created  time.Time         `json:"created"` // UTC, whole seconds
	Expires  time.Time         `json:"expires"` // UTC, whole seconds, after Created
	Model    SourceModel       `json:"model"`
	Profiles []compile.Profile `json:"profiles"`           // canonical, 1 to 32, distinct
	Selector map[string]string `json:"selector,omitempty"` // every entry must match; empty selects every agent
	// CacheEntries are OpenVINO CACHE_DIR entries of this model that every selected agent whose application runs
	// their build writes into its shared cache directories (docs/design.md 10.6); sorted by name then build.
	CacheEntries []CacheEntry `json:"cache_entries,omitempty"`
}

// CacheEntry is one OpenVINO cache entry a rollout names: the file OpenVINO wrote (header and blob) as a blob
// of the swarm.
type CacheEntry struct {
	Name   string `json:"name"`   // <decimal uint64>.blob, OpenVINO's name for it
	Build  string `json:"build"`  // its OpenVINO build string (the header's ie_version)
	Size   int64  `json:"size"`   // bytes, >= 1
	SHA256 string `json:"sha256"` // 64 lower-case hex digits
	Blob   string `json:"blob"`   // CIDv1 raw sha2-256, default string form
}

// SourceModel is the source model of a rollout and where its files are in the swarm.
type SourceModel struct {
	ID    string       `json:"id"`    // compile.ModelID of Files
	Files []SourceFile `json:"files"` // sorted by role: bin and xml, or onnx
}

// SourceFile is one file of the source model.
type SourceFile struct {
	Role   string `json:"role"`   // compile.RoleXML, RoleBin or RoleONNX
	Name   string `json:"name"`   // base name to write it under; an IR's xml and bin share the stem
	Size   int64  `json:"size"`   // bytes, >= 1
	SHA256 string `json:"sha256"` // lower-case hex
	Blob   string `json:"blob"`   // CID of the blob holding the file's bytes in the blob store and the swarm
}

// Signature is one operator signature of a manifest's payload.
type Signature struct {
	KeyID string `json:"keyid"` // KeyID of the signing key, a hint: the key is looked up by it
	Sig   []byte `json:"sig"`   // ed25519 over ManifestType + "\n" + payload
}

// envelope is the signed form: the payload is the canonical JSON of a Manifest, carried as bytes (base64 in
// JSON) so that what is verified is exactly what was signed.
type envelope struct {
	Type       string      `json:"type"`
	Payload    []byte      `json:"payload"`
	Signatures []Signature `json:"signatures"`
}

var (
	nameRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$`)
	tagNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	keyIDRE    = regexp.MustCompile(`^[0-9a-f]{16}$`)
)

// TagPrefix starts a selector key that matches an agent tag (rollout.tags in the agent config) rather than a
// fingerprint field: "tag:site" matches the tag "site".
const TagPrefix = "tag:"

// ParseTags parses an agent's tags, "name=value" each (rollout.tags in the config), under the rules of selector
// tags: names of 1 to 64 of a-z 0-9 . _ -, values as selector values, no name twice.
func ParseTags(list []string) (map[string]string, error) {
	tags := make(map[string]string, len(list))
	for _, t := range list {
		name, value, ok := strings.Cut(t, "=")
		if !ok || !tagNameRE.MatchString(name) {
			return nil, fmt.Errorf("tag %.100q: want name=value with a name of 1 to 64 of a-z 0-9 . _ -", t)
		}
		if err := checkSelectorValue(value); err != nil {
			return nil, fmt.Errorf("tag %s: %w", name, err)
		}
		if _, dup := tags[name]; dup {
			return nil, fmt.Errorf("tag %s is given twice", name)
		}
		tags[name] = value
	}
	return tags, nil
}

func checkSelectorValue(v string) error {
	if v == "" || len(v) > maxSelectorValue || !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) ||
		strings.TrimSpace(v) != v {
		return fmt.Errorf("value %.140q: want 1 to %d printable bytes without surrounding spaces", v, maxSelectorValue)
	}
	return nil
}

// fingerprintFields are the selector keys naming fingerprint fields: compat.Fingerprint's JSON names.
var fingerprintFields = sync.OnceValue(func() map[string]bool {
	fields := map[string]bool{}
	t := reflect.TypeFor[compat.Fingerprint]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			fields[name] = true
		}
	}
	return fields
})

// SourceFromModel describes a loaded model (compile.LoadModel) for a manifest. blobs maps each file's role to the
// CID of the blob its bytes were stored under.
func SourceFromModel(m compile.Model, blobs map[string]string) (SourceModel, error) {
	s := SourceModel{ID: m.ID}
	for _, f := range m.Files {
		b, ok := blobs[f.Role]
		if !ok {
			return SourceModel{}, fmt.Errorf("%w: no blob CID for the %s file %s", ErrInvalidManifest, f.Role, f.Name)
		}
		s.Files = append(s.Files, SourceFile{Role: f.Role, Name: f.Name, Size: f.Size, SHA256: f.SHA256, Blob: b})
	}
	sort.Slice(s.Files, func(i, j int) bool { return s.Files[i].Role < s.Files[j].Role })
	if err := s.validate(); err != nil {
		return SourceModel{}, err
	}
	return s, nil
}

// ModelFiles returns the files in the form compile.ModelID reads.
func (s SourceModel) ModelFiles() []compile.ModelFile {
	files := make([]compile.ModelFile, len(s.Files))
	for i, f := range s.Files {
		files[i] = compile.ModelFile{Role: f.Role, Name: f.Name, Size: f.Size, SHA256: f.SHA256}
	}
	return files
}

// Validate checks every rule of docs/design.md section 8 that needs no key and no clock.
func (m *Manifest) Validate() error {
	if err := checkName(m.Name); err != nil {
		return err
	}
	if m.Version == 0 {
		return fmt.Errorf("%w: version 0; versions start at 1", ErrInvalidManifest)
	}
	if m.Created.IsZero() || m.Expires.IsZero() {
		return fmt.Errorf("%w: created and expires must be set", ErrInvalidManifest)
	}
	if !m.Expires.After(m.Created) {
		return fmt.Errorf("%w: expires %s is not after created %s", ErrInvalidManifest,
			m.Expires.Format(time.RFC3339), m.Created.Format(time.RFC3339))
	}
	if err := m.Model.validate(); err != nil {
		return err
	}
	if len(m.Profiles) == 0 || len(m.Profiles) > MaxProfiles {
		return fmt.Errorf("%w: %d profiles, want 1 to %d", ErrInvalidManifest, len(m.Profiles), MaxProfiles)
	}
	seen := make(map[string]int, len(m.Profiles))
	for i, p := range m.Profiles {
		canon, err := p.CanonicalJSON()
		if err != nil {
			return fmt.Errorf("%w: profile %d: %w", ErrInvalidManifest, i+1, err)
		}
		// A profile not in canonical form would hash to an ID other than the one agents compute.
		if got, err := json.Marshal(p); err != nil || !bytes.Equal(got, canon) {
			return fmt.Errorf("%w: profile %d is not canonical (want %s)", ErrInvalidManifest, i+1, canon)
		}
		id, _ := p.ID() // cannot fail: CanonicalJSON did not
		if j, dup := seen[id]; dup {
			return fmt.Errorf("%w: profiles %d and %d are the same (%s)", ErrInvalidManifest, j+1, i+1, id)
		}
		seen[id] = i
	}
	if err := checkSelector(m.Selector); err != nil {
		return err
	}
	return checkCacheEntries(m.CacheEntries)
}

// checkCacheEntries: at most MaxCacheEntries, each a valid name, build, size, digest and canonical CID, sorted
// by name then build without duplicates (so one list has one encoding).
func checkCacheEntries(es []CacheEntry) error {
	if len(es) > MaxCacheEntries {
		return fmt.Errorf("%w: %d cache entries, at most %d", ErrInvalidManifest, len(es), MaxCacheEntries)
	}
	for i, e := range es {
		if !ovcache.ValidName(e.Name) {
			return fmt.Errorf("%w: cache entry %d: name %q is not <decimal uint64>.blob", ErrInvalidManifest, i+1, e.Name)
		}
		if len(e.Build) > maxCacheBuild || !ovcache.ValidBuild(e.Build) || strings.ContainsFunc(e.Build, unicode.IsControl) {
			return fmt.Errorf("%w: cache entry %s: build string %q: want 1 to %d bytes without control characters", ErrInvalidManifest, e.Name, e.Build, maxCacheBuild)
		}
		if e.Size < 1 || e.Size > maxCacheSize {
			return fmt.Errorf("%w: cache entry %s: size %d: want 1 to %d", ErrInvalidManifest, e.Name, e.Size, int64(maxCacheSize))
		}
		if d, err := hex.DecodeString(e.SHA256); err != nil || len(d) != 32 || e.SHA256 != strings.ToLower(e.SHA256) {
			return fmt.Errorf("%w: cache entry %s: sha256 %q: want 64 lower-case hex digits", ErrInvalidManifest, e.Name, e.SHA256)
		}
		if _, err := parseCanonicalCID(e.Blob); err != nil {
			return fmt.Errorf("%w: cache entry %s: blob: %w", ErrInvalidManifest, e.Name, err)
		}
		if i > 0 {
			p := es[i-1]
			if p.Name > e.Name || p.Name == e.Name && p.Build >= e.Build {
				return fmt.Errorf("%w: cache entries must be sorted by name then build, without duplicates (%s after %s)", ErrInvalidManifest, e.Name, p.Name)
			}
		}
	}
	return nil
}

func checkName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLen || !nameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q: want 1 to %d of a-z 0-9 . _ - starting with a letter or digit",
			ErrInvalidManifest, name, MaxNameLen)
	}
	return nil
}

func (s SourceModel) validate() error {
	if _, err := parseCanonicalCID(s.ID); err != nil {
		return fmt.Errorf("%w: model id: %w", ErrInvalidManifest, err)
	}
	roles := make([]string, len(s.Files))
	for i, f := range s.Files {
		roles[i] = f.Role
	}
	var stemOf = func(f SourceFile) string { return strings.TrimSuffix(f.Name, filepath.Ext(f.Name)) }
	switch strings.Join(roles, ",") {
	case compile.RoleBin + "," + compile.RoleXML:
		if stemOf(s.Files[0]) != stemOf(s.Files[1]) {
			return fmt.Errorf("%w: IR files %q and %q do not share a base name (OpenVINO finds the .bin by it)",
				ErrInvalidManifest, s.Files[1].Name, s.Files[0].Name)
		}
	case compile.RoleONNX:
	default:
		return fmt.Errorf("%w: model files have roles [%s]; want [bin,xml] or [onnx], sorted", ErrInvalidManifest,
			strings.Join(roles, ","))
	}
	for _, f := range s.Files {
		if err := f.validate(); err != nil {
			return err
		}
	}
	id, err := compile.ModelID(s.ModelFiles())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidManifest, err)
	}
	if id != s.ID {
		return fmt.Errorf("%w: the manifest's files hash to model %s, not to its model id %s", ErrSourceMismatch, id, s.ID)
	}
	return nil
}

func (f SourceFile) validate() error {
	if len(f.Name) > maxFileName || !fileNameRE.MatchString(f.Name) {
		return fmt.Errorf("%w: %s file name %q: want a base name of A-Z a-z 0-9 . _ + -", ErrInvalidManifest, f.Role, f.Name)
	}
	if ext := strings.ToLower(filepath.Ext(f.Name)); ext != "."+f.Role {
		return fmt.Errorf("%w: %s file name %q must end in .%s", ErrInvalidManifest, f.Role, f.Name, f.Role)
	}
	if f.Size < 1 || f.Size > compile.MaxModelFileSize {
		return fmt.Errorf("%w: %s file size %d: want 1 to %d", ErrInvalidManifest, f.Role, f.Size, int64(compile.MaxModelFileSize))
	}
	if d, err := hex.DecodeString(f.SHA256); err != nil || len(d) != 32 || f.SHA256 != strings.ToLower(f.SHA256) {
		return fmt.Errorf("%w: %s file sha256 %q: want 64 lower-case hex digits", ErrInvalidManifest, f.Role, f.SHA256)
	}
	if _, err := parseCanonicalCID(f.Blob); err != nil {
		return fmt.Errorf("%w: %s file blob: %w", ErrInvalidManifest, f.Role, err)
	}
	return nil
}

// parseCanonicalCID accepts a CIDv1 raw sha2-256 in its default string form only, so each CID has one spelling.
func parseCanonicalCID(s string) (string, error) {
	c, err := blobstore.ParseCID(s)
	if err != nil {
		return "", err
	}
	if c.String() != s {
		return "", fmt.Errorf("%q is not in the default CIDv1 string form %s", s, c)
	}
	return s, nil
}

func checkSelector(sel map[string]string) error {
	if len(sel) > MaxSelector {
		return fmt.Errorf("%w: selector has %d entries, at most %d", ErrInvalidManifest, len(sel), MaxSelector)
	}
	for k, v := range sel {
		if tag, ok := strings.CutPrefix(k, TagPrefix); ok {
			if !tagNameRE.MatchString(tag) {
				return fmt.Errorf("%w: selector key %q: tag names are 1 to 64 of a-z 0-9 . _ -", ErrInvalidManifest, k)
			}
		} else if !fingerprintFields()[k] {
			return fmt.Errorf("%w: selector key %q is neither a fingerprint field nor %s<name>", ErrInvalidManifest, k, TagPrefix)
		}
		if err := checkSelectorValue(v); err != nil {
			return fmt.Errorf("%w: selector %s: %w", ErrInvalidManifest, k, err)
		}
	}
	return nil
}

// Selects reports whether an agent with this fingerprint and these tags is targeted: every selector entry must
// equal the agent's value (fingerprint fields in their normalised form, integers in decimal; a missing value
// never matches).
func (m *Manifest) Selects(fp compat.Fingerprint, tags map[string]string) bool {
	if len(m.Selector) == 0 {
		return true
	}
	fields := fingerprintValues(fp)
	for k, want := range m.Selector {
		var got string
		if tag, ok := strings.CutPrefix(k, TagPrefix); ok {
			got = tags[tag]
		} else {
			got = fields[k]
		}
		if got == "" || got != want {
			return false
		}
	}
	return true
}

// fingerprintValues maps fingerprint JSON names to their normalised values as strings.
func fingerprintValues(fp compat.Fingerprint) map[string]string {
	b, err := json.Marshal(fp.Normalize())
	if err != nil {
		return nil // a struct of strings and ints always marshals
	}
	raw := map[string]json.RawMessage{}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil
	}
	vals := make(map[string]string, len(raw))
	for k, r := range raw {
		var s string
		if json.Unmarshal(r, &s) == nil {
			vals[k] = s
		} else {
			vals[k] = string(r) // a number, already in decimal
		}
	}
	return vals
}

// ProfileIDs returns the IDs of the manifest's profiles, in manifest order.
func (m *Manifest) ProfileIDs() ([]string, error) {
	ids := make([]string, len(m.Profiles))
	for i, p := range m.Profiles {
		id, err := p.ID()
		if err != nil {
			return nil, fmt.Errorf("%w: profile %d: %w", ErrInvalidManifest, i+1, err)
		}
		ids[i] = id
	}
	return ids, nil
}

// Canonical validates m and returns its canonical encoding, the bytes operators sign: compact encoding/json of
// the Manifest (fields in declaration order, map keys sorted, times as RFC 3339 in UTC). Created and Expires are
// taken in UTC, truncated to whole seconds.
func (m *Manifest) Canonical() ([]byte, error) {
	c := m.normalized()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c.marshal()
}

func (m *Manifest) normalized() *Manifest {
	c := *m
	c.Created = m.Created.UTC().Truncate(time.Second)
	c.Expires = m.Expires.UTC().Truncate(time.Second)
	return &c
}

func (m *Manifest) marshal() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err) // a year outside 0..9999
	}
	return b, nil
}

// signedMessage is what a signature covers: the type, a newline, the payload. The type keeps a signature made
// for one kind of document from being valid for another.
func signedMessage(typ string, payload []byte) []byte {
	msg := make([]byte, 0, len(typ)+1+len(payload))
	msg = append(msg, typ...)
	msg = append(msg, '\n')
	return append(msg, payload...)
}

// Sign returns the signed manifest (the envelope of docs/design.md section 8) with one signature by priv. Created and
// Expires are taken in UTC, truncated to whole seconds.
func Sign(m *Manifest, priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: private key has %d bytes, want %d", ErrInvalidKey, len(priv), ed25519.PrivateKeySize)
	}
	payload, err := m.Canonical()
	if err != nil {
		return nil, err
	}
	return encodeEnvelope(&envelope{Type: ManifestType, Payload: payload, Signatures: []Signature{sign(priv, payload)}})
}

func sign(priv ed25519.PrivateKey, payload []byte) Signature {
	return Signature{
		KeyID: KeyID(priv.Public().(ed25519.PublicKey)),
		Sig:   ed25519.Sign(priv, signedMessage(ManifestType, payload)),
	}
}

// Cosign adds priv's signature to a signed manifest (for a threshold above 1), replacing an earlier signature by
// the same key. It does not check the other signatures; Verify does.
func Cosign(signed []byte, priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: private key has %d bytes, want %d", ErrInvalidKey, len(priv), ed25519.PrivateKeySize)
	}
	env, m, err := decodeSigned(signed)
	if err != nil {
		return nil, err
	}
	if err := checkCanonical(m, env.Payload); err != nil {
		return nil, err
	}
	s := sign(priv, env.Payload)
	sigs := []Signature{s}
	for _, o := range env.Signatures {
		if o.KeyID != s.KeyID {
			sigs = append(sigs, o)
		}
	}
	if len(sigs) > maxSignatures {
		return nil, fmt.Errorf("%w: %d signatures, at most %d", ErrInvalidManifest, len(sigs), maxSignatures)
	}
	env.Signatures = sigs
	return encodeEnvelope(env)
}

// encodeEnvelope sorts the signatures by key ID so an envelope has one encoding for a set of signatures.
func encodeEnvelope(env *envelope) ([]byte, error) {
	sort.Slice(env.Signatures, func(i, j int) bool { return env.Signatures[i].KeyID < env.Signatures[j].KeyID })
	b, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if len(b) > MaxSignedSize {
		return nil, fmt.Errorf("%w: %w: signed manifest is %d bytes, at most %d", ErrInvalidManifest, ErrTooLarge, len(b), MaxSignedSize)
	}
	return b, nil
}

// ReadSigned reads a signed manifest from r, failing once it passes MaxSignedSize (a file, a stream).
func ReadSigned(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSignedSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading rollout manifest: %w", err)
	}
	if len(b) > MaxSignedSize {
		return nil, fmt.Errorf("%w: %w: signed manifest is larger than %d bytes", ErrInvalidManifest, ErrTooLarge, MaxSignedSize)
	}
	return b, nil
}

// decodeStrict decodes exactly one JSON value into v, rejecting unknown fields and trailing data.
func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// decodeEnvelope checks the size, the structure and the signature list's form. It verifies nothing.
func decodeEnvelope(signed []byte) (*envelope, error) {
	if len(signed) > MaxSignedSize {
		return nil, fmt.Errorf("%w: %w: signed manifest is %d bytes, at most %d", ErrInvalidManifest, ErrTooLarge, len(signed), MaxSignedSize)
	}
	var env envelope
	if err := decodeStrict(signed, &env); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if env.Type != ManifestType {
		return nil, fmt.Errorf("%w: type %q, want %q", ErrInvalidManifest, env.Type, ManifestType)
	}
	if len(env.Payload) == 0 {
		return nil, fmt.Errorf("%w: empty payload", ErrInvalidManifest)
	}
	if len(env.Signatures) > maxSignatures {
		return nil, fmt.Errorf("%w: %d signatures, at most %d", ErrInvalidManifest, len(env.Signatures), maxSignatures)
	}
	for i, s := range env.Signatures {
		if !keyIDRE.MatchString(s.KeyID) {
			return nil, fmt.Errorf("%w: signature %d: key id %q is not 16 lower-case hex digits", ErrInvalidManifest, i+1, s.KeyID)
		}
		if len(s.Sig) != ed25519.SignatureSize {
			return nil, fmt.Errorf("%w: signature %d (key %s) has %d bytes, want %d", ErrInvalidManifest, i+1, s.KeyID, len(s.Sig), ed25519.SignatureSize)
		}
	}
	return &env, nil
}

// decodePayload decodes and validates a manifest payload. It does not check that it is canonical.
func decodePayload(payload []byte) (*Manifest, error) {
	var m Manifest
	if err := decodeStrict(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrInvalidManifest, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// decodeSigned decodes an envelope and its payload without checking any signature.
func decodeSigned(signed []byte) (*envelope, *Manifest, error) {
	env, err := decodeEnvelope(signed)
	if err != nil {
		return nil, nil, err
	}
	m, err := decodePayload(env.Payload)
	if err != nil {
		return nil, nil, err
	}
	return env, m, nil
}

// checkCanonical makes sure payload is the one encoding of m, so that equal manifests have equal bytes and a
// signature cannot cover a second spelling (reordered fields, other white space, duplicate keys, another offset).
// m must be valid (decodePayload checked it); normalising does not change validity.
func checkCanonical(m *Manifest, payload []byte) error {
	want, err := m.normalized().marshal()
	if err != nil {
		return err
	}
	if !bytes.Equal(want, payload) {
		return ErrNonCanonical
	}
	return nil
}

// verified is a manifest whose signatures met the threshold: its payload and the signatures that verified.
type verified struct {
	m       *Manifest
	payload []byte
	sigs    []Signature
}

// verify checks a signed manifest as Verify documents and returns it with its valid, trusted signatures only.
func verify(signed []byte, trust TrustConfig, now time.Time) (*verified, error) {
	if len(trust.keys) == 0 {
		return nil, ErrNoTrustedKeys
	}
	env, err := decodeEnvelope(signed)
	if err != nil {
		return nil, err
	}
	if len(env.Signatures) == 0 {
		return nil, ErrUnsigned
	}
	// Signatures before parsing: a payload no trusted key signed is never parsed.
	msg := signedMessage(ManifestType, env.Payload)
	var good []Signature
	var bad, unknown int
	valid := map[string]bool{} // one key counts once, however often it signs
	for _, s := range env.Signatures {
		pub, ok := trust.keys[s.KeyID]
		switch {
		case !ok:
			unknown++
		case valid[s.KeyID]:
		case ed25519.Verify(pub, msg, s.Sig):
			// A bad signature under the same key ID earlier in the list does not hide this one.
			valid[s.KeyID] = true
			good = append(good, s)
		default:
			bad++
		}
	}
	if len(good) < trust.threshold {
		switch {
		case len(good) > 0:
			return nil, fmt.Errorf("%w: %d of the %d needed", ErrThreshold, len(good), trust.threshold)
		case bad > 0:
			return nil, fmt.Errorf("%w: %d signature(s) by trusted keys do not verify", ErrBadSignature, bad)
		default:
			return nil, fmt.Errorf("%w: %d signature(s), none by a key in rollout.trusted_keys", ErrUnknownKey, unknown)
		}
	}
	m, err := decodePayload(env.Payload)
	if err != nil {
		return nil, err
	}
	if err := checkCanonical(m, env.Payload); err != nil {
		return nil, err
	}
	if !now.Before(m.Expires) {
		return nil, fmt.Errorf("%w: %s version %d expired at %s", ErrExpired, m.Name, m.Version, m.Expires.Format(time.RFC3339))
	}
	return &verified{m: m, payload: env.Payload, sigs: good}, nil
}

// Verify checks a signed manifest: size and form, at least trust.Threshold() distinct trusted keys with valid
// signatures over the payload, a valid payload in canonical form, and not expired at now. It does not check the
// version against earlier ones: Acceptor.Accept does.
func Verify(signed []byte, trust TrustConfig, now time.Time) (*Manifest, error) {
	v, err := verify(signed, trust, now)
	if err != nil {
		return nil, err
	}
	return v.m, nil
}

// VerifySource checks the source model fetched from the swarm (files as hashed on this host, e.g. from the blob
// store's Info or compile.LoadModel) against the manifest: the same size and sha256 per role, and so the model ID.
func VerifySource(m *Manifest, files []compile.ModelFile) error {
	if len(files) != len(m.Model.Files) {
		return fmt.Errorf("%w: %d files fetched, the manifest has %d", ErrSourceMismatch, len(files), len(m.Model.Files))
	}
	for _, want := range m.Model.Files {
		var got *compile.ModelFile
		for i := range files {
			if files[i].Role == want.Role {
				got = &files[i]
				break
			}
		}
		switch {
		case got == nil:
			return fmt.Errorf("%w: no %s file fetched", ErrSourceMismatch, want.Role)
		case got.Size != want.Size:
			return fmt.Errorf("%w: %s file is %d bytes, the manifest says %d", ErrSourceMismatch, want.Role, got.Size, want.Size)
		case got.SHA256 != want.SHA256:
			return fmt.Errorf("%w: %s file has sha256 %s, the manifest says %s", ErrSourceMismatch, want.Role, got.SHA256, want.SHA256)
		}
	}
	id, err := compile.ModelID(files)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSourceMismatch, err)
	}
	if id != m.Model.ID {
		return fmt.Errorf("%w: fetched files hash to model %s, the manifest says %s", ErrSourceMismatch, id, m.Model.ID)
	}
	return nil
}
