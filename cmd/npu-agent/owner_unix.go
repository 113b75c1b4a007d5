//go:build unix

package main

import (
	"os"
	"syscall"
)

// fileOwner is the uid owning path.
func fileOwner(path string) (int, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return -1, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1, nil
	}
	return int(st.Uid), nil
}
