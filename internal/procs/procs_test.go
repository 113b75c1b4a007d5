package procs

import (
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"
)

func TestStep(t *testing.T) {
	t.Parallel()
	const up, down, hold = 0.7, 0.35, 3
	tests := []struct {
		name      string
		busy      bool
		quiet     int
		cores     float64
		wantBusy  bool
		wantQuiet int
	}{
		{"busy, quiet interval counts", true, 0, 0.1, true, 1},
		{"busy, last quiet interval of the hold: one P", true, 2, 0.35, false, 0},
		{"busy, a busy interval resets the count", true, 2, 0.36, true, 0},
		{"one P, below up: stays", false, 0, 0.69, false, 0},
		{"one P, at up: default", false, 0, 0.7, true, 0},
		{"one P, idle: stays", false, 0, 0, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			busy, quiet := step(tt.busy, tt.quiet, tt.cores, up, down, hold)
			if busy != tt.wantBusy || quiet != tt.wantQuiet {
				t.Errorf("step(%v, %d, %v) = %v, %d; want %v, %d", tt.busy, tt.quiet, tt.cores, busy, quiet, tt.wantBusy, tt.wantQuiet)
			}
		})
	}
}

// TestGovernorFollowsCPU drives observe with a fake CPU clock: idle intervals set one P after the hold, one busy
// interval restores the default, and the setters run only on a change.
func TestGovernorFollowsCPU(t *testing.T) {
	t.Parallel()
	var used time.Duration
	var calls []string
	g := &Governor{Interval: time.Second, Up: 0.7, Down: 0.35, Hold: 3, busy: true,
		cpu:     func() time.Duration { return used },
		one:     func() { calls = append(calls, "one") },
		restore: func() { calls = append(calls, "default") },
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	at := time.Unix(0, 0)
	g.lastAt = at
	tick := func(cores float64) {
		at = at.Add(time.Second)
		used += time.Duration(cores * float64(time.Second))
		g.observe(at)
	}
	for _, c := range []float64{0.1, 0.1, 0.1, 0.1, 0.5, 0.9, 0.9, 0.2, 0.2, 0.2} {
		tick(c)
	}
	want := []string{"one", "default", "one"}
	if len(calls) != len(want) {
		t.Fatalf("calls %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Fatalf("calls %v, want %v", calls, want)
		}
	}
}

// TestGovernorSetsRuntime: the governor New returns changes the runtime's Ps (one after the quiet hold, the default
// back after a busy interval). Not parallel: it changes this process's GOMAXPROCS.
func TestGovernorSetsRuntime(t *testing.T) {
	g := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if g == nil {
		t.Skip("nothing to govern: one CPU, or GOMAXPROCS set")
	}
	def := runtime.GOMAXPROCS(0)
	defer runtime.SetDefaultGOMAXPROCS()
	var used time.Duration
	g.cpu = func() time.Duration { return used }
	at := time.Now()
	g.lastAt = at
	for range g.Hold {
		at = at.Add(g.Interval)
		g.observe(at)
	}
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("after %d idle intervals GOMAXPROCS = %d, want 1", g.Hold, n)
	}
	at = at.Add(g.Interval)
	used += g.Interval
	g.observe(at)
	if n := runtime.GOMAXPROCS(0); n != def {
		t.Fatalf("after a busy interval GOMAXPROCS = %d, want the default %d", n, def)
	}
}
