package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/p2p"
)

// The fleet authority's commands make what the daemon's config check accepts, and config check refuses a
// certificate no member would accept (docs/design.md 6.2, 9.1 "config check").
func TestFleetAuthorityCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	jsonOut := func(args ...string) map[string]any {
		t.Helper()
		out, stderr, code := run(t, append([]string{"--json"}, args...)...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, stderr)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("%s: %q: %v", strings.Join(args, " "), out, err)
		}
		return m
	}
	cfgFile := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("data_dir: "+data+"\nruntime_dir: "+filepath.Join(dir, "run")+"\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := cfgFile("plain.yaml", "")
	if _, _, code := run(t, "--config", plain, "fleet-key", "peer-id"); code == 0 {
		t.Error("peer-id without an identity succeeded")
	}
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := crypto.MarshalPrivateKey(k)
	os.MkdirAll(data, 0o700)
	if err := os.WriteFile(filepath.Join(data, p2p.IdentityFile), kb, 0o600); err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	if got := jsonOut("--config", plain, "fleet-key", "peer-id")["peer"]; got != id.String() {
		t.Fatalf("peer-id %v, want %s", got, id)
	}

	authKey, otherKey := filepath.Join(dir, "a.key"), filepath.Join(dir, "b.key")
	pub := jsonOut("fleet-key", "authority", "--out", authKey)["public_key"].(string)
	jsonOut("fleet-key", "authority", "--out", otherKey)
	if _, _, code := run(t, "fleet-key", "authority", "--out", authKey); code == 0 {
		t.Error("authority replaced an existing key")
	}
	cert, otherCert := filepath.Join(dir, "m.cert"), filepath.Join(dir, "o.cert")
	jsonOut("fleet-key", "issue", "--authority", authKey, "--peer", id.String(), "--out", cert)
	jsonOut("fleet-key", "issue", "--authority", otherKey, "--peer", id.String(), "--out", otherCert)
	list := filepath.Join(dir, "revoked.pem")
	_, other1, _ := crypto.GenerateEd25519Key(nil)
	o1, _ := peer.IDFromPublicKey(other1)
	if r := jsonOut("fleet-key", "revoke", "--authority", authKey, "--list", list, "--peer", o1.String()); r["seq"] != 1.0 {
		t.Errorf("first list %v", r)
	}
	if r := jsonOut("fleet-key", "revoke", "--authority", authKey, "--list", list, "--peer", id.String()); r["seq"] != 2.0 ||
		len(r["revoked"].([]any)) != 2 {
		t.Errorf("second list %v", r)
	}
	if r := jsonOut("fleet-key", "revoke", "--authority", authKey, "--list", list, "--forget", o1.String()); r["seq"] != 3.0 ||
		len(r["revoked"].([]any)) != 1 || r["revoked"].([]any)[0] != id.String() {
		t.Errorf("list after forgetting %s: %v", o1, r)
	}
	for _, args := range [][]string{{"--forget", o1.String()}, {"--forget", "nonsense"}, {}} {
		args = append([]string{"fleet-key", "revoke", "--authority", authKey, "--list", list}, args...)
		if _, _, code := run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}

	strangerCert := filepath.Join(dir, "s.cert")
	jsonOut("fleet-key", "issue", "--authority", authKey, "--peer", o1.String(), "--out", strangerCert)
	p2pSection := func(certPath string) string {
		return "p2p:\n  fleet_authority: \"" + pub + "\"\n  member_cert_file: " + certPath + "\n"
	}
	if _, stderr, code := run(t, "--config", cfgFile("good.yaml", p2pSection(cert)), "config", "check"); code != 0 {
		t.Errorf("config check of a good authority config: exit %d: %s", code, stderr)
	}
	for name, tc := range map[string]struct{ body, want string }{
		"another authority's certificate":   {p2pSection(otherCert), "member_cert_file"},
		"another host's certificate":        {p2pSection(strangerCert), "this host is " + id.String()},
		"both a fleet key and an authority": {p2pSection(cert) + "  fleet_key_file: " + authKey + "\n", "not both"},
		"authority without certificate":     {"p2p:\n  fleet_authority: \"" + pub + "\"\n", "go together"},
		"bad authority key":                 {"p2p:\n  fleet_authority: \"npu-agent-ed25519:eA==\"\n  member_cert_file: " + cert + "\n", "fleet_authority"},
		"list of another authority":         {p2pSection(cert) + "  revocations_file: " + otherCert + "\n", "revocations_file"},
	} {
		_, stderr, code := run(t, "--config", cfgFile("bad.yaml", tc.body), "config", "check")
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: config check exit %d, want 2 naming %q: %s", name, code, tc.want, stderr)
		}
	}
}
