package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// agentKey is a libp2p identity as the agent has one; sign and verify are the closures the p2p wiring passes in.
type agentKey struct {
	id   peer.ID
	priv ic.PrivKey
}

// newAgentKey derives a libp2p ed25519 identity from seed n, so fuzz workers and their parent agree on it.
func newAgentKey(t testing.TB, n byte) agentKey {
	t.Helper()
	priv, _, err := ic.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{n}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return agentKey{id: id, priv: priv}
}

func (k agentKey) sign(msg []byte) ([]byte, error) { return k.priv.Sign(msg) }

// verifyPeer checks sig with the public key embedded in the peer ID, as the p2p layer does.
func verifyPeer(p string, msg, sig []byte) error {
	id, err := peer.Decode(p)
	if err != nil {
		return err
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		return err
	}
	ok, err := pub.Verify(msg, sig)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("bad signature")
	}
	return nil
}

func testStatus(t testing.TB) *Status {
	t.Helper()
	ids, err := testManifest(t, "detector", 3, "<net/>", "w").ProfileIDs()
	if err != nil {
		t.Fatal(err)
	}
	blob := testSource(t, "<net/>", "w").Files[0].Blob
	return &Status{Name: "detector", Version: 3, State: PhaseReady, Profiles: map[string]string{ids[0]: blob}, Updated: now}
}

func TestStatusRoundTrip(t *testing.T) {
	t.Parallel()
	k := newAgentKey(t, 1)
	s := testStatus(t)
	s.Updated = now.Add(123 * time.Millisecond).In(time.FixedZone("CET", 3600))
	b, err := SignStatus(s, k.id.String(), k.sign)
	if err != nil {
		t.Fatal(err)
	}
	p, got, err := VerifyStatus(b, verifyPeer)
	if err != nil {
		t.Fatal(err)
	}
	if p != k.id.String() || got.Name != s.Name || got.Version != 3 || got.State != PhaseReady || !got.Updated.Equal(s.Updated) {
		t.Fatalf("VerifyStatus = %s, %+v", p, got)
	}
}

func TestStatusRejects(t *testing.T) {
	t.Parallel()
	k, other := newAgentKey(t, 1), newAgentKey(t, 2)
	good, err := SignStatus(testStatus(t), k.id.String(), k.sign)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(e *statusEnvelope)) []byte {
		var e statusEnvelope
		if err := json.Unmarshal(good, &e); err != nil {
			t.Fatal(err)
		}
		f(&e)
		b, _ := json.Marshal(e)
		return b
	}
	resign := func(payload string) []byte {
		return edit(func(e *statusEnvelope) {
			e.Payload = []byte(payload)
			e.Sig, _ = k.sign(statusMessage(e.Peer, e.Payload))
		})
	}
	var e statusEnvelope
	_ = json.Unmarshal(good, &e)
	payload := string(e.Payload)

	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{"claimed by another peer", edit(func(e *statusEnvelope) { e.Peer = other.id.String() }), ErrStatusVerifier},
		{"forged signature", edit(func(e *statusEnvelope) { e.Sig[3] ^= 1 }), ErrStatusVerifier},
		{"payload changed", edit(func(e *statusEnvelope) {
			e.Payload = bytes.Replace(e.Payload, []byte(`"ready"`), []byte(`"failed"`), 1)
		}), ErrStatusVerifier},
		{"manifest signature context", edit(func(e *statusEnvelope) {
			e.Sig, _ = k.sign(signedMessage(ManifestType, e.Payload))
		}), ErrStatusVerifier},
		{"unsigned", edit(func(e *statusEnvelope) { e.Sig = nil }), ErrInvalidStatus},
		{"wrong type", edit(func(e *statusEnvelope) { e.Type = ManifestType }), ErrInvalidStatus},
		{"peer with newline", edit(func(e *statusEnvelope) { e.Peer += "\nx" }), ErrInvalidStatus},
		{"too large", edit(func(e *statusEnvelope) { e.Type = strings.Repeat("x", MaxStatusSize) }), ErrTooLarge},
		{"truncated", good[:len(good)-3], ErrInvalidStatus},
		{"unknown field", append([]byte(`{"extra":1,`), good[1:]...), ErrInvalidStatus},
		{"non-canonical payload", resign(" " + payload), ErrInvalidStatus},
		{"unknown payload field", resign(`{"x":1,` + payload[1:]), ErrInvalidStatus},
		{"bad phase", resign(strings.Replace(payload, `"ready"`, `"done"`, 1)), ErrInvalidStatus},
		{"failed without reason", resign(strings.Replace(payload, `"ready"`, `"failed"`, 1)), ErrInvalidStatus},
	}
	for _, tc := range tests {
		if _, _, err := VerifyStatus(tc.input, verifyPeer); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestStatusValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(s *Status)
	}{
		{"bad name", func(s *Status) { s.Name = "A B" }},
		{"version 0", func(s *Status) { s.Version = 0 }},
		{"unknown state", func(s *Status) { s.State = "done" }},
		{"reason with newline", func(s *Status) { s.Reason = "a\nb" }},
		{"reason too long", func(s *Status) { s.Reason = strings.Repeat("x", MaxReasonLen+1) }},
		{"failed without reason", func(s *Status) { s.State = PhaseFailed }},
		{"ready with a profile compiling", func(s *Status) {
			for id := range s.Profiles {
				s.Profiles[id] = string(PhaseCompiling)
			}
		}},
		{"profile value ready", func(s *Status) {
			s.State = PhaseCompiling
			for id := range s.Profiles {
				s.Profiles[id] = string(PhaseReady)
			}
		}},
		{"profile id not a CID", func(s *Status) { s.Profiles["NPU"] = "pending" }},
		{"too many profiles", func(s *Status) {
			for i := range MaxProfiles {
				s.Profiles[testSource(t, "<net/>", fmt.Sprint(i)).ID] = "pending"
			}
		}},
		{"no time", func(s *Status) { s.Updated = time.Time{} }},
	}
	k := newAgentKey(t, 1)
	for _, tc := range tests {
		s := testStatus(t)
		tc.change(s)
		if _, err := SignStatus(s, k.id.String(), k.sign); !errors.Is(err, ErrInvalidStatus) {
			t.Errorf("%s: err = %v, want ErrInvalidStatus", tc.name, err)
		}
	}
	if _, err := SignStatus(testStatus(t), "", k.sign); !errors.Is(err, ErrInvalidStatus) {
		t.Errorf("empty peer: err = %v", err)
	}
	failing := func([]byte) ([]byte, error) { return nil, errors.New("key locked") }
	if _, err := SignStatus(testStatus(t), k.id.String(), failing); err == nil || !strings.Contains(err.Error(), "key locked") {
		t.Errorf("signer error: err = %v", err)
	}
}

func TestFleetView(t *testing.T) {
	t.Parallel()
	v := NewFleetView()
	at := func(version uint64, state Phase, d time.Duration) *Status {
		s := testStatus(t)
		s.Version, s.State, s.Updated = version, state, now.Add(d)
		if state != PhaseReady {
			for id := range s.Profiles {
				s.Profiles[id] = string(state)
			}
		}
		if state == PhaseFailed {
			s.Reason = "compiler crashed"
		}
		return s
	}
	steps := []struct {
		peer string
		s    *Status
		want bool
	}{
		{"peerB", at(3, PhaseFetching, 0), true},
		{"peerB", at(3, PhaseReady, time.Second), true},
		{"peerB", at(3, PhaseFetching, 0), false},            // a late, older report
		{"peerB", at(3, PhaseCompiling, time.Second), false}, // same time: first one kept
		{"peerB", at(2, PhaseReady, time.Hour), false},       // older version, however recent
		{"peerA", at(3, PhaseFailed, 0), true},
		{"peerC", at(2, PhaseReady, 0), true},
		{"peerD", at(4, PhaseCompiling, 0), true},
	}
	for i, st := range steps {
		got, err := v.Observe(st.peer, st.s)
		if err != nil || got != st.want {
			t.Fatalf("step %d: Observe = %v, %v; want %v", i, got, err, st.want)
		}
	}
	rows := v.Rows("detector")
	if len(rows) != 4 || rows[0].Peer != "peerA" || rows[1].State != PhaseReady || rows[1].Ready != 1 || rows[1].Profiles != 1 {
		t.Fatalf("rows = %+v", rows)
	}
	if rows[0].Reason != "compiler crashed" || rows[0].Ready != 0 {
		t.Errorf("failed row = %+v", rows[0])
	}
	if got, want := Summarize(rows, 3), (Summary{Peers: 4, Ready: 1, Failed: 1, Behind: 1, Ahead: 1}); got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	v.Forget("peerA")
	if rows := v.Rows("detector"); len(rows) != 3 {
		t.Errorf("after Forget: %d rows", len(rows))
	}
	if rows := v.Rows("camera"); len(rows) != 0 {
		t.Errorf("unknown rollout: %+v", rows)
	}
}

func TestFleetViewBounds(t *testing.T) {
	t.Parallel()
	v := NewFleetView()
	s := testStatus(t)
	for i := range MaxFleetPeers {
		if _, err := v.Observe(fmt.Sprintf("peer%d", i), s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Observe("onemore", s); !errors.Is(err, ErrFleetViewFull) {
		t.Fatalf("peer %d: err = %v, want ErrFleetViewFull", MaxFleetPeers+1, err)
	}
	newer := *s
	newer.Updated = now.Add(time.Minute)
	if ok, err := v.Observe("peer0", &newer); !ok || err != nil {
		t.Fatalf("a known peer at the limit: %v, %v", ok, err)
	}
	for i := range MaxFleetRollouts - 1 {
		o := *s
		o.Name = fmt.Sprintf("r%d", i)
		if _, err := v.Observe("peer0", &o); err != nil {
			t.Fatal(err)
		}
	}
	o := *s
	o.Name = "one-more"
	if _, err := v.Observe("peer0", &o); !errors.Is(err, ErrFleetViewFull) {
		t.Fatalf("rollout %d: err = %v, want ErrFleetViewFull", MaxFleetRollouts+1, err)
	}
}

func FuzzVerifyStatus(f *testing.F) {
	k := newAgentKey(f, 1)
	good, err := SignStatus(testStatus(f), k.id.String(), k.sign)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"type":"npu-agent/rollout-status/v1","peer":"x","payload":"e30=","sig":"AA=="}`))
	accept := func(string, []byte, []byte) error { return nil } // reach the payload decoder too
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, s, err := VerifyStatus(b, accept); err == nil {
			if err := s.Validate(); err != nil {
				t.Fatalf("accepted an invalid status: %v", err)
			}
		}
		// The only signatures the fuzzer has are k's, so whatever verifies for real is k's report.
		if p, _, err := VerifyStatus(b, verifyPeer); err == nil && p != k.id.String() {
			t.Fatalf("verified a report from %s", p)
		}
	})
}
