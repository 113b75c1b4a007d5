package p2p

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

// gatedStore holds Manifest calls until release is closed, telling entered when one arrives.
type gatedStore struct {
	blobstore.Store
	entered chan struct{}
	release chan struct{}
}

func (s *gatedStore) Manifest(ctx context.Context, c cid.Cid) (*blobstore.Manifest, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.Store.Manifest(ctx, c)
}

// Regression: a flight ranked its peers by score (which takes the node's lock) while holding the flight's lock,
// and joinFlight takes them in the other order, so a Fetch whose flight goroutine reached the manifest step while
// another caller was joining (or before its own joinFlight returned) hung the whole node. The test holds the
// node's lock as a joining caller does, lets the flight reach that step, and checks that the flight's lock is
// free meanwhile, as the joining caller needs it.
func TestFetchRanksPeersWithoutFlightLock(t *testing.T) {
	t.Parallel()
	f := startNode(t, "", nil)
	for range 2 { // two peers, so ranking compares scores
		connect(t, f, startNode(t, "", nil))
	}
	gs := &gatedStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{})}
	f.Node.store = gs
	blob := testCID("held by nobody")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- f.Fetch(ctx, blob, nil, nil) }()
	select {
	case <-gs.entered:
	case <-ctx.Done():
		t.Fatal("the flight never asked the store for the manifest")
	}

	f.mu.Lock()
	fl := f.flights[blob]
	close(gs.release)
	// Give the flight time to take whatever locks it takes before it needs the node's lock.
	time.Sleep(200 * time.Millisecond)
	free := false
	for deadline := time.Now().Add(2 * time.Second); !free && time.Now().Before(deadline); {
		if free = fl.mu.TryLock(); free {
			fl.mu.Unlock()
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	f.mu.Unlock()
	if !free {
		t.Error("the flight holds its lock while it waits for the node's lock: a joining Fetch would deadlock")
	}
	if err := <-res; !errors.Is(err, ErrNoPeers) {
		t.Errorf("fetch: %v, want ErrNoPeers", err)
	}
}
