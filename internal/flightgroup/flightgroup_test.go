package flightgroup

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// blocking is a run function that counts runs and blocks each until release is closed or its context ends.
type blocking struct {
	runs     atomic.Int32
	started  chan struct{} // receives once per run
	release  chan struct{}
	canceled chan struct{} // receives when a run saw its context end
}

func newBlocking() *blocking {
	return &blocking{started: make(chan struct{}, 16), release: make(chan struct{}), canceled: make(chan struct{}, 16)}
}

func (b *blocking) fn(ctx context.Context, _ struct{}) (int, error) {
	n := b.runs.Add(1)
	b.started <- struct{}{}
	select {
	case <-b.release:
		return int(n), nil
	case <-ctx.Done():
		b.canceled <- struct{}{}
		return 0, ctx.Err()
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type outcome struct {
	v      int
	shared bool
	err    error
}

// Callers join one run; some leave (their ctx ends) before it ends. The run is cancelled only when every caller
// left; the callers that stayed get its result; a caller after the run ended or was cancelled starts a new run.
func TestDoLeaving(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		callers int
		leave   []int // callers whose ctx ends while the run is blocked
		cancel  bool  // the run's context is cancelled
	}{
		{name: "nobody leaves", callers: 3},
		{name: "first caller leaves early", callers: 3, leave: []int{0}},
		{name: "all but the last joined leave", callers: 3, leave: []int{0, 1}},
		{name: "all but the first leave", callers: 3, leave: []int{1, 2}},
		{name: "lone caller leaves", callers: 1, leave: []int{0}, cancel: true},
		{name: "every caller leaves", callers: 3, leave: []int{2, 0, 1}, cancel: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var g Group[string, struct{}, int]
			b := newBlocking()
			cancels := make([]context.CancelFunc, tt.callers)
			outs := make([]chan outcome, tt.callers)
			for i := range tt.callers {
				ctx, cancel := context.WithCancel(context.Background())
				cancels[i], outs[i] = cancel, make(chan outcome, 1)
				go func() {
					v, shared, err := g.Do(ctx, "k", nil, b.fn)
					outs[i] <- outcome{v, shared, err}
				}()
				if i == 0 {
					<-b.started // the first caller starts the run
				}
				waitFor(t, "caller to join", func() bool { return g.Waiters("k") == i+1 })
			}
			left := map[int]bool{}
			for _, i := range tt.leave {
				cancels[i]()
				left[i] = true
				if o := <-outs[i]; !errors.Is(o.err, context.Canceled) || o.shared != (i > 0) {
					t.Fatalf("caller %d left with %+v, want context.Canceled, shared=%v", i, o, i > 0)
				}
				if got, want := g.Waiters("k"), tt.callers-len(left); got != want && want > 0 {
					t.Fatalf("%d waiters after caller %d left, want %d", got, i, want)
				}
			}
			if tt.cancel {
				select {
				case <-b.canceled:
				case <-time.After(10 * time.Second):
					t.Fatal("the run was not cancelled when its last waiter left")
				}
				if g.Waiters("k") != 0 {
					t.Fatal("a cancelled run still has waiters")
				}
			} else {
				close(b.release)
				for i := range tt.callers {
					if left[i] {
						continue
					}
					if o := <-outs[i]; o.err != nil || o.v != 1 || o.shared != (i > 0) {
						t.Errorf("caller %d got %+v, want 1, shared=%v", i, o, i > 0)
					}
				}
				select {
				case <-b.canceled:
					t.Fatal("the run was cancelled although a caller still waited")
				default:
				}
			}
			for _, c := range cancels {
				c()
			}
			// The run is over (ended or cancelled): the next caller starts a new one.
			b.release = make(chan struct{})
			close(b.release)
			v, shared, err := g.Do(context.Background(), "k", nil, b.fn)
			if err != nil || shared || v != 2 {
				t.Fatalf("caller after the run: %d shared=%v %v, want a new run (2)", v, shared, err)
			}
		})
	}
}

// Every caller gets the run's value or error; keys are independent.
func TestDoOutcomes(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	tests := []struct {
		name string
		fn   func(context.Context, struct{}) (int, error)
		want int
		err  error
	}{
		{name: "value", fn: func(context.Context, struct{}) (int, error) { return 7, nil }, want: 7},
		{name: "error", fn: func(context.Context, struct{}) (int, error) { return 0, boom }, err: boom},
		{name: "value and error", fn: func(context.Context, struct{}) (int, error) { return 3, boom }, want: 3, err: boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var g Group[string, struct{}, int]
			release := make(chan struct{})
			var runs atomic.Int32
			fn := func(ctx context.Context, s struct{}) (int, error) {
				runs.Add(1)
				<-release
				return tt.fn(ctx, s)
			}
			const n = 8
			outs := make(chan outcome, n)
			for range n {
				go func() {
					v, shared, err := g.Do(context.Background(), "k", nil, fn)
					outs <- outcome{v, shared, err}
				}()
			}
			waitFor(t, "callers to join", func() bool { return g.Waiters("k") == n })
			// Another key runs on its own while "k" is blocked.
			if v, shared, err := g.Do(context.Background(), "other", nil, func(context.Context, struct{}) (int, error) { return 99, nil }); v != 99 || shared || err != nil {
				t.Fatalf("other key: %d %v %v", v, shared, err)
			}
			close(release)
			sharedN := 0
			for range n {
				o := <-outs
				if o.v != tt.want || !errors.Is(o.err, tt.err) || (tt.err == nil && o.err != nil) {
					t.Errorf("caller got %+v, want %d %v", o, tt.want, tt.err)
				}
				if o.shared {
					sharedN++
				}
			}
			if runs.Load() != 1 || sharedN != n-1 {
				t.Errorf("%d runs, %d shared; want 1 run shared by %d", runs.Load(), sharedN, n-1)
			}
		})
	}
}

// join sees the run's state for every caller, the first before the run starts; New makes one state per run.
func TestDoJoinState(t *testing.T) {
	t.Parallel()
	type state struct {
		mu     sync.Mutex
		inputs []string
	}
	var made atomic.Int32
	g := Group[string, *state, []string]{New: func(string) *state { made.Add(1); return &state{} }}
	release := make(chan struct{})
	var seenAtStart []string
	fn := func(_ context.Context, s *state) ([]string, error) {
		s.mu.Lock()
		seenAtStart = append([]string(nil), s.inputs...)
		s.mu.Unlock()
		<-release
		s.mu.Lock()
		defer s.mu.Unlock()
		return append([]string(nil), s.inputs...), nil
	}
	joinWith := func(in string) func(*state) {
		return func(s *state) { s.mu.Lock(); s.inputs = append(s.inputs, in); s.mu.Unlock() }
	}
	outs := make(chan []string, 3)
	for i, in := range []string{"a", "b", "c"} {
		go func() {
			v, _, err := g.Do(context.Background(), "k", joinWith(in), fn)
			if err != nil {
				t.Error(err)
			}
			outs <- v
		}()
		waitFor(t, "caller to join", func() bool { return g.Waiters("k") == i+1 })
	}
	if s, ok := g.State("k"); !ok || len(s.inputs) != 3 {
		t.Errorf("State of the run: %v, %v; want the state the three callers joined", s, ok)
	}
	if _, ok := g.State("other"); ok {
		t.Error("State of a key with no run")
	}
	if ss := g.States(); len(ss) != 1 || len(ss[0].inputs) != 3 {
		t.Errorf("States: %v; want the one run's state", ss)
	}
	close(release)
	for range 3 {
		if v := <-outs; strings.Join(v, "") != "abc" {
			t.Errorf("run saw inputs %q, want a, b, c", v)
		}
	}
	if strings.Join(seenAtStart, "") != "a" {
		t.Errorf("run started with %q, want the first caller's input", seenAtStart)
	}
	if _, _, err := g.Do(context.Background(), "k", joinWith("d"), fn); err != nil {
		t.Fatal(err)
	}
	if made.Load() != 2 {
		t.Errorf("New called %d times for two runs", made.Load())
	}
	if _, ok := g.State("k"); ok {
		t.Error("State after every run ended")
	}
	if ss := g.States(); len(ss) != 0 {
		t.Errorf("States after every run ended: %v", ss)
	}
}

// The run's context: by default the first caller's values without its cancellation; with Context, a child of
// what it returns.
func TestDoRunContext(t *testing.T) {
	t.Parallel()
	type ctxKey struct{}
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		var g Group[string, struct{}, string]
		ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), ctxKey{}, "v"), time.Hour)
		defer cancel()
		v, _, err := g.Do(ctx, "k", nil, func(rctx context.Context, _ struct{}) (string, error) {
			if _, ok := rctx.Deadline(); ok {
				return "", errors.New("run has the caller's deadline")
			}
			v, _ := rctx.Value(ctxKey{}).(string)
			return v, nil
		})
		if v != "v" || err != nil {
			t.Errorf("run gave %q, %v; want the caller's value", v, err)
		}
		// A caller whose ctx has ended starts nothing.
		cancel()
		if _, _, err := g.Do(ctx, "k", nil, func(context.Context, struct{}) (string, error) {
			t.Error("run started for a caller whose ctx had ended")
			return "", nil
		}); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("hook", func(t *testing.T) {
		t.Parallel()
		base, stop := context.WithCancel(context.Background())
		g := Group[string, struct{}, int]{Context: func(context.Context) context.Context { return base }}
		b := newBlocking()
		done := make(chan error, 1)
		go func() { _, _, err := g.Do(context.Background(), "k", nil, b.fn); done <- err }()
		<-b.started
		stop() // the owner closing ends the run though its caller still waits
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want the run's context.Canceled", err)
		}
	})
}

// A Start that refuses gives the starting caller its error and registers nothing; the next caller tries again.
func TestDoStartRefused(t *testing.T) {
	t.Parallel()
	errClosed := errors.New("closed")
	var closed atomic.Bool
	closed.Store(true)
	var wg sync.WaitGroup
	g := Group[string, struct{}, int]{Start: func(run func()) error {
		if closed.Load() {
			return errClosed
		}
		wg.Go(run)
		return nil
	}}
	ran := false
	fn := func(context.Context, struct{}) (int, error) { ran = true; return 1, nil }
	if _, _, err := g.Do(context.Background(), "k", nil, fn); !errors.Is(err, errClosed) || ran || g.Waiters("k") != 0 {
		t.Fatalf("refused start: err=%v ran=%v waiters=%d", err, ran, g.Waiters("k"))
	}
	closed.Store(false)
	if v, shared, err := g.Do(context.Background(), "k", nil, fn); v != 1 || shared || err != nil {
		t.Fatalf("after refusal: %d %v %v", v, shared, err)
	}
	wg.Wait()
}

// A panic in a run is not swallowed: it ends the process with the run's panic value. The test runs itself in a
// child process that panics.
func TestDoPanicCrashes(t *testing.T) {
	if os.Getenv("FLIGHTGROUP_PANIC_CHILD") == "1" {
		var g Group[string, struct{}, int]
		g.Do(context.Background(), "k", nil, func(context.Context, struct{}) (int, error) { panic("run exploded") })
		t.Fatal("Do returned after its run panicked")
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDoPanicCrashes$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FLIGHTGROUP_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Success() {
		t.Fatalf("child exited with %v, want a crash; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "panic: run exploded") {
		t.Errorf("child output lacks the run's panic:\n%s", out)
	}
}
