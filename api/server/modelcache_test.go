package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestModelCacheFollowsFileChanges(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	xml, bin := filepath.Join(dir, "m.xml"), filepath.Join(dir, "m.bin")
	write := func(p, body string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(xml, "<net/>")
	write(bin, "weights-1")
	time.Sleep(10 * time.Millisecond) // the files' ctime must precede the hashing for the entry to be cached

	var c modelCache
	m1, err := c.load(context.Background(), xml)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.m[xml]; !ok {
		t.Fatal("unchanged model was not cached")
	}
	again, err := c.load(context.Background(), xml)
	if err != nil || again.ID != m1.ID {
		t.Fatalf("cached load = %s, %v; want %s", again.ID, err, m1.ID)
	}
	write(bin, "weights-2") // same size, new content
	m2, err := c.load(context.Background(), xml)
	if err != nil {
		t.Fatal(err)
	}
	if m2.ID == m1.ID {
		t.Fatal("a rewritten .bin kept the old model ID")
	}
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	if _, err := c.load(context.Background(), xml); err == nil {
		t.Fatal("a model whose .bin is gone still loads from the cache")
	}
}
