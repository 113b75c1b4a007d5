// Package flightgroup shares one run of a function among concurrent callers with the same key, and cancels the run
// when the last caller waiting for it leaves.
//
// Unlike golang.org/x/sync/singleflight, a run here does not belong to the caller that started it: it runs on a
// context of its own that no single caller can cancel, a caller whose context ends returns at once with its
// context's error, and the run's context is cancelled only when every waiting caller has gone. A caller arriving
// after that (or after the run ended) starts a new run: a Group shares runs, it does not cache results.
//
// Panics: a panic in a run is not recovered. It ends the process, as a panic in any goroutine does, with the run's
// stack. A Group does not hand it to the waiters: some may have left, the run may have none left, and a recovered
// panic turned into an error would be too easy to swallow.
package flightgroup

import (
	"context"
	"sync"
)

// Group shares runs among callers with the same key K. S is the state of one run, shared by its callers and the
// run (use struct{} when there is none); V is the run's result. The zero Group is ready to use; set its hook
// fields before the first Do and do not change them afterwards.
type Group[K comparable, S, V any] struct {
	// New, if not nil, makes the state of a new run for key. Without it a run's state is S's zero value.
	New func(key K) S
	// Context, if not nil, gives the context a new run starts from; the run's context is a child of it that is
	// cancelled when the last waiter leaves. first is the context of the caller starting the run. By default the
	// run keeps first's values but not its cancellation or deadline.
	Context func(first context.Context) context.Context
	// Start, if not nil, starts a new run's goroutine; it must call run exactly once, on a goroutine of its own,
	// unless it returns an error: then nothing runs, the caller that would have started the run gets the error,
	// and the next caller tries again. By default Start is a go statement. (A Start that adds the goroutine to a
	// WaitGroup lets its owner wait for runs when it closes, and refuse new ones once closing.)
	Start func(run func()) error

	mu    sync.Mutex
	calls map[K]*call[S, V]
}

type call[S, V any] struct {
	state   S
	cancel  context.CancelFunc // cancels the run's context
	waiters int                // callers still waiting; guarded by Group.mu
	done    chan struct{}      // closed once val and err are set
	val     V
	err     error
}

// Do runs fn once for all concurrent callers with key and gives each of them the run's outcome. shared reports
// whether this caller joined a run another caller started.
//
// join, if not nil, is called once for this caller with the run's state after the caller has joined the run
// (started or not), with the Group's lock held: for the first caller it is called before fn starts, so the run
// sees what join did; it must be quick and must not call back into the Group. A joining caller uses it to hand
// the run its own input (such as more peers to fetch from), or to register for progress reports it then
// unregisters once Do returns.
//
// A caller whose ctx ends before the run does returns ctx.Err() at once without disturbing the other callers; when
// it was the last, the run's context is cancelled and the key is free for a new run. If the run has ended by the
// time the caller notices its ctx ended, the caller gets the run's outcome. A caller whose ctx has ended already
// neither starts nor joins a run.
func (g *Group[K, S, V]) Do(ctx context.Context, key K, join func(S), fn func(context.Context, S) (V, error)) (v V, shared bool, err error) {
	if err := ctx.Err(); err != nil {
		return v, false, err
	}
	g.mu.Lock()
	c, shared := g.calls[key]
	if !shared {
		if c, err = g.start(ctx, key, join, fn); err != nil {
			g.mu.Unlock()
			return v, false, err
		}
	} else if join != nil {
		join(c.state)
	}
	c.waiters++
	g.mu.Unlock()

	select {
	case <-c.done:
		return c.val, shared, c.err
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-c.done: // it ended as we gave up: the outcome is there, use it
		return c.val, shared, c.err
	default:
	}
	if c.waiters--; c.waiters == 0 {
		c.cancel()
		// Forget the run now so that a new caller starts a fresh one instead of joining a cancelled one.
		if g.calls[key] == c {
			delete(g.calls, key)
		}
	}
	return v, shared, ctx.Err()
}

// start registers and starts a new run for key; g.mu is held.
func (g *Group[K, S, V]) start(ctx context.Context, key K, join func(S), fn func(context.Context, S) (V, error)) (*call[S, V], error) {
	var parent context.Context
	if g.Context != nil {
		parent = g.Context(ctx)
	} else {
		parent = context.WithoutCancel(ctx)
	}
	rctx, cancel := context.WithCancel(parent)
	c := &call[S, V]{cancel: cancel, done: make(chan struct{})}
	if g.New != nil {
		c.state = g.New(key)
	}
	if join != nil {
		join(c.state)
	}
	run := func() {
		defer cancel()
		c.val, c.err = fn(rctx, c.state)
		g.mu.Lock()
		if g.calls[key] == c {
			delete(g.calls, key)
		}
		g.mu.Unlock()
		close(c.done)
	}
	if g.Start != nil {
		if err := g.Start(run); err != nil {
			cancel()
			return nil, err
		}
	} else {
		go run()
	}
	if g.calls == nil {
		g.calls = make(map[K]*call[S, V])
	}
	g.calls[key] = c
	return c, nil
}

// State returns the state of the current run for key; false when none runs.
func (g *Group[K, S, V]) State(key K) (S, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.calls[key]; c != nil {
		return c.state, true
	}
	var zero S
	return zero, false
}

// States returns the states of every current run, in no order.
func (g *Group[K, S, V]) States() []S {
	g.mu.Lock()
	defer g.mu.Unlock()
	ss := make([]S, 0, len(g.calls))
	for _, c := range g.calls {
		ss = append(ss, c.state)
	}
	return ss
}

// Waiters returns how many callers wait for the current run for key (0 when none runs).
func (g *Group[K, S, V]) Waiters(key K) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.calls[key]; c != nil {
		return c.waiters
	}
	return 0
}
