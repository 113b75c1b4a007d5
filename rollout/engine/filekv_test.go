package engine

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/npu-agent/npu-agent/rollout"
)

func TestFileKV(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "kv")
	kv, err := OpenFileKV(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get("state/kiosk"); !errors.Is(err, rollout.ErrNotFound) {
		t.Fatalf("Get of a missing key: %v", err)
	}
	for k, v := range map[string]string{"state/kiosk": "one", "state/a.b-c_d": "two", "pins": "three"} {
		if err := kv.Put(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Put("state/kiosk", []byte("replaced")); err != nil {
		t.Fatal(err)
	}
	if got, err := kv.Get("state/kiosk"); err != nil || string(got) != "replaced" {
		t.Fatalf("Get = %q, %v", got, err)
	}
	// A temp file left by a crash mid-write is not a key.
	if err := os.WriteFile(filepath.Join(dir, "state", ".tmp-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys("state/")
	slices.Sort(keys)
	if err != nil || !slices.Equal(keys, []string{"state/a.b-c_d", "state/kiosk"}) {
		t.Fatalf("Keys = %q, %v", keys, err)
	}
	if err := kv.Delete("state/kiosk"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete("state/kiosk"); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if _, err := kv.Get("state/kiosk"); !errors.Is(err, rollout.ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}

	for _, bad := range []string{"", "/", "state/", "../x", "state/../pins", ".hidden", "State/x", "a//b", "x/" + string(bytes.Repeat([]byte("a"), 129))} {
		if err := kv.Put(bad, []byte("x")); err == nil {
			t.Errorf("Put(%q) accepted", bad)
		}
		if _, err := kv.Get(bad); err == nil || errors.Is(err, rollout.ErrNotFound) {
			t.Errorf("Get(%q): %v, want a key error", bad, err)
		}
	}
	if err := kv.Put("big", make([]byte, MaxKVValue+1)); err == nil {
		t.Error("Put of an oversized value accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), make([]byte, MaxKVValue+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get("big"); err == nil {
		t.Error("Get of an oversized file accepted")
	}
}
