package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

// progressFleet is a blockingFleet that also says whom a wait is for and how many peers a fetch receives from; with
// wait set it advertises nothing and its single flight waits (for holder) until the context ends.
type progressFleet struct {
	blockingFleet
	wait   bool
	mu     sync.Mutex
	holder string
}

func (f *progressFleet) setHolder(h string) {
	f.mu.Lock()
	f.holder = h
	f.mu.Unlock()
}

var _ agent.FleetProgress = (*progressFleet)(nil)

func (f *progressFleet) Records(modelID, profileID string) []blobstore.Record {
	if f.wait {
		return nil
	}
	return f.blockingFleet.Records(modelID, profileID)
}

func (f *progressFleet) Coordinate(ctx context.Context, _ compile.FlightKey, _ func(context.Context) (cid.Cid, error), _ func() (cid.Cid, bool)) (string, error) {
	close(f.fetching)
	<-ctx.Done()
	return "", ctx.Err()
}

func (f *progressFleet) Holder(compile.FlightKey) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holder
}
func (f *progressFleet) FetchPeers(cid.Cid) int { return 3 }

// TestStatusJobPeers: status and jobs name the member a wait is for and the peer a fetch comes from, by hostname
// when the member table has one, and count the peers a fetch receives from; jobs does not list the peers.
func TestStatusJobPeers(t *testing.T) {
	t.Parallel()
	const known, unknown = "12D3KooWknown", "12D3KooWunknown"
	for _, c := range []struct {
		name     string
		wait     bool
		peer     string
		kind     agent.Phase
		hostname string
		peers    int
	}{
		{"wait for a member with a record", true, known, agent.PhaseWait, "npu-07", 0},
		{"wait for a member without one", true, unknown, agent.PhaseWait, "", 0},
		{"fetch", false, known, agent.PhaseFetch, "npu-07", 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fleet := &progressFleet{blockingFleet: blockingFleet{fetching: make(chan struct{})}, wait: c.wait}
			fleet.setHolder(c.peer)
			svc, xml := newService(t, fleet)
			var peerLists atomic.Int32
			svc.Peers = func() []api.Peer {
				peerLists.Add(1)
				return []api.Peer{{ID: known, Hostname: "npu-07"}, {ID: "other", Hostname: "x"}}
			}
			svc.PeerHostname = func(id string) string { return map[string]string{known: "npu-07", "other": "x"}[id] }
			fleet.rec = peerRecord(t, xml, testCID([]byte("b")), c.peer)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := svc.Ensure(ctx, api.EnsureRequest{Model: xml, Profile: testProfile()})
				done <- err
			}()
			<-fleet.fetching
			// A wait learns its holder within a poll; the second status comes after the flight ended (no holder
			// any more) while the wait goes on.
			for i := range 2 {
				var st api.Status
				for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					var err error
					if st, err = svc.Status(context.Background()); err != nil {
						t.Fatal(err)
					}
					if len(st.Jobs) == 1 && st.Jobs[0].From != "" || time.Now().After(end) {
						break
					}
				}
				lists := peerLists.Load()
				jobs, err := svc.Jobs(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if peerLists.Load() != lists {
					t.Error("jobs listed the peers")
				}
				for _, got := range []struct {
					what string
					jobs []api.Job
				}{{"status", st.Jobs}, {"jobs", jobs}} {
					if j := got.jobs; len(j) != 1 || j[0].Kind != c.kind || j[0].From != c.peer ||
						j[0].FromHostname != c.hostname || j[0].Peers != c.peers {
						t.Errorf("%s %d: jobs %+v, want a %s job naming %s (%q) with %d peers", got.what, i, j, c.kind,
							c.peer, c.hostname, c.peers)
					}
				}
				fleet.setHolder("")
				time.Sleep(600 * time.Millisecond) // three of the agent's holder polls
			}
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled ensure: %v", err)
			}
		})
	}
}
