package rollout

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testKey is a deterministic key so failures reproduce.
func testKey(n byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{n}, ed25519.SeedSize))
}

func TestKeyIDAndPublicKeyText(t *testing.T) {
	t.Parallel()
	priv, pub := GenerateKey()
	if len(priv) != ed25519.PrivateKeySize || !pub.Equal(priv.Public()) {
		t.Fatal("GenerateKey returned a mismatched pair")
	}
	// Golden values of the all-zero seed (RFC 8032 key 3b6a27bc...), computed outside Go; the formats are normative.
	zero := testKey(0).Public().(ed25519.PublicKey)
	if got := KeyID(zero); got != "139e3940e64b5491" {
		t.Errorf("KeyID = %s", got)
	}
	if got := FormatPublicKey(zero); got != "npu-agent-ed25519:O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=" {
		t.Errorf("FormatPublicKey = %s", got)
	}
	got, err := ParsePublicKey("  " + FormatPublicKey(pub) + "\n")
	if err != nil || !got.Equal(pub) {
		t.Fatalf("ParsePublicKey round trip = %x, %v", got, err)
	}
	for _, bad := range []string{
		"",
		"O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=",                     // no prefix
		"ssh-ed25519:O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=",         // other prefix
		"npu-agent-ed25519:O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik",    // padding missing
		"npu-agent-ed25519:O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2i==",   // 31 bytes
		"npu-agent-ed25519:O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=AA", // trailing data
		"npu-agent-ed25519:" + strings.Repeat("A", 300),
	} {
		if _, err := ParsePublicKey(bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePublicKey(%q) err = %v, want ErrInvalidKey", bad, err)
		}
	}
}

func TestPrivateKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "operator.key")
	priv, _ := GenerateKey()
	if err := WritePrivateKeyFile(path, priv); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %04o, want 0600", st.Mode().Perm())
	}
	got, err := ReadPrivateKeyFile(path)
	if err != nil || !got.Equal(priv) {
		t.Fatalf("ReadPrivateKeyFile = %v", err)
	}
	other, _ := GenerateKey()
	if err := WritePrivateKeyFile(path, other); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("overwrite err = %v, want already exists", err)
	}
	if got, _ := ReadPrivateKeyFile(path); !got.Equal(priv) {
		t.Fatal("a refused write replaced the key")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left behind: %v", ents)
	}

	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadPrivateKeyFile(path); !errors.Is(err, ErrKeyPermissions) {
			t.Errorf("mode %04o: err = %v, want ErrKeyPermissions", mode, err)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPrivateKeyFile(path); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
	if _, err := ReadPrivateKeyFile(dir); !errors.Is(err, ErrInvalidKey) && !errors.Is(err, ErrKeyPermissions) {
		t.Errorf("directory: err = %v", err)
	}
}

func TestParsePrivateKeyRejects(t *testing.T) {
	t.Parallel()
	good, err := MarshalPrivateKey(testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if k, err := ParsePrivateKey(good); err != nil || !k.Equal(testKey(1)) {
		t.Fatalf("round trip: %v", err)
	}
	tests := map[string][]byte{
		"empty":        nil,
		"not PEM":      []byte("hello"),
		"other type":   bytes.Replace(good, []byte("PRIVATE KEY"), []byte("PUBLIC KEY"), 2),
		"trailing":     append(append([]byte{}, good...), "extra"...),
		"two blocks":   append(append([]byte{}, good...), good...),
		"bad DER":      []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
		"with headers": bytes.Replace(good, []byte("KEY-----\n"), []byte("KEY-----\nProc-Type: 4,ENCRYPTED\n\n"), 1),
		"too large":    bytes.Repeat([]byte(" "), maxPrivateKeyFile+1),
	}
	for name, b := range tests {
		if _, err := ParsePrivateKey(b); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: err = %v, want ErrInvalidKey", name, err)
		}
	}
}

func TestNewTrustConfig(t *testing.T) {
	t.Parallel()
	a, b := FormatPublicKey(testKey(1).Public().(ed25519.PublicKey)), FormatPublicKey(testKey(2).Public().(ed25519.PublicKey))
	tc, err := NewTrustConfig([]string{a, b}, 0)
	if err != nil || tc.Threshold() != 1 || len(tc.KeyIDs()) != 2 {
		t.Fatalf("NewTrustConfig = %+v, %v", tc, err)
	}
	for name, tc := range map[string]struct {
		keys      []string
		threshold int
	}{
		"no keys":         {nil, 1},
		"threshold high":  {[]string{a}, 2},
		"negative":        {[]string{a}, -1},
		"duplicate":       {[]string{a, a}, 1},
		"malformed":       {[]string{a, "npu-agent-ed25519:xx"}, 1},
		"too many (65)":   {bytes65(a), 1},
		"empty key entry": {[]string{""}, 1},
	} {
		if _, err := NewTrustConfig(tc.keys, tc.threshold); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func bytes65(k string) []string {
	s := make([]string, MaxTrustedKeys+1)
	for i := range s {
		s[i] = k
	}
	return s
}

func FuzzParsePublicKey(f *testing.F) {
	f.Add(FormatPublicKey(testKey(1).Public().(ed25519.PublicKey)))
	f.Add("npu-agent-ed25519:")
	f.Add("npu-agent-ed25519:====")
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := ParsePublicKey(s)
		if err != nil {
			return
		}
		if again, err := ParsePublicKey(FormatPublicKey(pub)); err != nil || !again.Equal(pub) {
			t.Fatalf("round trip of %q failed: %v", s, err)
		}
	})
}

func FuzzParsePrivateKey(f *testing.F) {
	good, _ := MarshalPrivateKey(testKey(1))
	f.Add(good)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		priv, err := ParsePrivateKey(b)
		if err != nil {
			return
		}
		if len(priv) != ed25519.PrivateKeySize {
			t.Fatalf("accepted a %d-byte key", len(priv))
		}
		again, err := MarshalPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		if k, err := ParsePrivateKey(again); err != nil || !k.Equal(priv) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}
