//go:build unix

package share_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
	"github.com/npu-agent/npu-agent/ovcache/share"
)

// TestListPrune: `cache ls` judges each entry for this host, `cache prune` removes exactly the stale ones, never
// follows a link or touches a FIFO, and a populated entry it prunes is not taken for the application's rejection.
// An application upgrade (a newer entry of another build) is followed and remembered across restarts.
func TestListPrune(t *testing.T) {
	ctx := context.Background()
	p := &peers{}
	a, b := newHost(t, p, lnl(), "A"), newHost(t, p, lnl(), "B")
	sa := a.sharer(t, ovcachetest.Build, 0)
	newB := func() *share.Sharer {
		s, err := share.New(share.Options{Dirs: []share.Dir{{Path: b.dir, DefaultBuild: ovcachetest.Build}},
			Agent: b.ag, StateDir: b.state, Settle: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	sb := newB()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// A's entry reaches B (B's build from its DefaultBuild, the probe's).
	must(os.WriteFile(filepath.Join(a.dir, "10.blob"), entry(ovcachetest.Build, 1), 0o400))
	passes(ctx, 3, sa, sb)
	if _, err := os.Stat(filepath.Join(b.dir, "10.blob")); err != nil {
		t.Fatalf("not populated: %v", err)
	}

	// B's application is upgraded: its new entry teaches B the new build, and 10.blob turns stale.
	const newBuild = "2026.1.0-30000-upgraded"
	must(os.WriteFile(filepath.Join(b.dir, "20.blob"), entry(newBuild, 2), 0o400))
	old := time.Now().Add(-time.Hour)
	otherCompiler := ovcachetest.Entry(ovcache.Header{Build: newBuild, FileInfo: "0"}, false,
		ovcachetest.Blob(ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 5), 1000, 3))
	weightless := ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4)
	weightless.InitSizes = []uint64{10}
	files := map[string][]byte{
		"30.blob": otherCompiler,                 // stale: the rules refuse its compiler here
		"40.blob": []byte("garbage"),             // stale once a minute old
		"41.blob": []byte("still being written"), // not stale: fresh
		"50.blob": ovcachetest.Entry(ovcache.Header{Build: newBuild, FileInfo: "0"}, false, ovcachetest.Blob(weightless, 1000, 4)),
		"60.txt":  []byte("not an entry"),
	}
	for n, data := range files {
		must(os.WriteFile(filepath.Join(b.dir, n), data, 0o600))
	}
	must(os.Chtimes(filepath.Join(b.dir, "40.blob"), old, old))
	outside := filepath.Join(t.TempDir(), "victim.blob")
	must(os.WriteFile(outside, []byte("x"), 0o600))
	must(os.Symlink(outside, filepath.Join(b.dir, "70.blob")))
	must(syscall.Mkfifo(filepath.Join(b.dir, "80.blob"), 0o600))
	passes(ctx, 3, sb)

	want := map[string]bool{"10.blob": true, "20.blob": false, "30.blob": true, "40.blob": true, "41.blob": false, "50.blob": false}
	check := func(s *share.Sharer) {
		t.Helper()
		list, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != len(want) {
			t.Errorf("listed %+v, want %v", list, want)
		}
		for _, e := range list {
			if stale, ok := want[e.Name]; !ok || stale != e.Stale || (e.Stale && e.Reason == "") {
				t.Errorf("%s: stale %v (%s), want %v", e.Name, e.Stale, e.Reason, stale)
			}
			if (e.Name == "10.blob") != (e.Blob != "") || (e.Name == "50.blob") != e.Weightless {
				t.Errorf("%s: blob %q weightless %v", e.Name, e.Blob, e.Weightless)
			}
		}
	}
	check(sb)
	dry, err := sb.Prune(ctx, true)
	if err != nil || len(dry) != 3 {
		t.Fatalf("dry run: %+v, %v", dry, err)
	}
	for n := range want {
		if _, err := os.Lstat(filepath.Join(b.dir, n)); err != nil {
			t.Fatalf("a dry run removed %s", n)
		}
	}
	// Restarted: the learned build is remembered.
	sb = newB()
	check(sb)
	removed, err := sb.Prune(ctx, false)
	if err != nil || len(removed) != 3 {
		t.Fatalf("prune: %+v, %v", removed, err)
	}
	for n, stale := range want {
		if _, err := os.Lstat(filepath.Join(b.dir, n)); (err == nil) == stale {
			t.Errorf("%s: present %v after prune, stale %v", n, err == nil, stale)
		}
	}
	for _, n := range []string{"60.txt", "70.blob", "80.blob"} {
		if _, err := os.Lstat(filepath.Join(b.dir, n)); err != nil {
			t.Errorf("prune removed %s", n)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Error("prune followed a link")
	}
	passes(ctx, 3, sb)
	key, _ := b.ag.CacheKey(ovcachetest.Build)
	if neg, _ := b.store.Records(ctx, "10.blob", key); hasKind(neg, ovcache.RejectedKind) {
		t.Error("a pruned entry was announced as rejected by the application")
	}
	if _, err := os.Lstat(filepath.Join(b.dir, "10.blob")); err == nil {
		t.Error("a pruned entry of the old build was written again")
	}
}

// TestPopulateOwnerAndMode: a populated entry gets the configured owner, group and mode (root only: a chown to
// another user needs CAP_CHOWN), and no temporary file stays behind.
func TestPopulateOwnerAndMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	ctx := context.Background()
	p := &peers{}
	a, b := newHost(t, p, lnl(), "A"), newHost(t, p, lnl(), "B")
	sa := a.sharer(t, ovcachetest.Build, 0)
	sb, err := share.New(share.Options{
		Dirs:  []share.Dir{{Path: b.dir, SetOwner: true, UID: 65534, GID: 65533, Mode: 0o444, Build: ovcachetest.Build}},
		Agent: b.ag, StateDir: b.state, Settle: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "5.blob"), entry(ovcachetest.Build, 5), 0o400); err != nil {
		t.Fatal(err)
	}
	passes(ctx, 3, sa, sb)
	fi, err := os.Lstat(filepath.Join(b.dir, "5.blob"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65533 || fi.Mode().Perm() != 0o444 {
		t.Errorf("populated entry uid %d gid %d mode %v; want 65534 65533 0444", st.Uid, st.Gid, fi.Mode().Perm())
	}
	if names, _ := os.ReadDir(b.dir); len(names) != 1 {
		t.Errorf("B's directory holds %d files", len(names))
	}
}
