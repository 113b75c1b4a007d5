//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/internal/procs"
)

// TestDaemonOneProcWhenIdle: an idle daemon runs on one P (internal/procs, docs/design.md 6.9), as its /metrics
// shows (go_sched_gomaxprocs_threads), and GOMAXPROCS in its environment is left as the operator set it.
func TestDaemonOneProcWhenIdle(t *testing.T) {
	requireLab(t)
	if runtime.NumCPU() < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skip("needs 2 CPUs or more (one P is the default on one) and GOMAXPROCS unset")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	idle := startStoreDaemon(ctx, t, Config{Binary: npuAgent, Dir: t.TempDir(), Fingerprint: LunarLake, BlobSize: 4096})
	set := startStoreDaemon(ctx, t, Config{Binary: npuAgent, Dir: t.TempDir(), Fingerprint: LunarLake, BlobSize: 4096,
		Env: []string{"GOMAXPROCS=2"}})
	want := map[*Daemon]float64{idle: 1, set: 2}
	for d, n := range want {
		for {
			got, err := d.Metric(ctx, "go_sched_gomaxprocs_threads")
			if err != nil {
				t.Fatal(err)
			}
			if got == n {
				break
			}
			if ctx.Err() != nil || d == set {
				t.Fatalf("go_sched_gomaxprocs_threads = %v, want %v", got, n)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	// Still so a few intervals later (the governor of idle ran by now; set has none).
	time.Sleep(time.Second)
	for d, n := range want {
		if got, err := d.Metric(ctx, "go_sched_gomaxprocs_threads"); err != nil || got != n {
			t.Fatalf("after another second: go_sched_gomaxprocs_threads = %v, %v; want %v", got, err, n)
		}
	}
}

// TestDaemonSysmonAwake: the daemon re-executes itself, same PID, with sysmon kept awake (procs.SysmonSetting,
// docs/design.md 6.9), and an operator's own schedtrace setting is left alone.
func TestDaemonSysmonAwake(t *testing.T) {
	requireLab(t)
	if os.Getenv("GODEBUG") != "" {
		t.Skip("GODEBUG is set in the test's environment")
	}
	t.Parallel()
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"default: exec'd with the setting", nil, "GODEBUG=" + procs.SysmonSetting},
		{"operator's schedtrace=0: as set", []string{"GODEBUG=schedtrace=0"}, "GODEBUG=schedtrace=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			d := startStoreDaemon(ctx, t, Config{Binary: npuAgent, Dir: t.TempDir(), Fingerprint: LunarLake, BlobSize: 4096, Env: tt.env})
			// The daemon answered its API (startStoreDaemon waits for it) as the process started: same PID.
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", d.PID()))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for kv := range strings.SplitSeq(string(environ), "\x00") {
				if strings.HasPrefix(kv, "GODEBUG=") {
					got = append(got, kv)
				}
			}
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("daemon (pid %d) runs with %q, want [%q]", d.PID(), got, tt.want)
			}
		})
	}
}
