// Package rollout is the core of LAN-only model rollout: operator keys, signed rollout manifests, the acceptance
// rules that stop forged, replayed, rolled-back and frozen manifests, signed agent status reports with a fleet
// view, and the pin set an agent keeps. It is pure: no network, no store of its own (state goes through KV).
// Formats and rules are normative in docs/design.md section 8.
package rollout

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// PublicKeyPrefix starts the one-line text form of an operator public key (rollout.trusted_keys).
const PublicKeyPrefix = "npu-agent-ed25519:"

// privateKeyPEMType is the PEM block type of a private key file: PKCS #8, so `openssl pkey` reads it too.
const privateKeyPEMType = "PRIVATE KEY"

// maxPrivateKeyFile bounds a private key file; a PKCS #8 ed25519 key in PEM is 119 bytes.
const maxPrivateKeyFile = 4 << 10

// maxPublicKeyText bounds the text form of a public key (prefix + 44 base64 characters, plus slack for spaces).
const maxPublicKeyText = 256

// Key errors.
var (
	ErrInvalidKey     = errors.New("invalid key")
	ErrKeyPermissions = errors.New("private key file is readable by others")
)

// GenerateKey returns a new ed25519 operator key pair. crypto/rand does not fail since Go 1.24, so neither does this.
func GenerateKey() (ed25519.PrivateKey, ed25519.PublicKey) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic(fmt.Sprintf("rollout: ed25519 key generation: %v", err)) // unreachable, see above
	}
	return priv, pub
}

// KeyID names a public key in signatures and logs: the first 16 hex digits of sha256 of the 32 raw key bytes.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// FormatPublicKey returns the one-line form "npu-agent-ed25519:<std base64 of the 32 key bytes>".
func FormatPublicKey(pub ed25519.PublicKey) string {
	return PublicKeyPrefix + base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey parses the form FormatPublicKey writes. Surrounding white space is ignored.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	if len(s) > maxPublicKeyText {
		return nil, fmt.Errorf("%w: public key is %d bytes, at most %d", ErrInvalidKey, len(s), maxPublicKeyText)
	}
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, PublicKeyPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: public key %q does not start with %q", ErrInvalidKey, s, PublicKeyPrefix)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("%w: public key %q: %v", ErrInvalidKey, s, err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key %q has %d bytes, want %d", ErrInvalidKey, s, len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// MarshalPrivateKey encodes priv as a PEM "PRIVATE KEY" block (PKCS #8).
func MarshalPrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: private key has %d bytes, want %d", ErrInvalidKey, len(priv), ed25519.PrivateKeySize)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: privateKeyPEMType, Bytes: der}), nil
}

// ParsePrivateKey parses what MarshalPrivateKey writes: exactly one PEM "PRIVATE KEY" block holding a PKCS #8
// ed25519 key, nothing but white space around it.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	if len(b) > maxPrivateKeyFile {
		return nil, fmt.Errorf("%w: private key is %d bytes, at most %d", ErrInvalidKey, len(b), maxPrivateKeyFile)
	}
	blk, rest := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrInvalidKey)
	}
	if blk.Type != privateKeyPEMType {
		return nil, fmt.Errorf("%w: PEM block is %q, want %q", ErrInvalidKey, blk.Type, privateKeyPEMType)
	}
	if len(blk.Headers) != 0 {
		return nil, fmt.Errorf("%w: PEM headers are not allowed (an encrypted key?)", ErrInvalidKey)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the PEM block", ErrInvalidKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: key is %T, want ed25519", ErrInvalidKey, k)
	}
	return priv, nil
}

// WritePrivateKeyFile writes priv to path with mode 0600. It never replaces an existing file (an operator key
// overwritten by mistake cannot be recovered) and the key appears at path complete or not at all.
func WritePrivateKeyFile(path string, priv ed25519.PrivateKey) error {
	b, err := MarshalPrivateKey(priv)
	if err != nil {
		return err
	}
	// Link, unlike rename, fails when path exists.
	if err := atomicfile.WriteNew(path, b, 0o600); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("writing private key: %s already exists; not replacing an operator key", path)
		}
		return fmt.Errorf("writing private key: %w", err)
	}
	return nil
}

// ReadPrivateKeyFile reads a private key file. It refuses a file that group or others may read, write or execute
// (ErrKeyPermissions), like ssh does: such a key may already be known to someone else.
func ReadPrivateKeyFile(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading private key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat() // of the opened file, so a swap between check and read does not matter
	if err != nil {
		return nil, fmt.Errorf("reading private key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalidKey, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrKeyPermissions, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPrivateKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading private key %s: %w", path, err)
	}
	priv, err := ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return priv, nil
}
