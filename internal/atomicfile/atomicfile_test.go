package atomicfile

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// names lists dir's entries.
func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func TestWrite(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	tests := []struct {
		name    string
		old     string // existing content; "" for none
		write   func(path string) error
		want    string // content afterwards
		perm    fs.FileMode
		wantErr error
	}{
		{name: "create", write: func(p string) error { return WriteFile(p, []byte("new"), 0o644) }, want: "new", perm: 0o644},
		{name: "replace", old: "old", write: func(p string) error { return WriteFile(p, []byte("new"), 0o600) }, want: "new", perm: 0o600},
		{name: "stream", old: "old", write: func(p string) error {
			return Write(p, 0o640, func(w io.Writer) error { _, err := io.WriteString(w, "streamed"); return err })
		}, want: "streamed", perm: 0o640},
		{name: "stream fails", old: "old", write: func(p string) error {
			return Write(p, 0o644, func(w io.Writer) error { io.WriteString(w, "half"); return boom })
		}, want: "old", wantErr: boom},
		{name: "new", write: func(p string) error { return WriteNew(p, []byte("key"), 0o600) }, want: "key", perm: 0o600},
		{name: "new exists", old: "old", write: func(p string) error { return WriteNew(p, []byte("key"), 0o600) }, want: "old", wantErr: fs.ErrExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tt.old != "" {
				if err := os.WriteFile(path, []byte(tt.old), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := tt.write(path); !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			b, err := os.ReadFile(path)
			if err != nil || string(b) != tt.want {
				t.Fatalf("content %q, %v; want %q", b, err, tt.want)
			}
			if got := names(t, dir); len(got) != 1 || got[0] != "f" {
				t.Errorf("directory holds %q, want only f (no temporary file left)", got)
			}
			if tt.wantErr != nil || runtime.GOOS == "windows" {
				return
			}
			if st, err := os.Stat(path); err != nil || st.Mode().Perm() != tt.perm {
				t.Errorf("mode %v, %v; want %v", st.Mode().Perm(), err, tt.perm)
			}
		})
	}
}

// A relative path without a directory writes in the working directory.
func TestWriteRelative(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := WriteFile("rel", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "rel")); err != nil || string(b) != "x" {
		t.Fatalf("%q %v", b, err)
	}
}

func TestSyncDir(t *testing.T) {
	t.Parallel()
	if err := SyncDir(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		if err := SyncDir(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want ErrNotExist", err)
		}
	}
}
