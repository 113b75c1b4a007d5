//go:build !linux

package badgerstore

import "math"

// freeSpace is unknown off Linux (npu-agent's only target): the store does not refuse writes early there.
func freeSpace(string) (uint64, error) { return math.MaxUint64 / 2, nil }
