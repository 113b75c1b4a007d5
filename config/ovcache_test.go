package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOVCacheSection(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	body := "ovcache:\n  max_entry_size: 1GiB\n  dirs:\n    - path: /var/cache/app\n      owner: app\n      mode: \"0440\"\n      openvino_build: 2026.1.0-1\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.OVCache.Dirs) != 1 || c.OVCache.Dirs[0].Owner != "app" || c.OVCache.MaxEntrySize != 1<<30 {
		t.Fatalf("%+v", c.OVCache)
	}
	for _, bad := range []string{"    - path: relative\n", "    - path: /x\n      mode: \"999\"\n"} {
		if err := os.WriteFile(p, []byte("ovcache:\n  dirs:\n"+bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p, nil); err == nil || !strings.Contains(err.Error(), "ovcache.dirs[0]") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
