package rollout

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

// now is the fixed clock of these tests.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testSource is an IR model whose xml and bin hold these contents, each shared under a made-up blob CID.
func testSource(t testing.TB, xml, bin string) SourceModel {
	t.Helper()
	file := func(role, name, content string) SourceFile {
		sum := sha256.Sum256([]byte(content))
		return SourceFile{
			Role: role, Name: name, Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:]),
			Blob: blobstore.DigestCID(sha256.Sum256([]byte("blob of " + content))).String(),
		}
	}
	s := SourceModel{Files: []SourceFile{file(compile.RoleBin, "det.bin", bin), file(compile.RoleXML, "det.xml", xml)}}
	id, err := compile.ModelID(s.ModelFiles())
	if err != nil {
		t.Fatal(err)
	}
	s.ID = id
	return s
}

// testManifest is version v of rollout name over the model (xml, bin) with one NPU profile.
func testManifest(t testing.TB, name string, v uint64, xml, bin string) *Manifest {
	t.Helper()
	return &Manifest{
		Name:     name,
		Version:  v,
		Created:  now.Add(-time.Hour),
		Expires:  now.Add(30 * 24 * time.Hour),
		Model:    testSource(t, xml, bin),
		Profiles: []compile.Profile{{Device: "NPU", Properties: map[string]string{"PERFORMANCE_HINT": "LATENCY"}}},
		Selector: map[string]string{"arch": "4000"},
	}
}

func mustSign(t testing.TB, m *Manifest, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := Sign(m, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys[1:] {
		if b, err = Cosign(b, k); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// signRaw signs any payload, bypassing every check of Sign, as an attacker or a buggy publisher could.
func signRaw(t testing.TB, payload []byte, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	env := envelope{Type: ManifestType, Payload: payload, Signatures: []Signature{}}
	for _, k := range keys {
		env.Signatures = append(env.Signatures, sign(k, payload))
	}
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawPayload is m's JSON without validation or normalisation.
func rawPayload(t testing.TB, m *Manifest) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func trustOf(t testing.TB, threshold int, keys ...ed25519.PrivateKey) TrustConfig {
	t.Helper()
	var pubs []string
	for _, k := range keys {
		pubs = append(pubs, FormatPublicKey(k.Public().(ed25519.PublicKey)))
	}
	tc, err := NewTrustConfig(pubs, threshold)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// memKV is the test fake of KV. puts counts writes so a test can assert that nothing was stored.
type memKV struct {
	mu   sync.Mutex
	m    map[string][]byte
	puts int
	err  error // returned by Put when set
}

func newMemKV() *memKV { return &memKV{m: map[string][]byte{}} }

func (kv *memKV) Get(key string) ([]byte, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	v, ok := kv.m[key]
	if !ok {
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	return append([]byte(nil), v...), nil
}

func (kv *memKV) Put(key string, value []byte) error {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if kv.err != nil {
		return kv.err
	}
	kv.puts++
	kv.m[key] = append([]byte(nil), value...)
	return nil
}

func (kv *memKV) Keys(prefix string) ([]string, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	var keys []string
	for k := range kv.m {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

func (kv *memKV) snapshot() map[string][]byte {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return maps.Clone(kv.m)
}

var _ KV = (*memKV)(nil)

func pubOf(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// signStatusMessage signs payload in the status context: a valid signature, for the wrong document type.
func signStatusMessage(k ed25519.PrivateKey, payload []byte) []byte {
	return ed25519.Sign(k, signedMessage(StatusType, payload))
}
