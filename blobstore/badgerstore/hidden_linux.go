package badgerstore

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// createHidden creates a file in dir that has no name until publish gives it one (O_TMPFILE), so that a process
// killed in the middle of an export leaves nothing behind. Where the filesystem cannot, it falls back to a named
// temporary file, which a kill leaves.
func createHidden(dir, base string) (f *os.File, tmpName string, err error) {
	f, err = os.OpenFile(dir, unix.O_TMPFILE|os.O_WRONLY, 0o644)
	if err == nil {
		return f, "", nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, "", err
	}
	f, err = os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, "", err
	}
	return f, f.Name(), nil
}

// publish names the complete, synced file f as path, replacing what was there, atomically: an unnamed file gets
// a temporary name first (link), then renamed over path. Only a kill between the two leaves the temporary name.
func publish(f *os.File, tmpName, path string) error {
	if tmpName == "" {
		tmpName = filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-"+rand.Text())
		err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, tmpName, unix.AT_SYMLINK_FOLLOW)
		if errors.Is(err, unix.ENOENT) { // no /proc: linking by descriptor needs CAP_DAC_READ_SEARCH
			err = unix.Linkat(int(f.Fd()), "", unix.AT_FDCWD, tmpName, unix.AT_EMPTY_PATH)
		}
		if err != nil {
			return fmt.Errorf("name %s: %w", tmpName, err)
		}
	}
	if err := os.Rename(tmpName, path); err != nil {
		os.Remove(tmpName)
		return err
	}
	return nil
}
