package engine

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/rollout"
)

// seedFleet is a Fleet whose only peer is a seed store: Fetch copies a blob from it, as the swarm would.
type seedFleet struct {
	seed    blobstore.Store
	target  blobstore.Store
	fetches atomic.Int32
}

func (f *seedFleet) Records(string, string) []blobstore.Record { return nil }

// Fetch moves c from the seed as p2p does: the manifest (checked against the CID), each chunk (checked by
// PutChunk), then Commit.
func (f *seedFleet) Fetch(ctx context.Context, c cid.Cid, _ func(done, total int64)) error {
	f.fetches.Add(1)
	m, err := f.seed.Manifest(ctx, c)
	if err != nil {
		return p2p.ErrNoPeers
	}
	if m.CID() != c {
		return blobstore.ErrInvalidData
	}
	if err := f.target.BeginPartial(ctx, m); err != nil {
		return err
	}
	var buf []byte
	for i := range m.Chunks {
		if buf, err = f.seed.ServeChunk(ctx, c, i, buf[:0]); err != nil {
			return err
		}
		if err := f.target.PutChunk(ctx, c, i, buf); err != nil {
			return err
		}
	}
	return f.target.Commit(ctx, c)
}

func (f *seedFleet) Publish(context.Context, blobstore.Record) error { return nil }

func (f *seedFleet) Coordinate(ctx context.Context, _ compile.FlightKey, fn func(context.Context) (cid.Cid, error), _ func() (cid.Cid, bool)) (string, error) {
	_, err := fn(ctx)
	return "", err
}

// memNet is a Net that keeps what is published; it signs with a real libp2p key.
type memNet struct {
	key  crypto.PrivKey
	id   peer.ID
	mu   sync.Mutex
	mans [][]byte
	sts  []rollout.Status
	// member decides Member; nil: everyone is a member.
	member func(peer string) bool
}

func newMemNet(t *testing.T) *memNet {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return &memNet{key: k, id: id}
}

func (n *memNet) Self() string                               { return n.id.String() }
func (n *memNet) Sign(msg []byte) ([]byte, error)            { return n.key.Sign(msg) }
func (n *memNet) VerifyPeer(p string, msg, sig []byte) error { return p2p.VerifySignature(p, msg, sig) }
func (n *memNet) Peers() []string                            { return nil }
func (n *memNet) Member(p string) bool                       { return n.member == nil || n.member(p) }
func (n *memNet) Open(Handlers) error                        { return nil }

func (n *memNet) PublishManifest(_ context.Context, signed []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mans = append(n.mans, signed)
	return nil
}

func (n *memNet) PublishStatus(_ context.Context, signed []byte) error {
	_, s, err := rollout.VerifyStatus(signed, n.VerifyPeer)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sts = append(n.sts, *s)
	return nil
}

func (n *memNet) statuses() []rollout.Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.sts)
}

// rolloutRig is an operator, a seed agent holding the source models, and a follower agent under test.
type rolloutRig struct {
	t        *testing.T
	op       ed25519.PrivateKey
	trust    rollout.TrustConfig
	seed     *Rollouts
	agent    *agent.Agent
	backend  *countingBackend
	fleet    *seedFleet
	net      *memNet
	r        *Rollouts
	kvDir    string
	modelDir string
	now      time.Time  // the clock's start, far from the real time so that a direct time.Now shows
	clock    *testClock // the engines' clock
}

func newRolloutRig(t *testing.T, host compat.Fingerprint) *rolloutRig {
	t.Helper()
	op, pub := rollout.GenerateKey()
	trust, err := rollout.NewTrustConfig([]string{rollout.FormatPublicKey(pub)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2031, 5, 4, 12, 0, 0, 0, time.UTC)
	rig := &rolloutRig{t: t, op: op, trust: trust, now: now, clock: &testClock{now: now}}
	seedAgent, _ := newAgent(t, openStore(t), host, 0)
	if rig.seed, err = rig.rollouts(seedAgent, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	store := openStore(t)
	rig.fleet = &seedFleet{seed: seedAgent.Store(), target: store}
	sim, err := compile.NewSim(host, compile.SimOptions{PayloadSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	rig.backend = &countingBackend{Backend: sim}
	if rig.agent, err = agent.New(agent.Options{Store: store, Backend: rig.backend, Host: host, Producer: "test", WorkDir: t.TempDir(), Fleet: rig.fleet}); err != nil {
		t.Fatal(err)
	}
	rig.net = newMemNet(t)
	rig.kvDir = t.TempDir()
	if rig.r, err = rig.rollouts(rig.agent, rig.kvDir, rig.net); err != nil {
		t.Fatal(err)
	}
	rig.modelDir = rig.r.opts.ModelsDir
	return rig
}

func (rig *rolloutRig) rollouts(a *agent.Agent, kvDir string, net Net) (*Rollouts, error) {
	kv, err := OpenFileKV(filepath.Join(kvDir, "rollouts"))
	if err != nil {
		return nil, err
	}
	return New(Options{
		Agent: a, Store: a.Store(), KV: kv, Trust: rig.trust, Tags: map[string]string{"site": "berlin"},
		ModelsDir: filepath.Join(kvDir, "models"), Net: net, Now: rig.clock.Now,
		RetryMin: time.Hour,
	})
}

// run runs the follower's Rollouts until the test ends.
func (rig *rolloutRig) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rig.r.Run(ctx) }()
	rig.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			rig.t.Errorf("Run: %v", err)
		}
	})
}

// source writes an IR model whose content depends on tag and stores it on the seed.
func (rig *rolloutRig) source(tag string) rollout.SourceModel {
	rig.t.Helper()
	dir := rig.t.TempDir()
	xml := filepath.Join(dir, "det.xml")
	if err := os.WriteFile(xml, []byte("<net name='"+tag+"'/>"), 0o644); err != nil {
		rig.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "det.bin"), bytes.Repeat([]byte(tag), 3000), 0o644); err != nil {
		rig.t.Fatal(err)
	}
	src, err := rig.seed.AddSource(context.Background(), xml)
	if err != nil {
		rig.t.Fatal(err)
	}
	return src
}

func (rig *rolloutRig) manifest(name string, v uint64, src rollout.SourceModel) *rollout.Manifest {
	return &rollout.Manifest{
		Name: name, Version: v, Created: rig.now.Add(-time.Minute), Expires: rig.now.Add(24 * time.Hour), Model: src,
		Profiles: []compile.Profile{{Device: "NPU", Shapes: map[string][]int64{"x": {1, 8}}}},
		Selector: map[string]string{"arch": "4000", "tag:site": "berlin"},
	}
}

func (rig *rolloutRig) sign(m *rollout.Manifest) []byte {
	rig.t.Helper()
	b, err := rollout.Sign(m, rig.op)
	if err != nil {
		rig.t.Fatal(err)
	}
	return b
}

// waitState waits until the follower reports state for version of name.
func (rig *rolloutRig) waitState(name string, version uint64, state rollout.Phase) rollout.Status {
	rig.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, ok := rig.r.currentStatus(name); ok && s.Version == version && s.State == state {
			return s
		}
		if time.Now().After(deadline) {
			s, _ := rig.r.currentStatus(name)
			rig.t.Fatalf("%s version %d did not become %s; last status %+v", name, version, state, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func pinned(t *testing.T, s blobstore.Store, blob string) bool {
	t.Helper()
	c, err := blobstore.ParseCID(blob)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Stat(context.Background(), c)
	if errors.Is(err, blobstore.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return info.Pinned
}

func TestRolloutPreparesAndRollsBack(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	rig.run()
	store := rig.agent.Store()
	m1, m2 := rig.source("one"), rig.source("two")

	// Version 1: fetched from the seed, checked, written out, compiled once, pinned, reported ready.
	if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 1, m1))); err != nil {
		t.Fatal(err)
	}
	s1 := rig.waitState("kiosk", 1, rollout.PhaseReady)
	if n := rig.backend.n.Load(); n != 1 {
		t.Errorf("%d compiles, want 1", n)
	}
	if n := rig.fleet.fetches.Load(); n != 2 {
		t.Errorf("%d source fetches, want 2 (xml and bin)", n)
	}
	for _, f := range m1.Files {
		got, err := os.ReadFile(filepath.Join(rig.modelDir, m1.ID, f.Name))
		if err != nil || int64(len(got)) != f.Size {
			t.Errorf("source file %s: %d bytes, %v", f.Name, len(got), err)
		}
		if !pinned(t, store, f.Blob) {
			t.Errorf("source blob %s of version 1 is not pinned", f.Blob)
		}
	}
	var blob1 string
	for _, b := range s1.Profiles {
		blob1 = b
	}
	if !pinned(t, store, blob1) {
		t.Errorf("compiled blob %s of version 1 is not pinned", blob1)
	}
	var phases []rollout.Phase
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		phases = phases[:0]
		for _, s := range rig.net.statuses() { // gossiped in the background
			if len(phases) == 0 || phases[len(phases)-1] != s.State {
				phases = append(phases, s.State)
			}
		}
		if len(phases) > 0 && phases[len(phases)-1] == rollout.PhaseReady || time.Now().After(deadline) {
			break
		}
	}
	if want := []rollout.Phase{"pending", "fetching", "compiling", "ready"}; !slices.Equal(phases, want) {
		t.Errorf("published phases %v, want %v", phases, want)
	}

	// Version 2, another model; version 1 stays pinned as the previous one.
	if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 2, m2))); err != nil {
		t.Fatal(err)
	}
	s2 := rig.waitState("kiosk", 2, rollout.PhaseReady)
	if n := rig.backend.n.Load(); n != 2 {
		t.Errorf("%d compiles after version 2, want 2", n)
	}
	if !pinned(t, store, blob1) {
		t.Error("version 1's blob was unpinned while it is the previous version")
	}

	// Rollback: version 3 names model 1 again. No fetch, no compile: its blobs were kept.
	fetches := rig.fleet.fetches.Load()
	if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 3, m1))); err != nil {
		t.Fatal(err)
	}
	s3 := rig.waitState("kiosk", 3, rollout.PhaseReady)
	if n := rig.backend.n.Load(); n != 2 || rig.fleet.fetches.Load() != fetches {
		t.Errorf("rollback compiled (%d compiles) or fetched (%d fetches, was %d)", n, rig.fleet.fetches.Load(), fetches)
	}
	if !maps2Equal(s3.Profiles, s1.Profiles) {
		t.Errorf("rollback resolved %v, version 1 had %v", s3.Profiles, s1.Profiles)
	}
	// Version 1 is dropped, but its blobs serve version 3; version 2's stay as the previous version.
	for _, b := range append(blobsOf(s1), blobsOf(s2)...) {
		if !pinned(t, store, b) {
			t.Errorf("blob %s unpinned; kept versions 3 and 2 use it", b)
		}
	}

	// Version 4 names model 1 too: version 2 is dropped and only it used model 2, so its blobs are released.
	if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 4, m1))); err != nil {
		t.Fatal(err)
	}
	rig.waitState("kiosk", 4, rollout.PhaseReady)
	for _, b := range blobsOf(s2) {
		if pinned(t, store, b) {
			t.Errorf("blob %s of dropped version 2 is still pinned", b)
		}
	}
	for _, f := range m2.Files {
		if pinned(t, store, f.Blob) {
			t.Errorf("source blob %s of dropped version 2 is still pinned", f.Blob)
		}
	}
	if !pinned(t, store, blob1) {
		t.Error("model 1's blob unpinned while versions 4 and 3 use it")
	}

	list, err := rig.r.List(context.Background())
	if err != nil || len(list) != 1 || list[0].Version != 4 || list[0].Previous != 3 || !list[0].Selected || list[0].State != rollout.PhaseReady {
		t.Fatalf("List = %+v, %v", list, err)
	}
	st, err := rig.r.Get(context.Background(), "kiosk")
	if err != nil || len(st.Peers) != 1 || !st.Peers[0].Self || st.Summary.Ready != 1 {
		t.Fatalf("Get = %+v, %v", st, err)
	}
}

func blobsOf(s rollout.Status) []string {
	var out []string
	for _, b := range s.Profiles {
		out = append(out, b)
	}
	return out
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestRolloutNotSelected(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	rig.run()
	m := rig.manifest("other-site", 1, rig.source("x"))
	m.Selector = map[string]string{"tag:site": "paris"}
	if err := rig.r.HandleManifest("peer-a", rig.sign(m)); err != nil {
		t.Fatal(err)
	}
	// Accepted and relayed, but nothing fetched, compiled or reported.
	deadline := time.Now().Add(5 * time.Second)
	for {
		list, err := rig.r.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 && !list[0].Selected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("List = %+v", list)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if rig.fleet.fetches.Load() != 0 || rig.backend.n.Load() != 0 || len(rig.net.statuses()) != 0 {
		t.Errorf("not selected, yet %d fetches, %d compiles, %d statuses", rig.fleet.fetches.Load(), rig.backend.n.Load(), len(rig.net.statuses()))
	}
	if len(rig.r.ManifestSnapshot()) != 1 {
		t.Error("an accepted manifest that does not select this host is not re-served to peers")
	}
}

// dirSnapshot reads every file under dir.
func dirSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// signPayload signs raw payload bytes, bypassing every check of rollout.Sign, as an attacker with the key (or a
// buggy publisher) could.
func signPayload(t *testing.T, payload []byte, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	type sig struct {
		KeyID string `json:"keyid"`
		Sig   []byte `json:"sig"`
	}
	env := struct {
		Type       string `json:"type"`
		Payload    []byte `json:"payload"`
		Signatures []sig  `json:"signatures"`
	}{Type: rollout.ManifestType, Payload: payload, Signatures: []sig{}}
	for _, k := range keys {
		msg := append([]byte(rollout.ManifestType+"\n"), payload...)
		env.Signatures = append(env.Signatures, sig{rollout.KeyID(k.Public().(ed25519.PublicKey)), ed25519.Sign(k, msg)})
	}
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRolloutRejectedManifestChangesNothing feeds attacks to an agent that has accepted version 2: none may
// change stored state, start a fetch, a compile or a status report.
func TestRolloutRejectedManifestChangesNothing(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	src := rig.source("good")
	v2 := rig.manifest("kiosk", 2, src)
	if _, err := rig.r.acc.Accept(rig.sign(v2), rig.now); err != nil {
		t.Fatal(err)
	}
	stranger, _ := rollout.GenerateKey()

	forged := rig.manifest("kiosk", 3, src)
	replayed := rig.manifest("kiosk", 1, src)
	expired := rig.manifest("kiosk", 3, src)
	expired.Created, expired.Expires = rig.now.Add(-48*time.Hour), rig.now.Add(-time.Hour)
	equivocating := rig.manifest("kiosk", 2, src)
	equivocating.Selector = nil
	hugeSigned := signPayload(t, bytes.Repeat([]byte(" "), rollout.MaxSignedSize), rig.op)
	mismatch := rig.manifest("kiosk", 3, src)
	mismatch.Model.Files = slices.Clone(src.Files)
	mismatch.Model.Files[0].SHA256 = strings.Repeat("0", 64) // the model ID no longer matches its files
	mismatchPayload, err := json.Marshal(mismatch)
	if err != nil {
		t.Fatal(err)
	}
	tampered := rig.sign(rig.manifest("kiosk", 3, src))
	var env map[string]any
	if err := json.Unmarshal(tampered, &env); err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(rig.manifest("kiosk", 30, src))
	env["payload"] = payload // other content under the original signature
	tampered, _ = json.Marshal(env)

	for _, tc := range []struct {
		name   string
		signed []byte
		want   error
	}{
		{"forged: unknown key", func() []byte { b, _ := rollout.Sign(forged, stranger); return b }(), rollout.ErrUnknownKey},
		{"forged: tampered payload", tampered, rollout.ErrBadSignature},
		{"unsigned", signPayload(t, payload), rollout.ErrUnsigned},
		{"replayed older version", rig.sign(replayed), rollout.ErrRollback},
		{"replayed same version", rig.sign(v2), rollout.ErrDuplicate},
		{"equivocation", rig.sign(equivocating), rollout.ErrEquivocation},
		{"expired", rig.sign(expired), rollout.ErrExpired},
		{"oversized", hugeSigned, rollout.ErrTooLarge},
		{"source mismatch", signPayload(t, mismatchPayload, rig.op), rollout.ErrSourceMismatch},
		{"not JSON", []byte("{{{{"), rollout.ErrInvalidManifest},
	} {
		before := dirSnapshot(t, rig.kvDir)
		err := rig.r.HandleManifest("attacker", tc.signed)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if after := dirSnapshot(t, rig.kvDir); !mapsEqualStr(before, after) {
			t.Errorf("%s: stored state changed", tc.name)
		}
		rig.r.mu.Lock()
		if len(rig.r.dirty) != 0 {
			t.Errorf("%s: scheduled a preparation", tc.name)
		}
		rig.r.mu.Unlock()
	}
	// Nothing ran: start the worker now and check that only version 2 (accepted before) is prepared.
	rig.run()
	rig.waitState("kiosk", 2, rollout.PhaseReady)
	for _, s := range rig.net.statuses() {
		if s.Version != 2 {
			t.Errorf("status for version %d", s.Version)
		}
	}
	st, err := rig.r.acc.State("kiosk")
	if err != nil || st.Version() != 2 || st.Previous != nil {
		t.Fatalf("state after the attacks: version %d, previous %v, %v", st.Version(), st.Previous, err)
	}
}

func mapsEqualStr(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestRolloutSourceMismatchAfterFetch: a manifest signed by a trusted key names blobs whose bytes are not the
// model it claims. The agent fetches them (it cannot know before), then fails for good: nothing is written out,
// nothing compiled, the failure is reported and not retried.
func TestRolloutSourceMismatchAfterFetch(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	rig.r.opts.RetryMin = 10 * time.Millisecond
	rig.run()
	good, other := rig.source("good"), rig.source("other")
	m := rig.manifest("kiosk", 1, good)
	m.Model.Files = slices.Clone(good.Files)
	m.Model.Files[1].Blob = other.Files[1].Blob // the xml's bytes are another model's
	if err := rig.r.HandleManifest("peer-a", rig.sign(m)); err != nil {
		t.Fatal(err)
	}
	s := rig.waitState("kiosk", 1, rollout.PhaseFailed)
	if !strings.Contains(s.Reason, "does not match") {
		t.Errorf("reason %q", s.Reason)
	}
	rig.clock.Advance(time.Second)     // every retry is due
	time.Sleep(200 * time.Millisecond) // twenty retry periods
	if n := rig.backend.n.Load(); n != 0 {
		t.Errorf("%d compiles of an unverified model", n)
	}
	if n := rig.fleet.fetches.Load(); n != 2 {
		t.Errorf("%d fetches; a source mismatch must not be retried", n)
	}
	if _, err := os.Stat(filepath.Join(rig.modelDir, good.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("model directory written for an unverified source: %v", err)
	}
}

func TestRolloutRetriesWhenSourceMissing(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	rig.r.opts.RetryMin, rig.r.opts.RetryMax = 20*time.Millisecond, 40*time.Millisecond
	rig.run()
	src := rig.source("late")
	// The seed does not hold the model yet: every fetch fails with ErrNoPeers.
	for _, f := range src.Files {
		c, _ := blobstore.ParseCID(f.Blob)
		if err := rig.seed.opts.Store.(blobstore.Store).Delete(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 1, src))); err != nil {
		t.Fatal(err)
	}
	s := rig.waitState("kiosk", 1, rollout.PhaseFailed)
	if !strings.Contains(s.Reason, "no peer") {
		t.Errorf("reason %q", s.Reason)
	}
	if s.Updated.Before(rig.now) || s.Updated.After(rig.now.Add(time.Millisecond)) {
		t.Errorf("status stamped %v, not on the engine's clock (%v)", s.Updated, rig.now)
	}
	rig.source("late") // the seed gets it; the retry is due on the engine's clock only
	time.Sleep(100 * time.Millisecond)
	if s, _ := rig.r.currentStatus("kiosk"); s.State != rollout.PhaseFailed {
		t.Fatalf("retried before the retry time on the engine's clock: %+v", s)
	}
	rig.clock.Advance(time.Second)
	rig.waitState("kiosk", 1, rollout.PhaseReady)
}

func TestRolloutStatusReports(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 1, rig.source("s")))); err != nil {
		t.Fatal(err)
	}
	other := newMemNet(t)
	report := func(n *memNet, s rollout.Status) []byte {
		b, err := rollout.SignStatus(&s, n.Self(), n.Sign)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	t0 := time.Now().UTC()
	compiling := report(other, rollout.Status{Name: "kiosk", Version: 1, State: rollout.PhaseCompiling, Updated: t0})
	failed := report(other, rollout.Status{Name: "kiosk", Version: 1, State: rollout.PhaseFailed, Reason: "out of memory", Updated: t0.Add(time.Second)})
	if err := rig.r.HandleStatus(failed); err != nil {
		t.Fatal(err)
	}
	forged := bytes.Replace(failed, []byte(other.Self()), []byte(rig.net.Self()), 1)
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"older":           {compiling, ErrStale},
		"again":           {failed, ErrStale},
		"unknown rollout": {report(other, rollout.Status{Name: "nope", Version: 1, State: rollout.PhasePending, Updated: t0}), ErrStale},
		"own":             {report(rig.net, rollout.Status{Name: "kiosk", Version: 1, State: rollout.PhasePending, Updated: t0}), ErrStale},
		"forged peer":     {forged, rollout.ErrStatusVerifier},
		"garbage":         {[]byte("{"), rollout.ErrInvalidStatus},
	} {
		if err := rig.r.HandleStatus(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	st, err := rig.r.Get(context.Background(), "kiosk")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].Peer != other.Self() || st.Peers[0].State != rollout.PhaseFailed || st.Summary.Failed != 1 {
		t.Fatalf("Get = %+v", st)
	}
	if snap := rig.r.StatusSnapshot(); len(snap) != 1 || !bytes.Equal(snap[0], failed) {
		t.Errorf("status snapshot %d documents, want the one report", len(snap))
	}
	if _, err := rig.r.Get(context.Background(), "nope"); !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("Get of an unknown rollout: %v", err)
	}
}

func TestRolloutPublish(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	signed := rig.sign(rig.manifest("kiosk", 1, rig.source("p")))
	for range 2 { // the same manifest again is gossiped again
		got, err := rig.r.Publish(context.Background(), signed)
		if err != nil || got.Version != 1 || !got.Selected {
			t.Fatalf("Publish = %+v, %v", got, err)
		}
	}
	rig.net.mu.Lock()
	n := len(rig.net.mans)
	rig.net.mu.Unlock()
	if n != 2 {
		t.Errorf("%d manifests gossiped, want 2", n)
	}
	if _, err := rig.r.Publish(context.Background(), []byte(`{}`)); !errors.Is(err, rollout.ErrInvalidManifest) {
		t.Errorf("Publish of an empty document: %v", err)
	}
}

func TestOneLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"two\nlines\t!", "two lines !"},
		{"bad \xff utf8", "bad ? utf8"},
		{strings.Repeat("é", 300), strings.Repeat("é", 256)},
	} {
		if got := oneLine(tc.in, 512); got != tc.want {
			t.Errorf("oneLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzHandleManifest: whatever a peer sends, a manifest that is not accepted leaves the stored state as it was
// and schedules nothing. The agent has accepted version 2; seeds are it, its replay and damaged forms.
func FuzzHandleManifest(f *testing.F) {
	store, err := badgerstore.Open(f.TempDir(), badgerstore.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { store.Close() })
	a, err := agent.New(agent.Options{Store: store, Host: lnl(), Producer: "fuzz", WorkDir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	op := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)) // fixed: seeds must verify in every worker
	trust, err := rollout.NewTrustConfig([]string{rollout.FormatPublicKey(op.Public().(ed25519.PublicKey))}, 1)
	if err != nil {
		f.Fatal(err)
	}
	kvDir := f.TempDir()
	kv, err := OpenFileKV(kvDir)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r, err := New(Options{Agent: a, Store: store, KV: kv, Trust: trust, ModelsDir: f.TempDir(), Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	src := rollout.SourceModel{Files: []rollout.SourceFile{
		{Role: "bin", Name: "m.bin", Size: 3, SHA256: sum("bin"), Blob: blobstore.DigestCID(sha256.Sum256([]byte("b"))).String()},
		{Role: "xml", Name: "m.xml", Size: 3, SHA256: sum("xml"), Blob: blobstore.DigestCID(sha256.Sum256([]byte("x"))).String()},
	}}
	if src.ID, err = compile.ModelID(src.ModelFiles()); err != nil {
		f.Fatal(err)
	}
	manifest := func(v uint64) []byte {
		b, err := rollout.Sign(&rollout.Manifest{Name: "kiosk", Version: v, Created: now.Add(-time.Hour), Expires: now.Add(time.Hour),
			Model: src, Profiles: []compile.Profile{{Device: "NPU"}}}, op)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	v2 := manifest(2)
	if err := r.HandleManifest("seed", v2); err != nil {
		f.Fatal(err)
	}
	f.Add(v2)
	f.Add(manifest(1))
	f.Add(bytes.Replace(v2, []byte(`"payload":"`), []byte(`"payload":"A`), 1))
	f.Add([]byte(`{"type":"npu-agent/rollout-manifest/v1","payload":"e30=","signatures":[]}`))
	f.Fuzz(func(t *testing.T, signed []byte) {
		r.mu.Lock()
		clear(r.dirty)
		r.mu.Unlock()
		before := dirSnapshot(t, kvDir)
		if err := r.HandleManifest("fuzz", signed); err == nil {
			return // signed by the operator's key and newer: accepting it is right
		}
		if after := dirSnapshot(t, kvDir); !mapsEqualStr(before, after) {
			t.Fatal("a rejected manifest changed the stored state")
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.dirty) != 0 {
			t.Fatal("a rejected manifest scheduled a preparation")
		}
	})
}

// Threat 9.2 "forged rollout status": reports signed by keys that are not fleet members (thousands of throwaway
// identities, relayed by one member) are ignored: they neither fake progress nor fill the fleet view, and a
// member's report still counts afterwards.
func TestThreatStrangerStatusIgnored(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 1, rig.source("s")))); err != nil {
		t.Fatal(err)
	}
	member := newMemNet(t)
	rig.net.member = func(p string) bool { return p == member.Self() }
	report := func(n *memNet, state rollout.Phase) []byte {
		s := rollout.Status{Name: "kiosk", Version: 1, State: state, Updated: time.Now().UTC()}
		if state == rollout.PhaseReady {
			s.Profiles = map[string]string{}
		}
		b, err := rollout.SignStatus(&s, n.Self(), n.Sign)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for range 200 {
		if err := rig.r.HandleStatus(report(newMemNet(t), rollout.PhaseCompiling)); !errors.Is(err, ErrNotMember) {
			t.Fatalf("stranger's report: %v, want ErrNotMember", err)
		}
	}
	s := rollout.Status{Name: "kiosk", Version: 1, State: rollout.PhaseFailed, Reason: "oom", Updated: time.Now().UTC()}
	b, err := rollout.SignStatus(&s, member.Self(), member.Sign)
	if err != nil {
		t.Fatal(err)
	}
	if err := rig.r.HandleStatus(b); err != nil {
		t.Fatalf("member's report: %v", err)
	}
	st, err := rig.r.Get(context.Background(), "kiosk")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].Peer != member.Self() || st.Summary.Failed != 1 {
		t.Fatalf("rows %+v, summary %+v; want only the member's failed report", st.Peers, st.Summary)
	}
	if n := len(rig.r.StatusSnapshot()); n != 1 {
		t.Errorf("%d reports relayed to pulling peers, want 1", n)
	}
}
