package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// StatusType is the envelope type of a signed status report; it is also the signing context.
const StatusType = "npu-agent/rollout-status/v1"

// Limits of a status report.
const (
	// MaxStatusSize bounds a signed status report; a real one is under 4 KiB.
	MaxStatusSize = 16 << 10
	// MaxReasonLen bounds Status.Reason.
	MaxReasonLen = 512
	maxPeerIDLen = 128
	// MaxFleetRollouts and MaxFleetPeers bound a FleetView (rollout names, peers per name).
	MaxFleetRollouts = 256
	MaxFleetPeers    = 4096
)

// Status errors.
var (
	ErrInvalidStatus  = errors.New("invalid rollout status")
	ErrFleetViewFull  = errors.New("fleet view is full")
	ErrStatusVerifier = errors.New("rollout status signature does not verify")
)

// Phase is where an agent is with a rollout version.
type Phase string

// Phases, in the order an agent goes through them.
const (
	PhasePending   Phase = "pending"   // accepted, not started (or not selected yet: waiting for resources)
	PhaseFetching  Phase = "fetching"  // source model or blobs coming from peers
	PhaseCompiling Phase = "compiling" // compiling here or waiting for the fleet's compiler
	PhaseReady     Phase = "ready"     // every profile has a blob this agent can load
	PhaseFailed    Phase = "failed"    // Reason says why
)

func (p Phase) valid() bool {
	switch p {
	case PhasePending, PhaseFetching, PhaseCompiling, PhaseReady, PhaseFailed:
		return true
	}
	return false
}

// Status is an agent's report on one rollout version.
type Status struct {
	Name    string `json:"name"`
	Version uint64 `json:"version"`
	State   Phase  `json:"state"`
	Reason  string `json:"reason,omitempty"` // one line, at most 512 bytes; required when failed
	// Profiles maps each profile ID to the blob CID the agent resolved for it, or to its phase (pending, fetching,
	// compiling, failed) while it has none. Ready requires a blob for every entry.
	Profiles map[string]string `json:"profiles,omitempty"`
	Updated  time.Time         `json:"updated"` // UTC
}

// statusEnvelope is the signed form of a Status. Peer is the reporting agent's libp2p peer ID; the signature is
// by that peer's key.
type statusEnvelope struct {
	Type    string `json:"type"`
	Peer    string `json:"peer"`
	Payload []byte `json:"payload"`
	Sig     []byte `json:"sig"`
}

// peerIDRE accepts the text forms of libp2p peer IDs (base58btc, or a CID in base32) without newlines, so the
// signed message stays unambiguous.
var peerIDRE = regexp.MustCompile(`^[A-Za-z0-9]+$`)

// Validate checks the rules of docs/design.md section 8.
func (s *Status) Validate() error {
	if err := checkName(s.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidStatus, err)
	}
	if s.Version == 0 {
		return fmt.Errorf("%w: version 0", ErrInvalidStatus)
	}
	if !s.State.valid() {
		return fmt.Errorf("%w: state %q is not pending, fetching, compiling, ready or failed", ErrInvalidStatus, s.State)
	}
	if len(s.Reason) > MaxReasonLen || !utf8.ValidString(s.Reason) || strings.ContainsFunc(s.Reason, unicode.IsControl) {
		return fmt.Errorf("%w: reason must be one line of at most %d bytes of UTF-8", ErrInvalidStatus, MaxReasonLen)
	}
	if s.State == PhaseFailed && s.Reason == "" {
		return fmt.Errorf("%w: failed without a reason", ErrInvalidStatus)
	}
	if len(s.Profiles) > MaxProfiles {
		return fmt.Errorf("%w: %d profiles, at most %d", ErrInvalidStatus, len(s.Profiles), MaxProfiles)
	}
	for id, v := range s.Profiles {
		if _, err := parseCanonicalCID(id); err != nil {
			return fmt.Errorf("%w: profile id: %w", ErrInvalidStatus, err)
		}
		if _, err := parseCanonicalCID(v); err == nil {
			continue
		}
		if p := Phase(v); !p.valid() || p == PhaseReady {
			return fmt.Errorf("%w: profile %s: %q is neither a blob CID nor pending, fetching, compiling or failed", ErrInvalidStatus, id, v)
		}
		if s.State == PhaseReady {
			return fmt.Errorf("%w: ready, but profile %s is %s", ErrInvalidStatus, id, v)
		}
	}
	if s.Updated.IsZero() {
		return fmt.Errorf("%w: updated is not set", ErrInvalidStatus)
	}
	return nil
}

// canonical is the payload encoding: compact encoding/json, Updated in UTC.
func (s *Status) canonical() ([]byte, error) {
	c := *s
	c.Updated = s.Updated.UTC()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidStatus, err)
	}
	return b, nil
}

// statusMessage is what the agent's key signs: type, peer ID and payload, each but the last ended by a newline.
func statusMessage(peer string, payload []byte) []byte {
	return signedMessage(StatusType, append([]byte(peer+"\n"), payload...))
}

// SignStatus returns the signed status report of peer. sign signs with the agent's libp2p private key.
func SignStatus(s *Status, peer string, sign func(msg []byte) ([]byte, error)) ([]byte, error) {
	if err := checkPeer(peer); err != nil {
		return nil, err
	}
	payload, err := s.canonical()
	if err != nil {
		return nil, err
	}
	sig, err := sign(statusMessage(peer, payload))
	if err != nil {
		return nil, fmt.Errorf("signing rollout status: %w", err)
	}
	b, err := json.Marshal(statusEnvelope{Type: StatusType, Peer: peer, Payload: payload, Sig: sig})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidStatus, err)
	}
	if len(b) > MaxStatusSize {
		return nil, fmt.Errorf("%w: %w: %d bytes, at most %d", ErrInvalidStatus, ErrTooLarge, len(b), MaxStatusSize)
	}
	return b, nil
}

func checkPeer(peer string) error {
	if len(peer) == 0 || len(peer) > maxPeerIDLen || !peerIDRE.MatchString(peer) {
		return fmt.Errorf("%w: peer id %.140q: want 1 to %d letters and digits", ErrInvalidStatus, peer, maxPeerIDLen)
	}
	return nil
}

// VerifyStatus decodes a signed status report and checks it with verify, which must check sig over msg with the
// public key of peer (the p2p layer derives it from the peer ID). It returns the reporting peer and its status.
func VerifyStatus(b []byte, verify func(peer string, msg, sig []byte) error) (string, *Status, error) {
	if len(b) > MaxStatusSize {
		return "", nil, fmt.Errorf("%w: %w: %d bytes, at most %d", ErrInvalidStatus, ErrTooLarge, len(b), MaxStatusSize)
	}
	var env statusEnvelope
	if err := decodeStrict(b, &env); err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrInvalidStatus, err)
	}
	if env.Type != StatusType {
		return "", nil, fmt.Errorf("%w: type %q, want %q", ErrInvalidStatus, env.Type, StatusType)
	}
	if err := checkPeer(env.Peer); err != nil {
		return "", nil, err
	}
	if len(env.Sig) == 0 {
		return "", nil, fmt.Errorf("%w: not signed", ErrInvalidStatus)
	}
	if err := verify(env.Peer, statusMessage(env.Peer, env.Payload), env.Sig); err != nil {
		return "", nil, fmt.Errorf("%w: peer %s: %w", ErrStatusVerifier, env.Peer, err)
	}
	var s Status
	if err := decodeStrict(env.Payload, &s); err != nil {
		return "", nil, fmt.Errorf("%w: payload: %v", ErrInvalidStatus, err)
	}
	want, err := s.canonical()
	if err != nil {
		return "", nil, err
	}
	if !bytes.Equal(want, env.Payload) {
		return "", nil, fmt.Errorf("%w: payload is not in canonical form", ErrInvalidStatus)
	}
	return env.Peer, &s, nil
}

// FleetView keeps the latest status per peer and rollout, as reports arrive by gossip or pull. Safe for
// concurrent use.
type FleetView struct {
	mu     sync.Mutex
	byName map[string]map[string]Status // name → peer → latest
}

// NewFleetView returns an empty view.
func NewFleetView() *FleetView {
	return &FleetView{byName: map[string]map[string]Status{}}
}

// Observe records a verified status of peer if it is newer than the one held: a higher version, or the same
// version updated later. It reports whether it replaced anything; ErrFleetViewFull when a new rollout or peer
// would pass MaxFleetRollouts or MaxFleetPeers.
func (v *FleetView) Observe(peer string, s *Status) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	peers, ok := v.byName[s.Name]
	if !ok {
		if len(v.byName) >= MaxFleetRollouts {
			return false, fmt.Errorf("%w: %d rollouts", ErrFleetViewFull, MaxFleetRollouts)
		}
		peers = map[string]Status{}
		v.byName[s.Name] = peers
	}
	old, ok := peers[peer]
	if !ok && len(peers) >= MaxFleetPeers {
		return false, fmt.Errorf("%w: %d peers for %s", ErrFleetViewFull, MaxFleetPeers, s.Name)
	}
	if ok && (s.Version < old.Version || s.Version == old.Version && !s.Updated.After(old.Updated)) {
		return false, nil
	}
	peers[peer] = *s
	return true, nil
}

// Forget drops every status of peer (it left the fleet).
func (v *FleetView) Forget(peer string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for name, peers := range v.byName {
		delete(peers, peer)
		if len(peers) == 0 {
			delete(v.byName, name)
		}
	}
}

// Row is one line of `npu-agent rollout status NAME`.
type Row struct {
	Peer     string    `json:"peer"`
	Version  uint64    `json:"version"`
	State    Phase     `json:"state"`
	Ready    int       `json:"ready"`    // profiles with a blob
	Profiles int       `json:"profiles"` // profiles reported
	Reason   string    `json:"reason,omitempty"`
	Updated  time.Time `json:"updated"`
}

// Rows returns the latest status of every peer for the rollout, sorted by peer.
func (v *FleetView) Rows(name string) []Row {
	v.mu.Lock()
	defer v.mu.Unlock()
	rows := make([]Row, 0, len(v.byName[name]))
	for peer, s := range v.byName[name] {
		r := Row{Peer: peer, Version: s.Version, State: s.State, Profiles: len(s.Profiles), Reason: s.Reason, Updated: s.Updated}
		for _, val := range s.Profiles {
			if !Phase(val).valid() {
				r.Ready++
			}
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Peer < rows[j].Peer })
	return rows
}

// Summary counts rows against the version an operator expects.
type Summary struct {
	Peers      int `json:"peers"`
	Ready      int `json:"ready"`       // at the version and ready
	Failed     int `json:"failed"`      // at the version and failed
	InProgress int `json:"in_progress"` // at the version, pending, fetching or compiling
	Behind     int `json:"behind"`      // still reporting an older version
	Ahead      int `json:"ahead"`       // reporting a newer version than expected
}

// Summarize counts rows for version.
func Summarize(rows []Row, version uint64) Summary {
	sum := Summary{Peers: len(rows)}
	for _, r := range rows {
		switch {
		case r.Version < version:
			sum.Behind++
		case r.Version > version:
			sum.Ahead++
		case r.State == PhaseReady:
			sum.Ready++
		case r.State == PhaseFailed:
			sum.Failed++
		default:
			sum.InProgress++
		}
	}
	return sum
}
