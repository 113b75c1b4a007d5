// Package atomicfile writes files so that after a crash the path holds the old content or the new one, never a
// mix: the bytes go to a temporary file in the same directory, which is synced, renamed over the path (or linked
// to it, for WriteNew), and then the directory is synced so that the new name is durable too.
//
// Temporary files are named "." + base + ".tmp-" + random, next to the path: hidden, on the same filesystem (so
// the rename is atomic), and removed on any error. A process killed in the middle leaves one behind.
package atomicfile

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile writes data to path atomically, replacing any file there. The file gets exactly perm, whatever the
// umask.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return write(path, perm, bytesWriter(data), true)
}

// Write is WriteFile with the content streamed by fn. If fn returns an error nothing is published: path is left
// as it was and fn's error is returned as is.
func Write(path string, perm fs.FileMode, fn func(io.Writer) error) error {
	return write(path, perm, fn, true)
}

// WriteNew is WriteFile for a file that must not replace anything: if path exists it fails with an error that
// matches fs.ErrExist and leaves path alone. (The temporary file is linked to path, which, unlike a rename, does
// not replace.)
func WriteNew(path string, data []byte, perm fs.FileMode) error {
	return write(path, perm, bytesWriter(data), false)
}

func bytesWriter(data []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}
}

func write(path string, perm fs.FileMode, fn func(io.Writer) error, replace bool) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp, closed := f.Name(), false
	defer func() {
		if !closed {
			f.Close()
		}
		if err != nil || !replace { // after a link, path names the file and the temporary name goes
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := fn(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	closed = true
	if err := f.Close(); err != nil {
		return err
	}
	if replace {
		err = os.Rename(tmp, path)
	} else {
		err = os.Link(tmp, path)
	}
	if err != nil {
		return err
	}
	return SyncDir(dir)
}
