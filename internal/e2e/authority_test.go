//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/internal/hostile"
)

// TestDaemonFleetAuthority (docs/design.md 6.2 "Member certificates", 9.2): the operator's commands make an
// authority, certificates and a revocation list; two daemons with certificates serve each other; an outsider
// host is refused; revoking the fetching member through the seed's revocations file disconnects it.
func TestDaemonFleetAuthority(t *testing.T) {
	requireLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cli := func(args ...string) map[string]any {
		t.Helper()
		cmd := exec.CommandContext(ctx, npuAgent, append([]string{"--json", "fleet-key"}, args...)...)
		cmd.Env = daemonEnv()
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("fleet-key %s: %v", strings.Join(args, " "), err)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("fleet-key %s: %q: %v", args[0], out, err)
		}
		return m
	}
	authKey := filepath.Join(dir, "authority.key")
	pub, _ := cli("authority", "--out", authKey)["public_key"].(string)
	member := func(name string) (Config, peer.ID) {
		c := Config{Dir: filepath.Join(dir, name), P2P: true, Port: freeLoopbackPort(t), FleetAuthority: pub,
			MemberCertFile: filepath.Join(dir, name+".cert")}
		id, err := WriteIdentity(filepath.Join(c.Dir, "data"))
		if err != nil {
			t.Fatal(err)
		}
		cli("issue", "--authority", authKey, "--peer", id.String(), "--out", c.MemberCertFile, "--valid", "1h")
		return c, id
	}
	seedCfg, seedID := member("seed")
	seedCfg.RevocationsFile = filepath.Join(dir, "revoked.pem")
	seedCfg.CompileTime, seedCfg.BlobSize = 100*time.Millisecond, 4<<20
	seed := startLocal(ctx, t, "seed", seedCfg)
	seedAddr := "/ip4/127.0.0.1/tcp/" + strconv.Itoa(seedCfg.Port) + "/p2p/" + seedID.String()
	fetcherCfg, fetcherID := member("fetcher")
	fetcherCfg.Peers, fetcherCfg.CompileTime = []string{seedAddr}, never
	fetcher := startLocal(ctx, t, "fetcher", fetcherCfg)

	model, err := WriteModel(dir, "authority-model", 32<<10)
	if err != nil {
		t.Fatal(err)
	}
	want, err := fetchLocal(ctx, seed, model)
	if err != nil {
		t.Fatal(err)
	}
	if err := fetcher.WaitPeerRecords(ctx, seedID.String(), 1); err != nil {
		t.Fatal(err)
	}
	got, err := fetchLocal(ctx, fetcher, model)
	if err != nil {
		t.Fatal(err)
	}
	if got.Source != "peer" || got.SHA256 != want.SHA256 {
		t.Fatalf("member fetch: source %s sha %s, want peer %s", got.Source, got.SHA256, want.SHA256)
	}

	// An outsider connects (TLS authenticates it) but proves nothing: the seed closes the connection.
	out, err := hostile.NewPeer(hostile.PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	ai, _ := peer.AddrInfoFromString(seedAddr)
	if err := out.Connect(ctx, *ai); err != nil {
		t.Fatal(err)
	}
	if err := seed.WaitLog(ctx, "outsider refused", func(l string) bool {
		return strings.Contains(l, "peer refused: no valid membership proof") && strings.Contains(l, out.ID().String())
	}); err != nil {
		t.Error(err)
	}

	cli("revoke", "--authority", authKey, "--list", seedCfg.RevocationsFile, "--peer", fetcherID.String())
	if err := seed.WaitLog(ctx, "revoked member disconnected", LogMsg("revoked member disconnected")); err != nil {
		t.Fatal(err)
	}
	if err := fetcher.poll(ctx, "no connected peer", func(ctx context.Context) (bool, error) {
		st, err := fetcher.API().Status(ctx)
		return err == nil && !slices.ContainsFunc(st.Peers, func(p api.Peer) bool { return p.Connected }), err
	}); err != nil {
		t.Error(err)
	}
}
