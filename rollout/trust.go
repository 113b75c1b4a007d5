package rollout

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"sort"
)

// MaxTrustedKeys bounds rollout.trusted_keys.
const MaxTrustedKeys = 64

// ErrNoTrustedKeys is returned when a manifest is checked against a trust configuration without keys.
var ErrNoTrustedKeys = errors.New("no trusted operator keys configured (rollout.trusted_keys)")

// TrustConfig is the set of operator keys an agent trusts and how many of them must sign a manifest. The zero
// value trusts nothing. Build it with NewTrustConfig.
type TrustConfig struct {
	keys      map[string]ed25519.PublicKey // by KeyID
	threshold int
}

// NewTrustConfig parses the configured public keys (FormatPublicKey form) and the threshold: the number of
// distinct trusted keys whose valid signatures a manifest needs. threshold 0 means 1.
func NewTrustConfig(keys []string, threshold int) (TrustConfig, error) {
	if len(keys) == 0 {
		return TrustConfig{}, ErrNoTrustedKeys
	}
	if len(keys) > MaxTrustedKeys {
		return TrustConfig{}, fmt.Errorf("%w: %d trusted keys, at most %d", ErrInvalidKey, len(keys), MaxTrustedKeys)
	}
	if threshold == 0 {
		threshold = 1
	}
	if threshold < 0 || threshold > len(keys) {
		return TrustConfig{}, fmt.Errorf("%w: threshold %d with %d trusted keys: want 1 to %d", ErrInvalidKey, threshold, len(keys), len(keys))
	}
	tc := TrustConfig{keys: make(map[string]ed25519.PublicKey, len(keys)), threshold: threshold}
	for i, s := range keys {
		pub, err := ParsePublicKey(s)
		if err != nil {
			return TrustConfig{}, fmt.Errorf("trusted key %d: %w", i+1, err)
		}
		id := KeyID(pub)
		if _, dup := tc.keys[id]; dup {
			// A duplicate would let one key count twice towards the threshold in the operator's mind.
			return TrustConfig{}, fmt.Errorf("%w: trusted key %d (%s) is listed twice", ErrInvalidKey, i+1, id)
		}
		tc.keys[id] = pub
	}
	return tc, nil
}

// Threshold is the number of distinct trusted keys that must sign.
func (tc TrustConfig) Threshold() int { return tc.threshold }

// KeyIDs lists the trusted keys' IDs, sorted.
func (tc TrustConfig) KeyIDs() []string {
	ids := make([]string, 0, len(tc.keys))
	for id := range tc.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
