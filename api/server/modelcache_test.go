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
	time.Sleep(2 * racyMargin) // the files' ctime must precede the hashing for the entry to be cached

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

func TestModelCacheRacy(t *testing.T) {
	t.Parallel()
	start := time.Now()
	for _, tc := range []struct {
		name  string
		ctime time.Time
		racy  bool
	}{
		{"changed long before", start.Add(-time.Second), false},
		{"changed just before the margin", start.Add(-racyMargin - time.Millisecond), false},
		{"coarse clock behind a write after start", start.Add(-racyMargin / 2), true},
		{"at start", start, true},
		{"after start", start.Add(time.Millisecond), true},
	} {
		if got := racy(tc.ctime, start); got != tc.racy {
			t.Errorf("%s: racy = %v, want %v", tc.name, got, tc.racy)
		}
	}
}
