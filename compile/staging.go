package compile

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// staging is a private directory next to the output path where a compiler writes; commit renames the blob into
// place, so OutPath holds a whole blob or nothing. Same directory, so the rename never crosses filesystems.
type staging struct {
	dir  string // the private directory
	path string // where the compiler writes the blob
	out  string // the final path
}

func newStaging(out string) (*staging, error) {
	dir, err := os.MkdirTemp(filepath.Dir(out), ".npu-agent-compile-*")
	if err != nil {
		return nil, fmt.Errorf("creating staging directory for %s: %w", out, err)
	}
	return &staging{dir: dir, path: filepath.Join(dir, filepath.Base(out)), out: out}, nil
}

// commit checks that the blob exists and is not empty, syncs it, renames it to the output path and syncs the
// directory. It returns the blob's size.
func (s *staging) commit() (int64, error) {
	f, err := os.Open(s.path)
	if os.IsNotExist(err) {
		return 0, fmt.Errorf("%w: %s was not written", ErrNoOutput, filepath.Base(s.out))
	}
	if err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%w: output is not a regular file", ErrNoOutput)
	}
	if err == nil && st.Size() == 0 {
		err = fmt.Errorf("%w: output is empty", ErrNoOutput)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if err := os.Rename(s.path, s.out); err != nil {
		return 0, fmt.Errorf("moving blob into place: %w", err)
	}
	return st.Size(), atomicfile.SyncDir(filepath.Dir(s.out))
}

// cleanup removes the staging directory and whatever the compiler left in it.
func (s *staging) cleanup() { _ = os.RemoveAll(s.dir) }
