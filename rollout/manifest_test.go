package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multibase"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

func TestSignVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	m := testManifest(t, "detector", 3, "<net/>", "weights")
	m.Created = m.Created.Add(500 * time.Millisecond).In(time.FixedZone("CET", 3600)) // normalised by Sign
	signed := mustSign(t, m, testKey(1))
	got, err := Verify(signed, trustOf(t, 1, testKey(1)), now)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "detector" || got.Version != 3 || got.Model.ID != m.Model.ID {
		t.Fatalf("Verify = %+v", got)
	}
	if want := now.Add(-time.Hour); !got.Created.Equal(want) || got.Created.Location() != time.UTC {
		t.Errorf("created = %v, want %v in UTC", got.Created, want)
	}
	ids, err := got.ProfileIDs()
	if err != nil || len(ids) != 1 || !strings.HasPrefix(ids[0], "bafkrei") {
		t.Errorf("ProfileIDs = %v, %v", ids, err)
	}
	// The signed form is deterministic: signing the decoded manifest again gives the same bytes.
	if again := mustSign(t, got, testKey(1)); !bytes.Equal(again, signed) {
		t.Errorf("re-signing changed the bytes:\n%s\n%s", signed, again)
	}
}

// The canonical payload is normative (docs/design.md section 8): pin one so an accidental change of the encoding fails.
func TestCanonicalGolden(t *testing.T) {
	t.Parallel()
	m := &Manifest{
		Name:    "kiosk-detector",
		Version: 7,
		Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Expires: time.Date(2026, 4, 2, 3, 4, 5, 0, time.UTC),
		Model:   testSource(t, "hello\n", "w"),
		Profiles: []compile.Profile{
			{Device: "NPU", Properties: map[string]string{"NPU_TILES": "2", "PERFORMANCE_HINT": "LATENCY"}, Shapes: map[string][]int64{"x": {1, 3}}},
		},
		Selector: map[string]string{"tag:site": "berlin", "arch": "4000"},
	}
	got, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"kiosk-detector","version":7,"created":"2026-01-02T03:04:05Z","expires":"2026-04-02T03:04:05Z",` +
		`"model":{"id":"` + m.Model.ID + `","files":[` +
		`{"role":"bin","name":"det.bin","size":1,"sha256":"` + m.Model.Files[0].SHA256 + `","blob":"` + m.Model.Files[0].Blob + `"},` +
		`{"role":"xml","name":"det.xml","size":6,"sha256":"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03","blob":"` + m.Model.Files[1].Blob + `"}]},` +
		`"profiles":[{"device":"NPU","properties":{"NPU_TILES":"2","PERFORMANCE_HINT":"LATENCY"},"shapes":{"x":[1,3]}}],` +
		`"selector":{"arch":"4000","tag:site":"berlin"}}`
	if string(got) != want {
		t.Fatalf("canonical payload\n got %s\nwant %s", got, want)
	}
}

func TestManifestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(m *Manifest)
		want   error
	}{
		{"empty name", func(m *Manifest) { m.Name = "" }, ErrInvalidManifest},
		{"upper-case name", func(m *Manifest) { m.Name = "Detector" }, ErrInvalidManifest},
		{"name with slash", func(m *Manifest) { m.Name = "a/b" }, ErrInvalidManifest},
		{"name starting with dot", func(m *Manifest) { m.Name = ".x" }, ErrInvalidManifest},
		{"name of 65", func(m *Manifest) { m.Name = strings.Repeat("a", 65) }, ErrInvalidManifest},
		{"version 0", func(m *Manifest) { m.Version = 0 }, ErrInvalidManifest},
		{"no expiry", func(m *Manifest) { m.Expires = time.Time{} }, ErrInvalidManifest},
		{"expires before created", func(m *Manifest) { m.Expires = m.Created }, ErrInvalidManifest},
		{"no profiles", func(m *Manifest) { m.Profiles = nil }, ErrInvalidManifest},
		{"33 profiles", func(m *Manifest) {
			m.Profiles = nil
			for i := range MaxProfiles + 1 {
				m.Profiles = append(m.Profiles, compile.Profile{Device: "NPU", Shapes: map[string][]int64{"x": {int64(i + 1)}}})
			}
		}, ErrInvalidManifest},
		{"profile not canonical", func(m *Manifest) { m.Profiles[0].Device = "npu" }, ErrInvalidManifest},
		{"profile runtime-only key", func(m *Manifest) { m.Profiles[0].Properties["CACHE_DIR"] = "/x" }, ErrInvalidManifest},
		{"profile dynamic shape", func(m *Manifest) { m.Profiles[0].Shapes = map[string][]int64{"x": {-1}} }, ErrInvalidManifest},
		{"duplicate profile", func(m *Manifest) { m.Profiles = append(m.Profiles, m.Profiles[0]) }, ErrInvalidManifest},
		{"unknown selector key", func(m *Manifest) { m.Selector["colour"] = "red" }, ErrInvalidManifest},
		{"bad tag name", func(m *Manifest) { m.Selector["tag:Site"] = "x" }, ErrInvalidManifest},
		{"empty selector value", func(m *Manifest) { m.Selector["os"] = "" }, ErrInvalidManifest},
		{"control in selector value", func(m *Manifest) { m.Selector["os"] = "linux\n" }, ErrInvalidManifest},
		{"17 selector entries", func(m *Manifest) {
			for i := range MaxSelector {
				m.Selector["tag:t"+string(rune('a'+i))] = "x"
			}
		}, ErrInvalidManifest},
		{"model id of other files", func(m *Manifest) { m.Model.Files[0].SHA256 = strings.Repeat("0", 64) }, ErrSourceMismatch},
		{"model id of other size", func(m *Manifest) { m.Model.Files[0].Size++ }, ErrSourceMismatch},
		{"model id not a CID", func(m *Manifest) { m.Model.ID = "detector-v1" }, ErrInvalidManifest},
		{"blob CID in base16", func(m *Manifest) {
			c, _ := cid.Decode(m.Model.Files[0].Blob)
			m.Model.Files[0].Blob, _ = c.StringOfBase(multibase.Base16)
		}, ErrInvalidManifest},
		{"blob CID v0", func(m *Manifest) { m.Model.Files[0].Blob = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG" }, ErrInvalidManifest},
		{"missing bin", func(m *Manifest) { m.Model.Files = m.Model.Files[1:] }, ErrInvalidManifest},
		{"files not sorted", func(m *Manifest) { f := m.Model.Files; f[0], f[1] = f[1], f[0] }, ErrInvalidManifest},
		{"IR stems differ", func(m *Manifest) { m.Model.Files[0].Name = "other.bin" }, ErrInvalidManifest},
		{"file name with path", func(m *Manifest) { m.Model.Files[0].Name = "../det.bin" }, ErrInvalidManifest},
		{"file name wrong extension", func(m *Manifest) { m.Model.Files[0].Name = "det.xml" }, ErrInvalidManifest},
		{"upper-case sha256", func(m *Manifest) { m.Model.Files[0].SHA256 = strings.ToUpper(m.Model.Files[0].SHA256) }, ErrInvalidManifest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := testManifest(t, "detector", 1, "<net/>", "weights")
			tc.change(m)
			err := m.Validate()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if _, err := Sign(m, testKey(1)); !errors.Is(err, tc.want) {
				t.Errorf("Sign err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSelects(t *testing.T) {
	t.Parallel()
	fp := compat.Fingerprint{Arch: "4000", OS: "linux", CPUArch: "amd64", MaxTiles: 2, CompilerType: "mlir"}
	tags := map[string]string{"site": "berlin"}
	tests := []struct {
		sel  map[string]string
		want bool
	}{
		{nil, true},
		{map[string]string{"arch": "4000"}, true},
		{map[string]string{"arch": "3720"}, false},
		{map[string]string{"arch": "4000", "tag:site": "berlin"}, true},
		{map[string]string{"arch": "4000", "tag:site": "paris"}, false},
		{map[string]string{"tag:line": "3"}, false}, // the agent has no such tag
		{map[string]string{"max_tiles": "2"}, true},
		{map[string]string{"compiler_type": "PLUGIN"}, true}, // normalised: MLIR is PLUGIN
		{map[string]string{"firmware_mi": "11.4"}, false},    // unknown on this agent
	}
	for _, tc := range tests {
		m := testManifest(t, "detector", 1, "<net/>", "w")
		m.Selector = tc.sel
		if err := m.Validate(); err != nil {
			t.Fatalf("%v: %v", tc.sel, err)
		}
		if got := m.Selects(fp, tags); got != tc.want {
			t.Errorf("Selects(%v) = %v, want %v", tc.sel, got, tc.want)
		}
	}
}

func TestVerifySource(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	xml := filepath.Join(dir, "det.xml")
	if err := os.WriteFile(xml, []byte("<net/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "det.bin"), []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	fetched, err := compile.LoadModel(xml)
	if err != nil {
		t.Fatal(err)
	}
	m := testManifest(t, "detector", 1, "<net/>", "weights")
	if err := VerifySource(m, fetched.Files); err != nil {
		t.Fatalf("matching source: %v", err)
	}
	other := testManifest(t, "detector", 1, "<net/>", "weightz")
	bad := []struct {
		name  string
		files []compile.ModelFile
	}{
		{"other bytes", other.Model.ModelFiles()},
		{"missing file", fetched.Files[:1]},
		{"extra file", append(append([]compile.ModelFile{}, fetched.Files...), compile.ModelFile{Role: compile.RoleONNX})},
		{"roles swapped", []compile.ModelFile{{Role: compile.RoleXML, Size: fetched.Files[0].Size, SHA256: fetched.Files[0].SHA256},
			{Role: compile.RoleBin, Size: fetched.Files[1].Size, SHA256: fetched.Files[1].SHA256}}},
	}
	for _, tc := range bad {
		if err := VerifySource(m, tc.files); !errors.Is(err, ErrSourceMismatch) {
			t.Errorf("%s: err = %v, want ErrSourceMismatch", tc.name, err)
		}
	}
}

func TestSourceFromModel(t *testing.T) {
	t.Parallel()
	want := testSource(t, "<net/>", "weights")
	cm := compile.Model{ID: want.ID, Files: want.ModelFiles()}
	blobs := map[string]string{compile.RoleXML: want.Files[1].Blob, compile.RoleBin: want.Files[0].Blob}
	got, err := SourceFromModel(cm, blobs)
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if !bytes.Equal(gb, wb) {
		t.Fatalf("SourceFromModel = %s, want %s", gb, wb)
	}
	delete(blobs, compile.RoleBin)
	if _, err := SourceFromModel(cm, blobs); !errors.Is(err, ErrInvalidManifest) {
		t.Fatalf("missing blob: err = %v", err)
	}
}

func TestCosignThreshold(t *testing.T) {
	t.Parallel()
	m := testManifest(t, "detector", 1, "<net/>", "w")
	two := trustOf(t, 2, testKey(1), testKey(2), testKey(3))
	one := mustSign(t, m, testKey(1))
	if _, err := Verify(one, two, now); !errors.Is(err, ErrThreshold) {
		t.Fatalf("one of two: err = %v, want ErrThreshold", err)
	}
	both := mustSign(t, m, testKey(1), testKey(2))
	if _, err := Verify(both, two, now); err != nil {
		t.Fatalf("two of two: %v", err)
	}
	// Cosigning again with the same key replaces its signature instead of adding one.
	again, err := Cosign(both, testKey(2))
	if err != nil || !bytes.Equal(again, both) {
		t.Fatalf("cosign twice changed the envelope: %v", err)
	}
	// A valid pair plus a forged third signature still passes: forged signatures do not count, they do not veto.
	var env envelope
	if err := json.Unmarshal(both, &env); err != nil {
		t.Fatal(err)
	}
	forged := sign(testKey(3), env.Payload)
	forged.Sig[0] ^= 1
	env.Signatures = append(env.Signatures, forged)
	withForged, _ := json.Marshal(env)
	st, err := accept(State{}, withForged, two, now)
	if err != nil {
		t.Fatalf("valid pair with a forged third: %v", err)
	}
	// A relay that puts a bad signature under a signer's key ID in front of the real one does not hide it.
	shadowed := editEnvelope(t, both, func(e *envelope) {
		bad := e.Signatures[0]
		bad.Sig = append([]byte(nil), bad.Sig...)
		bad.Sig[0] ^= 1
		e.Signatures = append([]Signature{bad}, e.Signatures...)
	})
	if _, err := Verify(shadowed, two, now); err != nil {
		t.Fatalf("valid pair behind a bad signature with the same key id: %v", err)
	}
	// What is stored and re-served carries only the signatures that verified.
	var stored envelope
	if err := json.Unmarshal(st.Current.Signed, &stored); err != nil || len(stored.Signatures) != 2 {
		t.Fatalf("stored signatures = %+v, %v", stored.Signatures, err)
	}
}

func TestReadSigned(t *testing.T) {
	t.Parallel()
	signed := mustSign(t, testManifest(t, "detector", 1, "<net/>", "w"), testKey(1))
	got, err := ReadSigned(bytes.NewReader(signed))
	if err != nil || !bytes.Equal(got, signed) {
		t.Fatalf("ReadSigned = %v", err)
	}
	if _, err := ReadSigned(endless{}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("endless input: err = %v, want ErrTooLarge", err)
	}
}

// endless is a reader that never ends, as a hostile stream would be.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '{'
	}
	return len(p), nil
}

func FuzzVerify(f *testing.F) {
	m := testManifest(f, "detector", 1, "<net/>", "w")
	f.Add(mustSign(f, m, testKey(1)))
	f.Add(mustSign(f, m, testKey(2)))
	f.Add(signRaw(f, rawPayload(f, m)))
	withCache := *m
	withCache.CacheEntries = []CacheEntry{cacheEntry(m, "1.blob")}
	f.Add(mustSign(f, &withCache, testKey(1)))
	f.Add([]byte(`{"type":"npu-agent/rollout-manifest/v1","payload":"e30=","signatures":[]}`))
	f.Add([]byte(`{}`))
	trust := trustOf(f, 1, testKey(1))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Verify(b, trust, now)
		if err != nil {
			if got != nil {
				t.Fatal("manifest returned with an error")
			}
			return
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("verified an invalid manifest: %v", err)
		}
		if _, err := Verify(b, trustOf(t, 1, testKey(2)), now); err == nil {
			t.Fatal("verified without the signing key")
		}
	})
}

func FuzzDecodePayload(f *testing.F) {
	m := testManifest(f, "detector", 1, "<net/>", "w")
	f.Add(rawPayload(f, m))
	canon, _ := m.Canonical()
	f.Add(canon)
	withCache := *m
	withCache.CacheEntries = []CacheEntry{cacheEntry(m, "1.blob"), cacheEntry(m, "2.blob")}
	canon, _ = withCache.Canonical()
	f.Add(canon)
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodePayload(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes canonically, and the canonical form decodes to the same bytes again.
		c, err := got.Canonical()
		if err != nil {
			t.Fatalf("decoded manifest does not encode: %v", err)
		}
		again, err := decodePayload(c)
		if err != nil {
			t.Fatalf("canonical form does not decode: %v", err)
		}
		if c2, _ := again.Canonical(); !bytes.Equal(c, c2) {
			t.Fatalf("canonical form is not stable:\n%s\n%s", c, c2)
		}
	})
}

func TestParseTags(t *testing.T) {
	t.Parallel()
	got, err := ParseTags([]string{"site=berlin", "line=3", "room.a=2nd floor"})
	if err != nil || len(got) != 3 || got["site"] != "berlin" || got["room.a"] != "2nd floor" {
		t.Fatalf("ParseTags = %v, %v", got, err)
	}
	for _, bad := range [][]string{{"site"}, {"=x"}, {"Site=x"}, {"site="}, {"site= x"}, {"site=a", "site=b"}, {"s=\x01"}} {
		if _, err := ParseTags(bad); err == nil {
			t.Errorf("ParseTags(%q) accepted", bad)
		}
	}
}
