//go:build !unix

// Package cputime reads the CPU time this process has used, for benchmarks that report CPU per byte.
package cputime

import "time"

// Self returns 0: the CPU time is not read on this system (the benchmarks that use it run on Linux).
func Self() time.Duration { return 0 }
