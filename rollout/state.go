package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Acceptance errors. A rejected manifest never changes the state.
var (
	ErrNameMismatch = errors.New("rollout manifest is for another rollout")
	ErrRollback     = errors.New("rollout manifest is older than the accepted version")
	ErrEquivocation = errors.New("rollout manifest has the accepted version but other content")
	// ErrDuplicate is the accepted manifest again (gossip redelivers); not an attack, nothing to do.
	ErrDuplicate    = errors.New("rollout manifest is already accepted")
	ErrCorruptState = errors.New("stored rollout state is corrupt")
	// ErrNotFound is what a KV returns for a missing key.
	ErrNotFound = errors.New("not found")
)

// Accepted is a manifest an agent accepted, with the signed form it re-serves to peers.
type Accepted struct {
	Manifest *Manifest
	// Signed is the envelope as stored: the payload with only the signatures that verified, sorted by key ID.
	Signed []byte
}

// State is what an agent has accepted for one rollout name: the highest version (Current) and the one before it
// (Previous, kept pinned for a quick way back). The zero State for a name is State{Name: name}.
type State struct {
	Name     string
	Current  *Accepted // nil before the first manifest
	Previous *Accepted // nil until a second version is accepted
}

// Version is the highest accepted version, 0 before the first.
func (s State) Version() uint64 {
	if s.Current == nil {
		return 0
	}
	return s.Current.Manifest.Version
}

// Expired reports whether the current manifest has expired at now: publishing has stopped, or someone withholds
// newer manifests (a freeze). The agent keeps serving the current version and reports this.
func (s State) Expired(now time.Time) bool {
	return s.Current != nil && !now.Before(s.Current.Manifest.Expires)
}

// advance applies a verified manifest to the state for its name and returns the new state. On any error it returns
// st unchanged. Rules (docs/design.md section 8): the name is st's, and the version is above st's (equal with the
// same payload is ErrDuplicate, equal with another payload ErrEquivocation, lower ErrRollback). A rollback to an
// older model is a new, higher version naming that model.
func advance(st State, v *verified) (State, error) {
	m := v.m
	if st.Name != "" && m.Name != st.Name {
		return st, fmt.Errorf("%w: got %q, want %q", ErrNameMismatch, m.Name, st.Name)
	}
	if cur := st.Current; cur != nil {
		switch have := cur.Manifest.Version; {
		case m.Version < have:
			return st, fmt.Errorf("%w: %s version %d, accepted %d", ErrRollback, m.Name, m.Version, have)
		case m.Version == have:
			curEnv, err := decodeEnvelope(cur.Signed)
			if err != nil {
				return st, fmt.Errorf("%w: %s: %w", ErrCorruptState, m.Name, err)
			}
			if bytes.Equal(curEnv.Payload, v.payload) {
				return st, fmt.Errorf("%w: %s version %d", ErrDuplicate, m.Name, m.Version)
			}
			return st, fmt.Errorf("%w: %s version %d signed twice with different content", ErrEquivocation, m.Name, m.Version)
		}
	}
	signed, err := encodeEnvelope(&envelope{Type: ManifestType, Payload: v.payload, Signatures: v.sigs})
	if err != nil {
		return st, err
	}
	return State{Name: m.Name, Current: &Accepted{Manifest: m, Signed: signed}, Previous: st.Current}, nil
}

// KV is the small persistent map the Acceptor keeps its state in; the agent backs it with badger under a prefix
// of its own. Implementations must be safe for concurrent use.
type KV interface {
	// Get returns the value stored under key, or an error wrapping ErrNotFound.
	Get(key string) ([]byte, error)
	// Put stores value under key, replacing any earlier value, durably before it returns.
	Put(key string, value []byte) error
	// Keys lists the keys that start with prefix, in any order.
	Keys(prefix string) ([]string, error)
}

// stateKeyPrefix is the KV key prefix of rollout states: "state/<name>".
const stateKeyPrefix = "state/"

// maxStateSize bounds a stored state: two signed manifests and a little JSON.
const maxStateSize = 2*MaxSignedSize + 1024

// stateRecord is the stored form of a State. The envelopes are kept as stored JSON, so what is re-served is
// byte for byte what was accepted.
type stateRecord struct {
	Name     string          `json:"name"`
	Current  json.RawMessage `json:"current"`
	Previous json.RawMessage `json:"previous,omitempty"`
}

// EncodeState is the stored form of st (docs/design.md section 8).
func EncodeState(st State) ([]byte, error) {
	if st.Current == nil {
		return nil, fmt.Errorf("%w: state of %q has no accepted manifest", ErrCorruptState, st.Name)
	}
	rec := stateRecord{Name: st.Name, Current: st.Current.Signed}
	if st.Previous != nil {
		rec.Previous = st.Previous.Signed
	}
	return json.Marshal(rec)
}

// DecodeState parses a stored state. It checks form, canonical payloads and that the versions increase, but not
// signatures or expiry: the manifests were verified when accepted, and a later change of trusted keys or the
// clock must not erase what stops a rollback.
func DecodeState(b []byte) (State, error) {
	if len(b) > maxStateSize {
		return State{}, fmt.Errorf("%w: %w: %d bytes, at most %d", ErrCorruptState, ErrTooLarge, len(b), maxStateSize)
	}
	var rec stateRecord
	if err := decodeStrict(b, &rec); err != nil {
		return State{}, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	st := State{Name: rec.Name}
	var err error
	if st.Current, err = decodeAccepted(rec.Name, rec.Current); err != nil {
		return State{}, fmt.Errorf("%w: current: %w", ErrCorruptState, err)
	}
	if len(rec.Previous) > 0 {
		if st.Previous, err = decodeAccepted(rec.Name, rec.Previous); err != nil {
			return State{}, fmt.Errorf("%w: previous: %w", ErrCorruptState, err)
		}
		if st.Previous.Manifest.Version >= st.Current.Manifest.Version {
			return State{}, fmt.Errorf("%w: previous version %d is not below current %d", ErrCorruptState,
				st.Previous.Manifest.Version, st.Current.Manifest.Version)
		}
	}
	return st, nil
}

func decodeAccepted(name string, signed []byte) (*Accepted, error) {
	env, m, err := decodeSigned(signed)
	if err != nil {
		return nil, err
	}
	if err := checkCanonical(m, env.Payload); err != nil {
		return nil, err
	}
	if m.Name != name {
		return nil, fmt.Errorf("%w: manifest %q stored under %q", ErrNameMismatch, m.Name, name)
	}
	return &Accepted{Manifest: m, Signed: append([]byte(nil), signed...)}, nil
}

// Acceptor accepts signed manifests against the state stored in a KV, one manifest at a time.
type Acceptor struct {
	kv    KV
	trust TrustConfig
	mu    sync.Mutex // serialises load, check, store
}

// NewAcceptor returns an Acceptor over kv that trusts trust.
func NewAcceptor(kv KV, trust TrustConfig) *Acceptor {
	return &Acceptor{kv: kv, trust: trust}
}

// Accept verifies a signed manifest (Verify: signed, trusted keys, threshold, valid, canonical, not expired),
// checks it against the stored state of its name (advance) and, if it is accepted, stores the new state before
// returning the manifest. On error nothing is stored.
func (a *Acceptor) Accept(signed []byte, now time.Time) (*Manifest, error) {
	v, err := verify(signed, a.trust, now)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	st, err := a.load(v.m.Name)
	if err != nil {
		return nil, err
	}
	next, err := advance(st, v)
	if err != nil {
		return nil, err
	}
	b, err := EncodeState(next)
	if err != nil {
		return nil, err
	}
	if err := a.kv.Put(stateKeyPrefix+next.Name, b); err != nil {
		return nil, fmt.Errorf("storing rollout state of %s: %w", next.Name, err)
	}
	return v.m, nil
}

// State returns the stored state of a rollout; State{Name: name} if none was accepted.
func (a *Acceptor) State(name string) (State, error) {
	if err := checkName(name); err != nil {
		return State{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.load(name)
}

func (a *Acceptor) load(name string) (State, error) {
	b, err := a.kv.Get(stateKeyPrefix + name)
	if errors.Is(err, ErrNotFound) {
		return State{Name: name}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("loading rollout state of %s: %w", name, err)
	}
	st, err := DecodeState(b)
	if err != nil {
		// Never fall back to an empty state: that would reopen every older version to a replay.
		return State{}, fmt.Errorf("rollout %s: %w", name, err)
	}
	if st.Name != name {
		return State{}, fmt.Errorf("%w: state of %q stored under %q", ErrCorruptState, st.Name, name)
	}
	return st, nil
}

// States returns every stored state, sorted by name.
func (a *Acceptor) States() ([]State, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	keys, err := a.kv.Keys(stateKeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing rollout states: %w", err)
	}
	slices.Sort(keys)
	states := make([]State, 0, len(keys))
	for _, k := range keys {
		name, ok := strings.CutPrefix(k, stateKeyPrefix)
		if !ok {
			return nil, fmt.Errorf("listing rollout states: key %q lacks the prefix %q", k, stateKeyPrefix)
		}
		st, err := a.load(name)
		if err != nil {
			return nil, err
		}
		states = append(states, st)
	}
	return states, nil
}
