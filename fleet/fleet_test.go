package fleet

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/rollout"
	"github.com/npu-agent/npu-agent/rollout/engine"
)

func TestRank(t *testing.T) {
	t.Parallel()
	for mi, want := range map[string]int{"11.4": 4, "11": 0, "": 0, "11.x": 0, "11.-1": 0, "11.65536": 0, "11.65535": 65535} {
		if got := Rank(compat.Fingerprint{FirmwareMI: mi}); got != want {
			t.Errorf("Rank(%q) = %d, want %d", mi, got, want)
		}
	}
}

func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.P2P.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.P2P.MDNS, cfg.P2P.AllowLoopback = false, true
	return cfg
}

// Errors in the p2p section are config.ErrInvalid (the CLI's usage errors) and read as before.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		edit func(*config.Config)
		msg  string
	}{
		"listen":    {func(c *config.Config) { c.P2P.Listen = []string{"nope"} }, `p2p.listen: "nope": `},
		"peers":     {func(c *config.Config) { c.P2P.Peers = []string{"/nope"} }, `p2p.peers: "/nope": `},
		"allowlist": {func(c *config.Config) { c.P2P.Allowlist = []string{"x"} }, `p2p.allowlist: "x" is not a peer ID: `},
		"producers": {func(c *config.Config) { c.P2P.TrustedProducers = []string{"x"} }, `p2p.trusted_producers: "x" is not a peer ID: `},
		"fleet key": {func(c *config.Config) { c.P2P.FleetKeyFile = filepath.Join(t.TempDir(), "none") }, "p2p.fleet_key_file: "},
	} {
		cfg := testConfig(t)
		tc.edit(&cfg)
		_, err := p2pConfig(cfg)
		if !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: %v is not config.ErrInvalid", name, err)
			continue
		}
		if got := err.Error(); len(got) < len(tc.msg) || got[:len(tc.msg)] != tc.msg {
			t.Errorf("%s: %q, want it to start with %q", name, got, tc.msg)
		}
	}
	if _, err := p2pConfig(testConfig(t)); err != nil {
		t.Fatal(err)
	}
}

// One step: engine.New opens the rollout channels on the fleet's node; Run closes everything when ctx ends.
func TestRunAndRolloutChannels(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	store, err := badgerstore.Open(filepath.Join(cfg.DataDir, "store"), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, err := New(ctx, cfg, store, compat.Fingerprint{FirmwareMI: "11.4"}, "test", nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()

	net := f.RolloutNet()
	if err := net.PublishStatus(ctx, []byte("x")); err == nil {
		t.Fatal("channels open before the engine was built")
	}
	if net.Self() != f.ID() {
		t.Errorf("Self %s, ID %s", net.Self(), f.ID())
	}
	_, pub := rollout.GenerateKey()
	trust, err := rollout.NewTrustConfig([]string{rollout.FormatPublicKey(pub)}, 1)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := engine.OpenFileKV(filepath.Join(cfg.DataDir, "rollouts"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.New(engine.Options{Agent: nopEnsurer{}, Store: store, KV: kv, Trust: trust,
		ModelsDir: filepath.Join(cfg.DataDir, "models"), Net: net}); err != nil {
		t.Fatal(err)
	}
	if err := net.PublishStatus(ctx, []byte("x")); err != nil {
		t.Fatalf("channels not open after engine.New: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if addrs := f.node.Host().Network().ListenAddresses(); len(addrs) != 0 {
		t.Errorf("still listening on %v after Run returned", addrs)
	}
}

// nopEnsurer stands for the agent: the test prepares nothing.
type nopEnsurer struct{}

func (nopEnsurer) Host() compat.Fingerprint { return compat.Fingerprint{} }
func (nopEnsurer) EnsureBlob(context.Context, compile.Model, compile.Profile, func(bool)) (cid.Cid, blobstore.Source, error) {
	return cid.Undef, "", errors.New("no")
}
func (nopEnsurer) FetchBlob(context.Context, cid.Cid) error { return errors.New("no") }
func (nopEnsurer) IndexCacheEntry(context.Context, string, string, cid.Cid) (bool, error) {
	return false, errors.New("no")
}

// TestConnBoundsDefaults: the config file's default connection bounds are the node's, and reach it.
func TestConnBoundsDefaults(t *testing.T) {
	t.Parallel()
	def := config.Default()
	if def.P2P.ConnLow != p2p.DefaultConnLow || def.P2P.ConnHigh != p2p.DefaultConnHigh {
		t.Errorf("config default bounds %d/%d, p2p's %d/%d", def.P2P.ConnLow, def.P2P.ConnHigh, p2p.DefaultConnLow,
			p2p.DefaultConnHigh)
	}
	cfg := testConfig(t)
	cfg.P2P.ConnLow, cfg.P2P.ConnHigh = 5, 9
	pc, err := p2pConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pc.ConnLow != 5 || pc.ConnHigh != 9 {
		t.Errorf("p2p config bounds %d/%d, want 5/9", pc.ConnLow, pc.ConnHigh)
	}
}
