package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/compile"
)

// acceptedV5 is the state every attack starts from: "detector" version 5 accepted, version 4 before it.
func acceptedV5(t *testing.T, trust TrustConfig) (State, *memKV, *Acceptor) {
	t.Helper()
	kv := newMemKV()
	a := NewAcceptor(kv, trust)
	var st State
	for v := uint64(4); v <= 5; v++ {
		signed := mustSign(t, testManifest(t, "detector", v, "<net/>", "weights-v"+string(rune('0'+v))), testKey(1))
		var err error
		if st, err = accept(st, signed, trust, now); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Accept(signed, now); err != nil {
			t.Fatal(err)
		}
	}
	return st, kv, a
}

// TestAttacks runs every attack of docs/design.md section 8 against both the pure rules (accept) and the Acceptor. Each
// must fail with its own error and leave the state exactly as it was.
func TestAttacks(t *testing.T) {
	t.Parallel()
	trust := trustOf(t, 1, testKey(1), testKey(2))
	v6 := func(t *testing.T) *Manifest { return testManifest(t, "detector", 6, "<net/>", "weights-v6") }
	tests := []struct {
		name     string
		input    func(t *testing.T) []byte
		trust    *TrustConfig // nil: trust
		want     error
		pureOnly bool // the Acceptor keys state by the manifest's own name
	}{
		{name: "unsigned", want: ErrUnsigned, input: func(t *testing.T) []byte {
			return signRaw(t, mustCanonical(t, v6(t)))
		}},
		{name: "forged signature", want: ErrBadSignature, input: func(t *testing.T) []byte {
			return editEnvelope(t, mustSign(t, v6(t), testKey(1)), func(e *envelope) { e.Signatures[0].Sig[7] ^= 0x40 })
		}},
		{name: "payload changed after signing", want: ErrBadSignature, input: func(t *testing.T) []byte {
			m := v6(t)
			signed := mustSign(t, m, testKey(1))
			m.Selector = nil // widen the rollout to every agent
			return editEnvelope(t, signed, func(e *envelope) { e.Payload = mustCanonical(t, m) })
		}},
		{name: "signature borrowed from another key id", want: ErrBadSignature, input: func(t *testing.T) []byte {
			return editEnvelope(t, mustSign(t, v6(t), testKey(3)), func(e *envelope) { e.Signatures[0].KeyID = KeyID(pubOf(testKey(1))) })
		}},
		{name: "signature for another document type", want: ErrBadSignature, input: func(t *testing.T) []byte {
			return editEnvelope(t, mustSign(t, v6(t), testKey(1)), func(e *envelope) {
				e.Signatures[0].Sig = signStatusMessage(testKey(1), e.Payload)
			})
		}},
		{name: "unknown key", want: ErrUnknownKey, input: func(t *testing.T) []byte {
			return mustSign(t, v6(t), testKey(3))
		}},
		{name: "no trusted keys configured", want: ErrNoTrustedKeys, trust: &TrustConfig{}, input: func(t *testing.T) []byte {
			return mustSign(t, v6(t), testKey(1))
		}},
		{name: "threshold not met", want: ErrThreshold, trust: ptr(trustOf(t, 2, testKey(1), testKey(2))), input: func(t *testing.T) []byte {
			return mustSign(t, v6(t), testKey(1))
		}},
		{name: "threshold padded with one key's duplicate signatures", want: ErrThreshold, trust: ptr(trustOf(t, 2, testKey(1), testKey(2))),
			input: func(t *testing.T) []byte {
				return editEnvelope(t, mustSign(t, v6(t), testKey(1)), func(e *envelope) {
					e.Signatures = append(e.Signatures, e.Signatures[0], e.Signatures[0])
				})
			}},
		{name: "threshold padded with an unknown key", want: ErrThreshold, trust: ptr(trustOf(t, 2, testKey(1), testKey(2))),
			input: func(t *testing.T) []byte { return mustSign(t, v6(t), testKey(1), testKey(3)) }},
		{name: "replayed old version", want: ErrRollback, input: func(t *testing.T) []byte {
			return mustSign(t, testManifest(t, "detector", 4, "<net/>", "weights-v4"), testKey(1))
		}},
		{name: "old version re-signed with a fresh expiry", want: ErrRollback, input: func(t *testing.T) []byte {
			m := testManifest(t, "detector", 3, "<net/>", "weights-v3")
			m.Expires = now.Add(365 * 24 * time.Hour)
			return mustSign(t, m, testKey(2))
		}},
		{name: "replay of the current version", want: ErrDuplicate, input: func(t *testing.T) []byte {
			return mustSign(t, testManifest(t, "detector", 5, "<net/>", "weights-v5"), testKey(2))
		}},
		{name: "same version, different content", want: ErrEquivocation, input: func(t *testing.T) []byte {
			return mustSign(t, testManifest(t, "detector", 5, "<net/>", "evil"), testKey(1))
		}},
		{name: "same version, only the selector differs", want: ErrEquivocation, input: func(t *testing.T) []byte {
			m := testManifest(t, "detector", 5, "<net/>", "weights-v5")
			m.Selector = nil
			return mustSign(t, m, testKey(1))
		}},
		{name: "expired manifest (freeze)", want: ErrExpired, input: func(t *testing.T) []byte {
			m := v6(t)
			m.Created, m.Expires = now.Add(-48*time.Hour), now.Add(-time.Second)
			return mustSign(t, m, testKey(1))
		}},
		{name: "expires exactly now", want: ErrExpired, input: func(t *testing.T) []byte {
			m := v6(t)
			m.Expires = now
			return mustSign(t, m, testKey(1))
		}},
		{name: "oversized", want: ErrTooLarge, input: func(t *testing.T) []byte {
			return editEnvelope(t, mustSign(t, v6(t), testKey(1)), func(e *envelope) { e.Type += strings.Repeat(" ", MaxSignedSize) })
		}},
		{name: "model content does not match its ID", want: ErrSourceMismatch, input: func(t *testing.T) []byte {
			m := v6(t)
			m.Model.Files[0] = testSource(t, "<net/>", "evil").Files[0] // other weights, the old ID
			return signRaw(t, rawPayload(t, m), testKey(1))
		}},
		{name: "wrong name", want: ErrNameMismatch, pureOnly: true, input: func(t *testing.T) []byte {
			return mustSign(t, testManifest(t, "other", 6, "<net/>", "weights-v6"), testKey(1))
		}},
		{name: "signed non-canonical form (fields reordered)", want: ErrNonCanonical, input: func(t *testing.T) []byte {
			return signRaw(t, reorder(t, mustCanonical(t, v6(t))), testKey(1))
		}},
		{name: "signed non-canonical form (time offset)", want: ErrNonCanonical, input: func(t *testing.T) []byte {
			p := bytes.Replace(mustCanonical(t, v6(t)), []byte(`"created":"2026-03-01T11:00:00Z"`), []byte(`"created":"2026-03-01T12:00:00+01:00"`), 1)
			return signRaw(t, p, testKey(1))
		}},
		{name: "signed non-canonical form (duplicate key)", want: ErrNonCanonical, input: func(t *testing.T) []byte {
			p := mustCanonical(t, v6(t))
			p = append([]byte(`{"version":99,`), p[1:]...)
			return signRaw(t, p, testKey(1))
		}},
		{name: "canonical payload, reordered envelope, re-signed", want: nil, input: func(t *testing.T) []byte {
			// The envelope is not signed: another spelling of it is fine as long as the payload is canonical.
			var env envelope
			if err := json.Unmarshal(mustSign(t, v6(t), testKey(1)), &env); err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(map[string]any{"signatures": env.Signatures, "payload": env.Payload, "type": env.Type})
			return b
		}},
		{name: "truncated", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			b := mustSign(t, v6(t), testKey(1))
			return b[:len(b)/2]
		}},
		{name: "trailing data", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			return append(mustSign(t, v6(t), testKey(1)), `{}`...)
		}},
		{name: "unknown envelope field", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			b := mustSign(t, v6(t), testKey(1))
			return append([]byte(`{"delegations":[],`), b[1:]...)
		}},
		{name: "unknown payload field", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			p := mustCanonical(t, v6(t))
			return signRaw(t, append([]byte(`{"run":"rm -rf /",`), p[1:]...), testKey(1))
		}},
		{name: "wrong type", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			return editEnvelope(t, mustSign(t, v6(t), testKey(1)), func(e *envelope) { e.Type = StatusType })
		}},
		{name: "invalid selector", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			m := v6(t)
			m.Selector = map[string]string{"hostname": "kiosk-1"}
			return signRaw(t, rawPayload(t, m), testKey(1))
		}},
		{name: "invalid profile", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			m := v6(t)
			m.Profiles = []compile.Profile{{Device: "NPU", Shapes: map[string][]int64{"x": {1, -1}}}}
			return signRaw(t, rawPayload(t, m), testKey(1))
		}},
		{name: "too many signatures", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			return editEnvelope(t, mustSign(t, v6(t), testKey(1)), func(e *envelope) {
				for range maxSignatures {
					e.Signatures = append(e.Signatures, e.Signatures[0])
				}
			})
		}},
		{name: "short signature", want: ErrInvalidManifest, input: func(t *testing.T) []byte {
			return editEnvelope(t, mustSign(t, v6(t), testKey(1)), func(e *envelope) { e.Signatures[0].Sig = e.Signatures[0].Sig[:63] })
		}},
		{name: "empty input", want: ErrInvalidManifest, input: func(t *testing.T) []byte { return nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st, kv, a := acceptedV5(t, trust)
			before, stored := st, kv.snapshot()
			input := tc.input(t)
			tr := trust
			if tc.trust != nil {
				tr = *tc.trust
				a = NewAcceptor(kv, tr)
			}

			got, err := accept(st, input, tr, now)
			if tc.want == nil {
				if err != nil || got.Version() != 6 {
					t.Fatalf("Accept: version %d, %v; want 6 accepted", got.Version(), err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Accept err = %v, want %v", err, tc.want)
			}
			if msg := err.Error(); msg == "" || strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if !reflect.DeepEqual(got, before) {
				t.Errorf("Accept changed the state on error")
			}
			if tc.pureOnly {
				return
			}
			m, err := a.Accept(input, now)
			if !errors.Is(err, tc.want) || m != nil {
				t.Fatalf("Acceptor.Accept = %v, %v; want %v", m, err, tc.want)
			}
			if !reflect.DeepEqual(kv.snapshot(), stored) {
				t.Errorf("Acceptor stored something on error")
			}
			if st, err := a.State("detector"); err != nil || st.Version() != 5 || st.Previous.Manifest.Version != 4 {
				t.Errorf("stored state after the attack: %+v, %v", st, err)
			}
		})
	}
}

// A rollback is a new, higher version that names the older model: accepted, and both models stay pinned.
func TestRollbackIsANewVersion(t *testing.T) {
	t.Parallel()
	trust := trustOf(t, 1, testKey(1))
	st, _, a := acceptedV5(t, trust)
	back := testManifest(t, "detector", 6, "<net/>", "weights-v4") // v4's model
	signed := mustSign(t, back, testKey(1))
	next, err := accept(st, signed, trust, now)
	if err != nil {
		t.Fatalf("rollback as version 6: %v", err)
	}
	if next.Version() != 6 || next.Previous.Manifest.Version != 5 {
		t.Fatalf("state = current %d, previous %d", next.Version(), next.Previous.Manifest.Version)
	}
	if next.Current.Manifest.Model.ID != testSource(t, "<net/>", "weights-v4").ID {
		t.Fatal("version 6 does not name version 4's model")
	}
	if _, err := a.Accept(signed, now); err != nil {
		t.Fatalf("Acceptor: %v", err)
	}
}

func TestAcceptorPersists(t *testing.T) {
	t.Parallel()
	trust := trustOf(t, 1, testKey(1))
	kv := newMemKV()
	a := NewAcceptor(kv, trust)
	if st, err := a.State("detector"); err != nil || st.Current != nil || st.Name != "detector" {
		t.Fatalf("empty state = %+v, %v", st, err)
	}
	for v := uint64(1); v <= 3; v++ {
		if _, err := a.Accept(mustSign(t, testManifest(t, "detector", v, "<net/>", "w"+string(rune('0'+v))), testKey(1)), now); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Accept(mustSign(t, testManifest(t, "camera", 1, "<net/>", "c"), testKey(1)), now); err != nil {
		t.Fatal(err)
	}

	// A restart with another key set (the operator rotated keys) and a clock past every expiry keeps the state:
	// forgetting it would let an old version be replayed.
	b := NewAcceptor(kv, trustOf(t, 1, testKey(2)))
	states, err := b.States()
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0].Name != "camera" || states[1].Name != "detector" {
		t.Fatalf("States = %+v", states)
	}
	det := states[1]
	if det.Version() != 3 || det.Previous.Manifest.Version != 2 || !det.Expired(now.Add(365*24*time.Hour)) || det.Expired(now) {
		t.Fatalf("reloaded detector = %+v", det)
	}
	// The stored envelope verifies on its own: it is what the agent re-serves to peers.
	if m, err := Verify(det.Current.Signed, trust, now); err != nil || m.Version != 3 {
		t.Fatalf("re-served envelope: %v", err)
	}
	if _, err := b.Accept(mustSign(t, testManifest(t, "detector", 2, "<net/>", "w2"), testKey(2)), now); !errors.Is(err, ErrRollback) {
		t.Fatalf("replay after restart with new keys: err = %v, want ErrRollback", err)
	}
}

func TestAcceptorStoreErrors(t *testing.T) {
	t.Parallel()
	trust := trustOf(t, 1, testKey(1))
	kv := newMemKV()
	a := NewAcceptor(kv, trust)
	signed := mustSign(t, testManifest(t, "detector", 1, "<net/>", "w"), testKey(1))

	kv.err = errors.New("disk full")
	if _, err := a.Accept(signed, now); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Put failure: err = %v", err)
	}
	kv.err = nil
	if st, _ := a.State("detector"); st.Current != nil {
		t.Fatal("a failed Put left a state")
	}

	// A corrupt stored state is an error, never an empty state (which would reopen every old version).
	for name, b := range map[string][]byte{
		"garbage":      []byte("{"),
		"wrong name":   mustEncode(t, mustAccept(t, State{}, mustSign(t, testManifest(t, "other", 1, "<net/>", "w"), testKey(1)), trust)),
		"unknown keys": []byte(`{"name":"detector","current":{},"x":1}`),
		"too large":    bytes.Repeat([]byte(" "), maxStateSize+1),
	} {
		kv.m[stateKeyPrefix+"detector"] = b
		if _, err := a.State("detector"); !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: State err = %v, want ErrCorruptState", name, err)
		}
		if _, err := a.Accept(signed, now); !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: Accept err = %v, want ErrCorruptState", name, err)
		}
	}
	if _, err := a.State("../x"); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("State of a bad name: err = %v", err)
	}
}

func TestDecodeStateRules(t *testing.T) {
	t.Parallel()
	trust := trustOf(t, 1, testKey(1))
	v1 := mustSign(t, testManifest(t, "detector", 1, "<net/>", "a"), testKey(1))
	v2 := mustSign(t, testManifest(t, "detector", 2, "<net/>", "b"), testKey(1))
	st := mustAccept(t, mustAccept(t, State{}, v1, trust), v2, trust)
	b := mustEncode(t, st)
	got, err := DecodeState(b)
	if err != nil || got.Version() != 2 || got.Previous.Manifest.Version != 1 {
		t.Fatalf("DecodeState = %+v, %v", got, err)
	}
	swapped, _ := json.Marshal(stateRecord{Name: "detector", Current: st.Previous.Signed, Previous: st.Current.Signed})
	if _, err := DecodeState(swapped); !errors.Is(err, ErrCorruptState) {
		t.Errorf("previous above current: err = %v", err)
	}
	if _, err := EncodeState(State{Name: "detector"}); !errors.Is(err, ErrCorruptState) {
		t.Errorf("EncodeState of an empty state: err = %v", err)
	}
}

func FuzzDecodeState(f *testing.F) {
	trust := trustOf(f, 1, testKey(1))
	st := mustAccept(f, State{}, mustSign(f, testManifest(f, "detector", 1, "<net/>", "a"), testKey(1)), trust)
	st = mustAccept(f, st, mustSign(f, testManifest(f, "detector", 2, "<net/>", "b"), testKey(1)), trust)
	f.Add(mustEncode(f, st))
	f.Add([]byte(`{"name":"x","current":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := DecodeState(b)
		if err != nil {
			return
		}
		again, err := EncodeState(st)
		if err != nil {
			t.Fatalf("decoded state does not encode: %v", err)
		}
		st2, err := DecodeState(again)
		if err != nil || st2.Version() != st.Version() || st2.Name != st.Name {
			t.Fatalf("round trip: %+v, %v", st2, err)
		}
	})
}

func mustCanonical(t testing.TB, m *Manifest) []byte {
	t.Helper()
	b, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// accept is what Acceptor.Accept does without the store: verify, then advance st. The pure rules are tested
// through it on states the store would not hold (another name).
func accept(st State, signed []byte, trust TrustConfig, now time.Time) (State, error) {
	v, err := verify(signed, trust, now)
	if err != nil {
		return st, err
	}
	return advance(st, v)
}

func mustAccept(t testing.TB, st State, signed []byte, trust TrustConfig) State {
	t.Helper()
	next, err := accept(st, signed, trust, now)
	if err != nil {
		t.Fatal(err)
	}
	return next
}

func mustEncode(t testing.TB, st State) []byte {
	t.Helper()
	b, err := EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// editEnvelope decodes a signed manifest, lets edit change it and encodes it again, bypassing every check.
func editEnvelope(t testing.TB, signed []byte, edit func(*envelope)) []byte {
	t.Helper()
	var env envelope
	if err := json.Unmarshal(signed, &env); err != nil {
		t.Fatal(err)
	}
	edit(&env)
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reorder re-encodes a JSON object with its top-level keys in reverse order: same content, other bytes.
func reorder(t testing.TB, payload []byte) []byte {
	t.Helper()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(payload, &fields); err != nil {
		t.Fatal(err)
	}
	keys := []string{"selector", "profiles", "model", "expires", "created", "version", "name"}
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(fields[k])
	}
	b.WriteByte('}')
	return b.Bytes()
}

func ptr[T any](v T) *T { return &v }
