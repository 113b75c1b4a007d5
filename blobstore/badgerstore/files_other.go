//go:build !linux

package badgerstore

import (
	"errors"
	"os"
)

// preallocate is a no-op off Linux: the file is filled as chunks arrive.
func preallocate(*os.File, int64, int64) {}

// startWriteback is a no-op off Linux: the final fsync writes everything.
func startWriteback(*os.File) {}

// throttleWriteback is a no-op off Linux: the final fsync writes everything.
func throttleWriteback(*os.File) {}

// openDirect refuses off Linux: chunks go through the page cache.
func openDirect(string) (*os.File, error) { return nil, errors.ErrUnsupported }
