//go:build unix

package share

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/npu-agent/npu-agent/blobstore"
)

// The daemon's user may give its entries only what Linux lets a file's owner give without CAP_CHOWN: itself as
// owner, a group it is in.
func TestCredCanOwnAndGroup(t *testing.T) {
	t.Parallel()
	daemon := Cred{UID: 999, GID: 999, Groups: []int{1001}}
	rootNoCaps := Cred{UID: 0, GID: 0} // root under CapabilityBoundingSet=
	for _, tc := range []struct {
		name         string
		c            Cred
		uid, gid     int
		ownOK, grpOK bool
	}{
		{"unset", daemon, -1, -1, true, true},
		{"own uid, primary group", daemon, 999, 999, true, true},
		{"supplementary group", daemon, -1, 1001, true, true},
		{"another user", daemon, 1001, -1, false, true},
		{"root as owner", daemon, 0, -1, false, true},
		{"group not a member of", daemon, -1, 1002, true, false},
		{"root without CAP_CHOWN", rootNoCaps, 1001, 1001, false, false},
		{"CAP_CHOWN", Cred{UID: 999, GID: 999, CanChown: true}, 1001, 1002, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if err := tc.c.CanOwn(tc.uid); (err == nil) != tc.ownOK || (err != nil && !errors.Is(err, ErrCannotOwn)) {
				t.Errorf("CanOwn(%d) = %v, want ok=%t", tc.uid, err, tc.ownOK)
			}
			if err := tc.c.CanGroup(tc.gid); (err == nil) != tc.grpOK || (err != nil && !errors.Is(err, ErrCannotOwn)) {
				t.Errorf("CanGroup(%d) = %v, want ok=%t", tc.gid, err, tc.grpOK)
			}
		})
	}
}

// A directory's refusal is told from any other failure, with the fix for it.
func TestFailReason(t *testing.T) {
	t.Parallel()
	pe := func(err error) error { return dirError{&fs.PathError{Op: "openat", Path: ".npu-agent-x", Err: err}} }
	for _, tc := range []struct {
		err    error
		reason string
		fix    string
	}{
		{pe(syscall.EROFS), failReadOnly, "ReadWritePaths="},
		{pe(syscall.EACCES), failPermission, "chmod 2770"},
		{pe(syscall.EPERM), failPermission, "leave owner unset"},
		{pe(syscall.ENOSPC), failOther, ""},
		{fmt.Errorf("fetch: %w", errors.New("no peer has it")), failOther, ""},
	} {
		reason, fix := failReason(tc.err)
		if reason != tc.reason || (tc.fix == "") != (fix == "") || !strings.Contains(fix, tc.fix) {
			t.Errorf("failReason(%v) = %q, %q; want %q with %q", tc.err, reason, fix, tc.reason, tc.fix)
		}
	}
}

// recordsAgent counts the sharer's look-ups of peers' records; nothing else of it is used.
type recordsAgent struct {
	Agent
	lookups int
}

func (a *recordsAgent) CacheKey(string) (string, error) { return "key", nil }

func (a *recordsAgent) CacheRecords(context.Context, string) ([]blobstore.Record, error) {
	a.lookups++
	return nil, nil
}

// A directory that refuses writes is logged once with the fix, counted per attempt, and not tried again (for
// any entry) until its backoff ends; another failure backs off the entry only.
func TestDirectoryRefusalLoggedOnce(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	ag := &recordsAgent{}
	reg := prometheus.NewRegistry()
	s, err := New(Options{Dirs: []Dir{{Path: t.TempDir(), Build: "b"}}, Agent: ag, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	d := s.dirs[0]
	refused := dirError{&fs.PathError{Op: "openat", Path: ".npu-agent-x", Err: syscall.EROFS}}
	for range 3 {
		if !s.failed(d, refused) {
			t.Fatal("a read-only directory is not the directory's failure")
		}
	}
	if s.failed(d, errors.New("fetch: no peer has it")) {
		t.Fatal("a fetch failure blocks the directory")
	}
	if n := strings.Count(logs.String(), "cannot write the cache directory"); n != 1 {
		t.Errorf("%d warnings for one refusing directory, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "ReadWritePaths=") {
		t.Errorf("the warning does not say the fix:\n%s", logs.String())
	}
	if v := testutil.ToFloat64(s.fails.WithLabelValues(failReadOnly)); v != 3 {
		t.Errorf("read_only failures = %v, want 3", v)
	}
	if v := testutil.ToFloat64(s.fails.WithLabelValues(failOther)); v != 1 {
		t.Errorf("other failures = %v, want 1", v)
	}
	s.populate(context.Background(), d)
	if ag.lookups != 0 {
		t.Errorf("a blocked directory looked up %d times for entries to write", ag.lookups)
	}
	d.blocked.until = time.Now().Add(-time.Second)
	s.populate(context.Background(), d)
	if ag.lookups != 1 {
		t.Errorf("a directory past its backoff looked up %d times, want 1", ag.lookups)
	}
}
