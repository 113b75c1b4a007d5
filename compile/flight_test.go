package compile

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// blockingCompile counts calls and blocks each until release is closed or its context ends.
type blockingCompile struct {
	calls    atomic.Int32
	started  chan struct{} // receives once per call
	release  chan struct{}
	canceled chan struct{} // receives when a call saw its context end
}

func newBlockingCompile() *blockingCompile {
	return &blockingCompile{started: make(chan struct{}, 16), release: make(chan struct{}), canceled: make(chan struct{}, 16)}
}

func (b *blockingCompile) fn(ctx context.Context) (*Result, error) {
	n := b.calls.Add(1)
	b.started <- struct{}{}
	select {
	case <-b.release:
		return &Result{Path: "blob", Size: int64(n), Log: "compiled"}, nil
	case <-ctx.Done():
		b.canceled <- struct{}{}
		return nil, ctx.Err()
	}
}

func waitWaiting(t *testing.T, f *Flight, key FlightKey, n int) {
	t.Helper()
	waitFor(t, "callers to join", func() bool { return f.waiting(key) == n })
}

func TestFlightShares(t *testing.T) {
	t.Parallel()
	var f Flight
	b := newBlockingCompile()
	key := FlightKey{"m", "p", "c"}
	const n = 16
	type out struct {
		res    *Result
		shared bool
		err    error
	}
	outs := make(chan out, n)
	for range n {
		go func() {
			r, s, err := f.Do(context.Background(), key, b.fn)
			outs <- out{r, s, err}
		}()
	}
	waitWaiting(t, &f, key, n)
	close(b.release)
	sharedCount := 0
	for range n {
		o := <-outs
		if o.err != nil || o.res == nil || o.res.Size != 1 || o.res.Path != "blob" {
			t.Fatalf("caller got %+v %v", o.res, o.err)
		}
		if o.shared {
			sharedCount++
		}
	}
	if got := b.calls.Load(); got != 1 {
		t.Errorf("%d compiles for one key, want 1", got)
	}
	if sharedCount != n-1 {
		t.Errorf("%d callers shared, want %d", sharedCount, n-1)
	}
	// Flight does not cache: the next call compiles again.
	b.release = make(chan struct{})
	close(b.release)
	if r, shared, err := f.Do(context.Background(), key, b.fn); err != nil || shared || r.Size != 2 {
		t.Errorf("second round: %+v %v %v", r, shared, err)
	}
}

func TestFlightFirstCallerCancels(t *testing.T) {
	t.Parallel()
	var f Flight
	b := newBlockingCompile()
	key := FlightKey{"m", "p", "c"}
	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() { _, _, err := f.Do(ctxA, key, b.fn); errA <- err }()
	<-b.started
	resB := make(chan *Result, 1)
	go func() {
		r, _, err := f.Do(context.Background(), key, b.fn)
		if err != nil {
			t.Errorf("B: %v", err)
		}
		resB <- r
	}()
	waitWaiting(t, &f, key, 2)
	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("A: err = %v", err)
	}
	if f.waiting(key) != 1 {
		t.Fatalf("waiting = %d after A left", f.waiting(key))
	}
	close(b.release)
	if r := <-resB; r == nil || r.Size != 1 {
		t.Fatalf("B got %+v", r)
	}
	select {
	case <-b.canceled:
		t.Fatal("the compile was cancelled although B still waited")
	default:
	}
}

func TestFlightAllCancel(t *testing.T) {
	t.Parallel()
	var f Flight
	b := newBlockingCompile()
	key := FlightKey{"m", "p", "c"}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if _, _, err := f.Do(ctx, key, b.fn); !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v", err)
			}
		})
	}
	waitWaiting(t, &f, key, 3)
	cancel()
	wg.Wait()
	select {
	case <-b.canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("the compile was not cancelled when every caller left")
	}
	// A new caller starts a fresh compile rather than joining the cancelled one.
	close(b.release)
	r, shared, err := f.Do(context.Background(), key, b.fn)
	if err != nil || shared || r.Size != 2 {
		t.Fatalf("after cancel: %+v %v %v", r, shared, err)
	}
}

func TestFlightKeysIndependent(t *testing.T) {
	t.Parallel()
	var f Flight
	slow := newBlockingCompile()
	k1 := FlightKey{"m", "p", "class-a"}
	k2 := FlightKey{"m", "p", "class-b"}
	done1 := make(chan error, 1)
	go func() { _, _, err := f.Do(context.Background(), k1, slow.fn); done1 <- err }()
	<-slow.started
	r, shared, err := f.Do(context.Background(), k2, func(context.Context) (*Result, error) { return &Result{Path: "other"}, nil })
	if err != nil || shared || r.Path != "other" {
		t.Fatalf("k2: %+v %v %v", r, shared, err)
	}
	close(slow.release)
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
}

func TestFlightSharesErrorsAndValues(t *testing.T) {
	t.Parallel()
	var f Flight
	type ctxKey struct{}
	boom := errors.New("boom")
	release := make(chan struct{})
	key := FlightKey{"m", "p", "c"}
	fn := func(ctx context.Context) (*Result, error) {
		if ctx.Value(ctxKey{}) != "v" {
			return nil, errors.New("context values lost")
		}
		<-release
		return nil, boom
	}
	ctx := context.WithValue(context.Background(), ctxKey{}, "v")
	errs := make(chan error, 4)
	for range 4 {
		go func() { _, _, err := f.Do(ctx, key, fn); errs <- err }()
	}
	waitWaiting(t, &f, key, 4)
	close(release)
	for range 4 {
		if err := <-errs; !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
	}
}

// Flight.Compile over a real backend: concurrent requests for one model and profile write one blob.
func TestFlightCompileSim(t *testing.T) {
	t.Parallel()
	s, err := NewSim(testFP, SimOptions{PayloadSize: 1000, CompileTime: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var f Flight
	req := testRequest(t, t.TempDir())
	var wg sync.WaitGroup
	var sharedN atomic.Int32
	for range 8 {
		wg.Go(func() {
			r, shared, err := f.Compile(context.Background(), s, "class", req)
			if err != nil || r.Path != req.OutPath {
				t.Errorf("%+v %v", r, err)
			}
			if shared {
				sharedN.Add(1)
			}
		})
	}
	wg.Wait()
	// Callers arriving after the compile finished start their own; at least some must have shared.
	if sharedN.Load() == 0 {
		t.Error("no caller shared a compile")
	}
	bad := req
	bad.Profile = Profile{}
	if _, _, err := f.Compile(context.Background(), s, "class", bad); !errors.Is(err, ErrInvalidProfile) {
		t.Errorf("err = %v", err)
	}
}

func BenchmarkFlightDo(b *testing.B) {
	var f Flight
	fn := func(context.Context) (*Result, error) { return &Result{}, nil }
	key := FlightKey{"m", "p", "c"}
	for b.Loop() {
		if _, _, err := f.Do(context.Background(), key, fn); err != nil {
			b.Fatal(err)
		}
	}
}
