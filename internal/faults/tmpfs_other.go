//go:build !linux

package faults

import "testing"

// Tmpfs skips the test: mounting a tmpfs is done on Linux only.
func Tmpfs(t testing.TB, size int64) string {
	t.Helper()
	t.Skip("full-disk tests mount a tmpfs: Linux only")
	return ""
}

// Free skips the test: statfs is used on Linux only.
func Free(t testing.TB, dir string) int64 {
	t.Helper()
	t.Skip("full-disk tests: Linux only")
	return 0
}
