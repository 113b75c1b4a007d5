package tick

import (
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEvery(t *testing.T) {
	var calls, after atomic.Int32
	var stopped atomic.Bool
	stop := Every(time.Millisecond, func() {
		calls.Add(1)
		if stopped.Load() {
			after.Add(1)
		}
		time.Sleep(2 * time.Millisecond) // a call in progress while stop is called
	})
	for deadline := time.Now().Add(10 * time.Second); calls.Load() < 3; {
		if time.Now().After(deadline) {
			t.Fatal("fn was not called repeatedly")
		}
		time.Sleep(time.Millisecond)
	}
	stop()
	stopped.Store(true)
	time.Sleep(10 * time.Millisecond)
	stop() // again: nothing
	if after.Load() != 0 {
		t.Errorf("fn called %d times after stop returned", after.Load())
	}
}
