// Package faults holds the helpers of npu-agent's process-level fault tests: a child process (the test binary
// re-executed in a helper mode, or the npu-agent binary) that reports progress on its output and is killed at
// chosen points, a size-limited tmpfs to fill, deterministic blob data of any size, and the switch between the
// short versions (run by `make test`) and the long ones (NPU_TEST_FAULTS=long, `make test-faults`).
//
// The tests themselves live next to what they test (blobstore/badgerstore) and, for the CLI, in this package.
package faults

import (
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"testing"
)

// Environment variables that steer the fault tests.
const (
	// ModeEnv set to "long" runs the long versions: more kill points, bigger blobs, a bigger tmpfs.
	ModeEnv = "NPU_TEST_FAULTS"
	// SeedEnv replays a run: every fault test logs the seed it drew its kill points from.
	SeedEnv = "NPU_TEST_FAULTS_SEED"
)

// Long reports whether the long versions were asked for.
func Long() bool { return os.Getenv(ModeEnv) == "long" }

// Pick returns short in the normal test run and long under NPU_TEST_FAULTS=long.
func Pick[T any](short, long T) T {
	if Long() {
		return long
	}
	return short
}

// Rand returns the random source of a test's kill points, seeded from SeedEnv or at random, and logs the seed
// so that a failure can be replayed.
func Rand(t testing.TB) *mrand.Rand {
	t.Helper()
	var seed uint64
	if s := os.Getenv(SeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: not an unsigned integer", SeedEnv, s)
		}
	} else {
		var b [8]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
		seed = binary.LittleEndian.Uint64(b[:])
	}
	t.Logf("fault seed %d (replay with %s=%d)", seed, SeedEnv, seed)
	return mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}
