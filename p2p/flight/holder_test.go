package flight

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestHolderWhileWaiting: while one peer compiles, the other's flight names it as the holder it waits for; the
// compiler names no one, and once the flight ended neither does.
func TestHolderWhileWaiting(t *testing.T) {
	t.Parallel()
	_, peers := newMemFleet(t, 2, fastConfig())
	var rec compiles
	started := make(chan peer.ID, 2)
	release := make(chan struct{})
	results := make(chan result, 2)
	for _, p := range peers {
		goDo(t.Context(), p, Request{Key: testKey, Compile: blocking(&rec, p.id, started, release)}, results)
	}
	compiler := awaitStart(t, started)
	waiter := peers[0]
	if waiter.id == compiler {
		waiter = peers[1]
	}
	var got peer.ID
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if got = waiter.c.Holder(testKey); got == compiler {
			break
		}
	}
	if got != compiler {
		t.Fatalf("the waiter's holder is %q, want the compiler %s", got, compiler)
	}
	for _, p := range peers {
		if p.id == compiler {
			if h := p.c.Holder(testKey); h != "" {
				t.Errorf("the compiler's holder is %s, want none", h)
			}
		}
	}
	close(release)
	checkServed(t, await(t, results, 2), compiler, RoleCompiled)
	for _, p := range peers {
		if h := p.c.Holder(testKey); h != "" {
			t.Errorf("%s: holder %s after the flight ended", p.id, h)
		}
	}
}
