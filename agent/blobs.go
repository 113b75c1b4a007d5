package agent

import (
	"context"
	"errors"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

// What callers above the agent (the rollout engine) use to get blobs, in types of the packages below the agent,
// so they can declare the interface they need without importing this package.

// errNoFleet: FetchBlob was asked for a blob and this agent runs alone.
var errNoFleet = errors.New("it is not in the store and there is no fleet to fetch it from")

// EnsureBlob is Ensure for callers that need only the blob and where it came from. fetching, which may be nil,
// hears true while chunks come from peers and false while the blob is compiled or waited for.
func (a *Agent) EnsureBlob(ctx context.Context, model compile.Model, profile compile.Profile, fetching func(bool)) (cid.Cid, blobstore.Source, error) {
	var progress Progress
	if fetching != nil {
		progress = func(phase Phase, _, _ int64) { fetching(phase == PhaseFetch) }
	}
	res, err := a.Ensure(ctx, model, profile, progress)
	if err != nil {
		return cid.Undef, "", err
	}
	return res.CID, res.Source, nil
}

// FetchBlob brings blob c from the fleet into the store, verified; gc leaves the partial blob alone meanwhile.
// Without a fleet it fails at once.
func (a *Agent) FetchBlob(ctx context.Context, c cid.Cid) error {
	if a.opts.Fleet == nil {
		return errNoFleet
	}
	release := a.use(c) // a partial blob is a gc candidate like any other
	defer release()
	return a.opts.Fleet.Fetch(ctx, c, nil)
}
