package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// cacheEntry is a valid cache entry of a manifest (its blob is the model's xml blob: any canonical CID will do).
func cacheEntry(m *Manifest, name string) CacheEntry {
	return CacheEntry{Name: name, Build: "2026.1.0-20000-0123456789a-releases/2026/1", Size: 4096,
		SHA256: strings.Repeat("ab", 32), Blob: m.Model.Files[0].Blob}
}

// TestCacheEntriesValidate: the cache entries a manifest names are checked like its files: names OpenVINO
// writes (never a path), a build string, size, digest and canonical CID, sorted and distinct, at most 64.
func TestCacheEntriesValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(m *Manifest)
		ok     bool
	}{
		{"two entries", func(m *Manifest) {}, true},
		{"same name, two builds", func(m *Manifest) { m.CacheEntries[1].Name, m.CacheEntries[1].Build = "1.blob", "2026.1.0-z" }, true},
		{"path in the name", func(m *Manifest) { m.CacheEntries[0].Name = "../1.blob" }, false},
		{"absolute name", func(m *Manifest) { m.CacheEntries[0].Name = "/tmp/1.blob" }, false},
		{"hidden temp name", func(m *Manifest) { m.CacheEntries[0].Name = ".npu-agent-1.blob.tmp-x" }, false},
		{"leading zero", func(m *Manifest) { m.CacheEntries[0].Name = "01.blob" }, false},
		{"empty build", func(m *Manifest) { m.CacheEntries[0].Build = "" }, false},
		{"newline in build", func(m *Manifest) { m.CacheEntries[0].Build = "2026.1.0\nx" }, false},
		{"build of 257 bytes", func(m *Manifest) { m.CacheEntries[0].Build = strings.Repeat("b", 257) }, false},
		{"size 0", func(m *Manifest) { m.CacheEntries[0].Size = 0 }, false},
		{"size over 64 GiB", func(m *Manifest) { m.CacheEntries[0].Size = 64<<30 + 1 }, false},
		{"upper-case sha256", func(m *Manifest) { m.CacheEntries[0].SHA256 = strings.Repeat("AB", 32) }, false},
		{"blob not a CID", func(m *Manifest) { m.CacheEntries[0].Blob = "x" }, false},
		{"unsorted", func(m *Manifest) { e := m.CacheEntries; e[0], e[1] = e[1], e[0] }, false},
		{"duplicate", func(m *Manifest) { m.CacheEntries[1] = m.CacheEntries[0] }, false},
		{"65 entries", func(m *Manifest) {
			m.CacheEntries = nil
			for i := range MaxCacheEntries + 1 {
				m.CacheEntries = append(m.CacheEntries, cacheEntry(m, string(rune('1'+i%9))+strings.Repeat("0", i/9)+".blob"))
			}
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := testManifest(t, "detector", 1, "<net/>", "weights")
			m.CacheEntries = []CacheEntry{cacheEntry(m, "1.blob"), cacheEntry(m, "2.blob")}
			tc.change(m)
			err := m.Validate()
			if tc.ok != (err == nil) || err != nil && !errors.Is(err, ErrInvalidManifest) {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
			if _, err := Sign(m, testKey(1)); tc.ok != (err == nil) {
				t.Errorf("Sign err = %v", err)
			}
		})
	}
}

// TestCacheEntriesSigned: the signature covers the cache entries; an entry swapped in after signing (another
// blob under the same name, or a second entry) fails verification, and a manifest without entries encodes as
// before (no cache_entries field).
func TestCacheEntriesSigned(t *testing.T) {
	t.Parallel()
	m := testManifest(t, "detector", 1, "<net/>", "weights")
	plain, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(plain, []byte("cache_entries")) {
		t.Errorf("a manifest without cache entries encodes the field: %s", plain)
	}
	m.CacheEntries = []CacheEntry{cacheEntry(m, "1.blob")}
	signed := mustSign(t, m, testKey(1))
	trust := trustOf(t, 1, testKey(1))
	got, err := Verify(signed, trust, now)
	if err != nil || len(got.CacheEntries) != 1 || got.CacheEntries[0] != m.CacheEntries[0] {
		t.Fatalf("Verify = %+v, %v", got, err)
	}
	var env envelope
	if err := json.Unmarshal(signed, &env); err != nil {
		t.Fatal(err)
	}
	for _, change := range []func(m *Manifest){
		func(m *Manifest) { m.CacheEntries[0].Blob = m.Model.Files[1].Blob },
		func(m *Manifest) { m.CacheEntries = append(m.CacheEntries, cacheEntry(m, "2.blob")) },
		func(m *Manifest) { m.CacheEntries[0].Build = "2026.1.0-other" },
	} {
		t2 := *m
		t2.CacheEntries = append([]CacheEntry(nil), m.CacheEntries...)
		change(&t2)
		forged := env
		forged.Payload = rawPayload(t, &t2)
		b, err := json.Marshal(forged)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(b, trust, now); !errors.Is(err, ErrBadSignature) {
			t.Errorf("tampered cache entries: err %v, want ErrBadSignature", err)
		}
	}
}
