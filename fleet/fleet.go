// Package fleet is the daemon's membership in the fleet over libp2p: the p2p node, the fleet-wide single flight
// on its pubsub, the adapter that makes them the agent's Fleet, the rollout channels the rollout engine talks
// over, and the translation of the config file's p2p section. Fleet.Run owns all of it.
package fleet

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/p2p/flight"
)

var _ agent.Fleet = (*Fleet)(nil)

// recordWait bounds how long a waiter that heard a peer's DONE waits for that peer's record: gossip and DONE
// travel separately, and the record usually follows within milliseconds.
const recordWait = 30 * time.Second

// Rank orders the members of one compatibility class for the fleet single flight: a blob compiled on firmware
// MI minor m serves every host of the class with minor >= m, so the lowest minor compiles (section 6 of
// docs/design.md). Unknown MI ranks 0: such hosts fall back to exact driver equality, which the class holds.
func Rank(f compat.Fingerprint) int {
	_, minor, ok := strings.Cut(f.FirmwareMI, ".")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(minor)
	if err != nil || n < 0 || n > 65535 {
		return 0
	}
	return n
}

// Records returns the verified, trusted peer records for (model, profile).
func (f *Fleet) Records(modelID, profileID string) []blobstore.Record {
	srs := f.node.Records(modelID, profileID)
	out := make([]blobstore.Record, len(srs))
	for i, sr := range srs {
		out[i] = sr.Record
	}
	return out
}

// Fetch swarms blob c from the producers of its records (dialled directly: on a sparse overlay the compiler is
// rarely a neighbour; membership put their addresses in the peerstore) and every peer connected now or later.
func (f *Fleet) Fetch(ctx context.Context, c cid.Cid, progress func(done, total int64)) error {
	var from []peer.ID
	for _, sr := range f.node.Records("", "") {
		if sr.Blob.Equals(c) && sr.Signer != f.node.ID() && !slices.Contains(from, sr.Signer) {
			from = append(from, sr.Signer)
		}
	}
	return f.node.FetchAll(ctx, c, from, progress)
}

var _ agent.FleetProgress = (*Fleet)(nil)

// Holder names the member whose compile this node's fleet single flight for key waits for ("" if none).
func (f *Fleet) Holder(key compile.FlightKey) string {
	if p := f.coord.Holder(key); p != "" {
		return p.String()
	}
	return ""
}

// FetchPeers is how many peers the fetch of c under way receives chunks from now.
func (f *Fleet) FetchPeers(c cid.Cid) int { return f.node.FetchPeers(c) }

// Publish signs and announces a record.
func (f *Fleet) Publish(ctx context.Context, r blobstore.Record) error {
	_, err := f.node.Publish(ctx, r)
	return err
}

// Coordinate runs the fleet single flight for key.
func (f *Fleet) Coordinate(ctx context.Context, key compile.FlightKey, compileFn func(context.Context) (cid.Cid, error), ready func() (cid.Cid, bool)) (string, error) {
	out, err := f.coord.Do(ctx, flight.Request{Key: key, Rank: f.rank, Compile: compileFn, Ready: ready})
	if err != nil {
		return "", err
	}
	f.log.Debug("fleet single flight", "role", out.Role.String(), "from", out.From, "blob", out.CID)
	if out.Role != flight.RoleWaited {
		return "", nil
	}
	f.awaitRecord(ctx, ready)
	return out.From.String(), nil
}

// OnRecord calls fn, which must not block, for every new verified and trusted record until cancel is called.
func (f *Fleet) OnRecord(fn func()) (cancel func()) {
	return f.node.OnRecord(func(p2p.SignedRecord) { fn() })
}

// awaitRecord waits, bounded, until ready reports a usable record.
func (f *Fleet) awaitRecord(ctx context.Context, ready func() (cid.Cid, bool)) {
	wake := make(chan struct{}, 1)
	stop := f.node.OnRecord(func(p2p.SignedRecord) {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	defer stop()
	timer := time.NewTimer(recordWait)
	defer timer.Stop()
	for {
		if _, ok := ready(); ok {
			return
		}
		select {
		case <-wake:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}
