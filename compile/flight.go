package compile

import (
	"context"
	"sync"
)

// FlightKey identifies one compile: the same model, profile and compatibility class give an interchangeable blob.
type FlightKey struct {
	ModelID   string
	ProfileID string
	Class     string // the compatibility class of the fingerprint compiled for (compat)
}

// Flight shares one compile among concurrent callers with the same key. The zero value is ready to use.
type Flight struct {
	mu    sync.Mutex
	calls map[FlightKey]*flightCall
}

type flightCall struct {
	cancel  context.CancelFunc // cancels the compile's own context
	waiters int                // callers still waiting; guarded by Flight.mu
	done    chan struct{}      // closed once res and err are set
	res     *Result
	err     error
}

// Do runs fn once for all concurrent callers with the same key and gives each of them its outcome. fn runs on a
// context of its own that keeps ctx's values but not its cancellation; that context is cancelled only when every
// waiting caller has gone. A caller whose ctx ends returns ctx.Err() at once without disturbing the others.
// Once fn has returned, the next call with the key runs fn again: Flight shares compiles, it does not cache.
// shared reports whether this caller joined a compile another caller started.
func (f *Flight) Do(ctx context.Context, key FlightKey, fn func(context.Context) (*Result, error)) (res *Result, shared bool, err error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[FlightKey]*flightCall)
	}
	c, shared := f.calls[key]
	if shared {
		c.waiters++
	} else {
		cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &flightCall{cancel: cancel, waiters: 1, done: make(chan struct{})}
		f.calls[key] = c
		go f.run(cctx, key, c, fn)
	}
	f.mu.Unlock()

	select {
	case <-c.done:
		res, err := c.result()
		return res, shared, err
	case <-ctx.Done():
	}
	select {
	case <-c.done: // finished as we gave up: the result is there, use it
		res, err := c.result()
		return res, shared, err
	default:
	}
	f.mu.Lock()
	c.waiters--
	if c.waiters == 0 {
		c.cancel()
		// Forget the call now so a new caller starts a fresh compile instead of joining a cancelled one.
		if f.calls[key] == c {
			delete(f.calls, key)
		}
	}
	f.mu.Unlock()
	return nil, shared, ctx.Err()
}

func (f *Flight) run(ctx context.Context, key FlightKey, c *flightCall, fn func(context.Context) (*Result, error)) {
	defer c.cancel()
	c.res, c.err = fn(ctx)
	f.mu.Lock()
	if f.calls[key] == c {
		delete(f.calls, key)
	}
	f.mu.Unlock()
	close(c.done)
}

// result returns a copy of the shared Result, so one caller cannot change another's.
func (c *flightCall) result() (*Result, error) {
	if c.res == nil {
		return nil, c.err
	}
	r := *c.res
	return &r, c.err
}

// Compile compiles req with b, sharing the compile with concurrent callers for the same model, profile and class.
// Callers that join get the first caller's Result, so the blob is at that caller's OutPath.
func (f *Flight) Compile(ctx context.Context, b Backend, class string, req Request) (*Result, bool, error) {
	profileID, err := req.Profile.ID()
	if err != nil {
		return nil, false, err
	}
	key := FlightKey{ModelID: req.Model.ID, ProfileID: profileID, Class: class}
	return f.Do(ctx, key, func(ctx context.Context) (*Result, error) { return b.Compile(ctx, req) })
}

// waiting returns how many callers wait for key (for tests).
func (f *Flight) waiting(key FlightKey) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.calls[key]; c != nil {
		return c.waiters
	}
	return 0
}
