package blobstore

import "context"

type fetchSizeKey struct{}

// WithExpectedSize returns ctx carrying the size the blob fetched under it must have (a rollout manifest gives
// its source files' sizes). A fetch that learns from the blob's manifest that it is larger aborts before it
// stores a chunk (docs/design.md 6.8). It travels in the context so that the agent between the caller and p2p
// need not know about it.
func WithExpectedSize(ctx context.Context, size uint64) context.Context {
	return context.WithValue(ctx, fetchSizeKey{}, size)
}

// ExpectedSize returns the size WithExpectedSize set, if any.
func ExpectedSize(ctx context.Context) (uint64, bool) {
	n, ok := ctx.Value(fetchSizeKey{}).(uint64)
	return n, ok
}
