package main

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// The fleet (lower) stops only after the API, rollouts and gc (upper) have returned, whether the daemon's context
// ended or a component failed; abort stops what was started.
func TestDaemonGroupOrder(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for name, fail := range map[string]bool{"context ends": false, "a component fails": true} {
		ctx, cancel := context.WithCancel(context.Background())
		d := newDaemonGroup(ctx)
		var mu sync.Mutex
		var order []string
		note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
		started := make(chan struct{})
		d.goLower(func(ctx context.Context) error { close(started); <-ctx.Done(); note("lower"); return nil })
		for range 2 {
			d.goUpper(func(ctx context.Context) error { <-ctx.Done(); note("upper"); return nil })
		}
		d.goUpper(func(ctx context.Context) error {
			<-started
			if fail {
				note("upper")
				return boom
			}
			<-ctx.Done()
			note("upper")
			return nil
		})
		<-started
		if !fail {
			cancel()
		}
		err := d.wait()
		cancel()
		if fail != errors.Is(err, boom) {
			t.Errorf("%s: wait = %v", name, err)
		}
		if len(order) != 4 || order[3] != "lower" {
			t.Errorf("%s: stopped in order %v, want the upper three, then lower", name, order)
		}
	}

	d := newDaemonGroup(context.Background())
	stopped := make(chan struct{})
	d.goLower(func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil })
	if err := d.abort(boom); !errors.Is(err, boom) {
		t.Errorf("abort = %v", err)
	}
	<-stopped
}
