//go:build !linux

package badgerstore

import "os"

// preallocate is a no-op off Linux: the file is filled as chunks arrive.
func preallocate(*os.File, int64, int64) {}

// startWriteback is a no-op off Linux: the final fsync writes everything.
func startWriteback(*os.File) {}

// throttleWriteback is a no-op off Linux: the final fsync writes everything.
func throttleWriteback(*os.File) {}
