// Package packaging holds the Debian packaging (systemd unit, default config, nfpm config, maintainer
// scripts); these tests check them.
package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/npu-agent/npu-agent/config"
)

// The shipped config is valid, and lists exactly the built-in defaults (so the file documents them truthfully).
func TestDefaultConfig(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load("config.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want, err := yaml.Marshal(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("packaging/config.yaml differs from config.Default():\n--- file\n%s\n--- default\n%s", got, want)
	}
	// Every option appears in the file, so operators see them all.
	var keys map[string]any
	raw, _ := os.ReadFile("config.yaml")
	if err := yaml.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	var all map[string]any
	if err := yaml.Unmarshal(want, &all); err != nil {
		t.Fatal(err)
	}
	for _, k := range missingKeys(all, keys, "") {
		t.Errorf("option %s is not in packaging/config.yaml", k)
	}
}

func missingKeys(want, have map[string]any, prefix string) []string {
	var missing []string
	for k, v := range want {
		hv, ok := have[k]
		if !ok {
			missing = append(missing, prefix+k)
			continue
		}
		if sub, ok := v.(map[string]any); ok {
			hsub, _ := hv.(map[string]any)
			missing = append(missing, missingKeys(sub, hsub, prefix+k+".")...)
		}
	}
	return missing
}

func TestUnit(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("npu-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(raw), "\n") {
		lines[strings.TrimSpace(l)] = true
	}
	for _, d := range []string{
		"User=npu-agent", "Group=npu-agent", "StateDirectory=npu-agent", "RuntimeDirectory=npu-agent",
		"RuntimeDirectoryMode=0750", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only",
		"PrivateTmp=yes", "ReadWritePaths=/var/lib/npu-agent", "DevicePolicy=closed", "DeviceAllow=char-accel rw",
		"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "SystemCallFilter=@system-service",
		"CapabilityBoundingSet=", "ExecStart=/usr/bin/npu-agent daemon --config /etc/npu-agent/config.yaml",
	} {
		if !lines[d] {
			t.Errorf("unit lacks %q", d)
		}
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	// verify wants ExecStart's binary to exist.
	dir := t.TempDir()
	unit := strings.ReplaceAll(string(raw), "ExecStart=/usr/bin/npu-agent", "ExecStart=/bin/true")
	path := filepath.Join(dir, "npu-agent.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestMaintainerScripts(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	out, err := exec.Command("bash", "test-scripts.sh", "scripts").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestDeb builds the package and checks it (slow: a static build and nfpm); NPU_TEST_DEB=1 runs it.
func TestDeb(t *testing.T) {
	if os.Getenv("NPU_TEST_DEB") != "1" {
		t.Skip("set NPU_TEST_DEB=1 to build and check the .deb")
	}
	for _, tool := range []string{"make", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	out, err := exec.Command("make", "-C", "..", "test-deb").CombinedOutput()
	if err != nil {
		t.Fatalf("make test-deb: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
