// Package tick calls a function at a fixed interval until stopped: the "show that work is under way" ticker of a
// progress display.
package tick

import (
	"sync"
	"time"
)

// Every calls fn every d, from a goroutine of its own, until stop is called. stop waits for a call in progress to
// return, so fn is never called after stop has returned (the caller may then finish its display); calling stop
// again does nothing.
func Every(d time.Duration, fn func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fn()
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}
