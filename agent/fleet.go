package agent

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/p2p/flight"
)

// recordWait bounds how long a waiter that heard a peer's DONE waits for that peer's record: gossip and DONE
// travel separately, and the record usually follows within milliseconds.
const recordWait = 30 * time.Second

// P2PFleet is the Fleet of a daemon: records and swarm fetches from a p2p.Node, the fleet-wide single flight
// from a flight.Coordinator on the same libp2p host.
type P2PFleet struct {
	node  *p2p.Node
	coord *flight.Coordinator
	rank  int
	log   *slog.Logger
	stop  func()
}

var _ Fleet = (*P2PFleet)(nil)

// NewP2PFleet joins node and coord; new records wake waiting flights.
func NewP2PFleet(node *p2p.Node, coord *flight.Coordinator, host compat.Fingerprint, log *slog.Logger) *P2PFleet {
	f := &P2PFleet{node: node, coord: coord, rank: Rank(host), log: log}
	f.stop = node.OnRecord(func(p2p.SignedRecord) { coord.Notify() })
	return f
}

// Close stops waking flights; the node and coordinator are closed by their owner.
func (f *P2PFleet) Close() { f.stop() }

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
func (f *P2PFleet) Records(modelID, profileID string) []blobstore.Record {
	srs := f.node.Records(modelID, profileID)
	out := make([]blobstore.Record, len(srs))
	for i, sr := range srs {
		out[i] = sr.Record
	}
	return out
}

// Fetch swarms blob c from every connected peer that has chunks of it.
func (f *P2PFleet) Fetch(ctx context.Context, c cid.Cid, progress func(done, total int64)) error {
	return f.node.Fetch(ctx, c, nil, progress)
}

// Publish signs and announces a record.
func (f *P2PFleet) Publish(ctx context.Context, r blobstore.Record) error {
	_, err := f.node.Publish(ctx, r)
	return err
}

// Coordinate runs the fleet single flight for key.
func (f *P2PFleet) Coordinate(ctx context.Context, key compile.FlightKey, compileFn func(context.Context) (cid.Cid, error), ready func() (cid.Cid, bool)) (string, error) {
	out, err := f.coord.Do(ctx, flight.Request{Key: key, Rank: f.rank, Compile: compileFn, Ready: ready})
	if err != nil {
		return "", err
	}
	f.log.Info("fleet single flight", "role", out.Role.String(), "from", out.From, "blob", out.CID)
	if out.Role != flight.RoleWaited {
		return "", nil
	}
	f.awaitRecord(ctx, ready)
	return out.From.String(), nil
}

// awaitRecord waits, bounded, until ready reports a usable record.
func (f *P2PFleet) awaitRecord(ctx context.Context, ready func() (cid.Cid, bool)) {
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
