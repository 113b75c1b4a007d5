package compile

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestCallerMay(t *testing.T) {
	t.Parallel()
	const owner, group = 1000, 2000
	for _, tc := range []struct {
		name   string
		caller Caller
		mode   fs.FileMode
		want   bool
	}{
		{"owner reads 0600", Caller{UID: owner, GID: 9}, 0o600, true},
		{"owner without read bit, others may", Caller{UID: owner, GID: 9}, 0o044, false},
		{"group member reads 0640", Caller{UID: 7, GID: 9, Groups: []uint32{group}}, 0o640, true},
		{"primary group reads 0640", Caller{UID: 7, GID: group}, 0o640, true},
		{"non-member refused 0640", Caller{UID: 7, GID: 9}, 0o640, false},
		{"group member without group bit", Caller{UID: 7, GID: group}, 0o604, false},
		{"other reads 0644", Caller{UID: 7, GID: 9}, 0o644, true},
		{"root reads 0000", Caller{UID: 0, GID: 0}, 0, true},
		{"anonymous reads 0644", Caller{Anonymous: true}, 0o644, true},
		{"anonymous refused 0640", Caller{Anonymous: true, UID: owner, GID: group}, 0o640, false},
	} {
		if got := tc.caller.may(owner, group, tc.mode, permRead); got != tc.want {
			t.Errorf("%s: may = %t, want %t", tc.name, got, tc.want)
		}
	}
}

// TestOpenModelFileAsCaller runs as root in CI (files are chowned to other uids); elsewhere the ownership rows
// are skipped.
func TestOpenModelFileAsCaller(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // the test's own directories, searchable by all
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, mode fs.FileMode, uid int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("model bytes"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(p, uid, uid); err != nil {
				t.Skip("cannot chown (not root):", err)
			}
		}
		return p
	}
	private := write("private.onnx", 0o600, 4242)
	public := write("public.onnx", 0o644, 4242)
	own := write("own.onnx", 0o600, 4343)
	daemonDir := filepath.Join(dir, "daemon")
	if err := os.Mkdir(daemonDir, 0o755); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(daemonDir, "identity.key")
	if err := os.WriteFile(key, []byte("key"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.onnx")
	if err := os.Symlink(key, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.onnx")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.onnx")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	closed := filepath.Join(dir, "closed")
	if err := os.Mkdir(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	hidden := filepath.Join(closed, "m.onnx")
	if err := os.WriteFile(hidden, []byte("m"), 0o644); err != nil {
		t.Fatal(err)
	}
	user := &Caller{UID: 4343, GID: 4343, Deny: []string{daemonDir}}
	for _, tc := range []struct {
		name   string
		caller *Caller
		path   string
		want   error // nil: opens
	}{
		{"other's private file", user, private, ErrNotPermitted},
		{"other's public file", user, public, nil},
		{"own private file", user, own, nil},
		{"symlink into the daemon's files", user, link, ErrNotPermitted},
		{"root: symlink into the daemon's files", &Caller{Deny: []string{daemonDir}}, link, ErrNotPermitted},
		{"file in a directory the caller cannot search", user, hidden, ErrNotPermitted},
		{"missing file in a directory the caller cannot search", user, filepath.Join(closed, "nope.onnx"), ErrNotPermitted},
		{"missing file", user, filepath.Join(dir, "nope.onnx"), fs.ErrNotExist},
		{"FIFO", user, fifo, ErrInvalidModel},
		{"/dev/zero", user, zero, ErrInvalidModel},
		{"FIFO, no caller", nil, fifo, ErrInvalidModel},
		{"anonymous: public file", &Caller{Anonymous: true}, public, nil},
		{"anonymous: own-looking private file", &Caller{Anonymous: true, UID: 4343}, own, ErrNotPermitted},
		{"relative path", user, "m.onnx", ErrNotPermitted},
	} {
		ctx := context.Background()
		if tc.caller != nil {
			ctx = WithCaller(ctx, tc.caller)
		}
		start := time.Now()
		f, _, err := OpenModelFile(ctx, tc.path)
		if f != nil {
			f.Close()
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("%s: took %v", tc.name, took)
		}
		if (tc.want == nil) != (err == nil) || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestLoadModelStopsWithContext(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "big.onnx")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := LoadModelContext(ctx, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("hashing went on for %v after the context ended", took)
	}
}
