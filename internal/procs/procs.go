// Package procs owns the daemon's runtime scheduling settings: GOMAXPROCS from its own CPU use (one P while it
// needs less than about a core, the runtime's default when it needs more) and sysmon kept awake (sysmon.go;
// docs/design.md 6.9 "CPU per byte").
//
// Why: the daemon is mostly idle or moving bytes at a link's rate, which wakes it thousands of times a second for
// a few microseconds each (a TLS record, a yamux frame, a HAVE_ADD). With more than one P, each goroutine made
// ready while another P is idle makes the runtime wake an idle thread that spins looking for work and sleeps again:
// at 100 Mbit/s that costs about as much CPU as the TLS and yamux work itself (docs/benchmarks.md "CPU per byte
// (wave 7)"). One P has no idle P to wake. A daemon that needs more than a core (a fetch at hundreds of MB/s, a
// verify) gets every P back within one interval.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/npu-agent/npu-agent/internal/cputime"
)

// Governor decides the number of Ps. The zero value is not usable: use New.
type Governor struct {
	// Interval between two looks at the CPU used.
	Interval time.Duration
	// Up: with one P, an interval with at least Up cores' worth of CPU used restores the default.
	Up float64
	// Down: with the default, Hold intervals in a row with at most Down cores used set one P.
	Down float64
	Hold int

	cpu     func() time.Duration // CPU time used by the process so far
	one     func()               // set one P
	restore func()               // back to the runtime's default
	log     *slog.Logger
	busy    bool // at the default
	quiet   int  // intervals in a row at most Down
	last    time.Duration
	lastAt  time.Time
}

// New returns a governor with the daemon's settings, or nil when there is nothing to govern: the runtime's default
// is one P already, or the operator set GOMAXPROCS.
func New(log *slog.Logger) *Governor {
	if os.Getenv("GOMAXPROCS") != "" || runtime.GOMAXPROCS(0) <= 1 {
		return nil
	}
	return &Governor{
		Interval: 250 * time.Millisecond, Up: 0.7, Down: 0.35, Hold: 8,
		cpu:     cputime.Self,
		one:     func() { runtime.GOMAXPROCS(1) },
		restore: runtime.SetDefaultGOMAXPROCS,
		log:     log,
		busy:    true,
	}
}

// Run governs until ctx ends, then leaves the runtime's default. A nil governor returns at once.
func (g *Governor) Run(ctx context.Context) error {
	if g == nil {
		return nil
	}
	t := time.NewTicker(g.Interval)
	defer t.Stop()
	g.last, g.lastAt = g.cpu(), time.Now()
	for {
		select {
		case <-ctx.Done():
			if !g.busy {
				g.restore()
			}
			return nil
		case now := <-t.C:
			g.observe(now)
		}
	}
}

// observe takes the CPU used since the last look and applies the rule.
func (g *Governor) observe(now time.Time) {
	used := g.cpu()
	wall := now.Sub(g.lastAt)
	cores := 0.0
	if wall > 0 {
		cores = float64(used-g.last) / float64(wall)
	}
	g.last, g.lastAt = used, now
	busy, quiet := step(g.busy, g.quiet, cores, g.Up, g.Down, g.Hold)
	g.quiet = quiet
	if busy == g.busy {
		return
	}
	g.busy = busy
	if busy {
		g.restore()
	} else {
		g.one()
	}
	g.log.Debug("GOMAXPROCS", "procs", runtime.GOMAXPROCS(0), "cores_used", cores)
}

// step is the rule: from busy (the default) to one P after hold intervals in a row of at most down cores; from one
// P back to busy after one interval of at least up cores.
func step(busy bool, quiet int, cores, up, down float64, hold int) (bool, int) {
	if !busy {
		return cores >= up, 0
	}
	if cores > down {
		return true, 0
	}
	if quiet+1 >= hold {
		return false, 0
	}
	return true, quiet + 1
}
