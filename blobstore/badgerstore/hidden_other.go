//go:build !linux

package badgerstore

import "os"

// createHidden creates a named temporary file in dir for an export; a process killed meanwhile leaves it.
func createHidden(dir, base string) (f *os.File, tmpName string, err error) {
	f, err = os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, "", err
	}
	return f, f.Name(), nil
}

// publish renames the complete, synced file over path.
func publish(f *os.File, tmpName, path string) error {
	if err := os.Rename(tmpName, path); err != nil {
		os.Remove(tmpName)
		return err
	}
	return nil
}
