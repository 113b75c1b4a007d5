package fleetsim

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"
)

// raceEnabled is set under the race detector (race_test.go).
var raceEnabled bool

// TestSmallFleet runs 50 members (20 under the race detector or -short) bootstrapped with 3 peers each and
// checks the goals at that size: full membership, one compile per class.
func TestSmallFleet(t *testing.T) {
	n, window := 50, time.Second
	if testing.Short() || raceEnabled {
		// Under the race detector on two shared cores, 50 members' WANTs (each signed and verified by gossipsub)
		// took over 3 s to arrive, and a window shorter than delivery elects several compilers (6.10).
		n, window = 20, 3*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Nodes: n, Latency: 5 * time.Millisecond, Timeout: time.Minute, Seed: 1,
		Window: window, Steady: 6 * time.Second})
	t.Log(res)
	if err != nil {
		t.Fatal(err)
	}
	for class, c := range res.Compiles {
		if c != 1 {
			t.Errorf("class %s: %d compiles, want 1", class, c)
		}
	}
	if len(res.Compiles) != 2 {
		t.Errorf("compiles %v: want one per class of 2", res.Compiles)
	}
	// Complete tables hash alike: most steady pulls end at the hash (some started before full membership).
	if res.SteadyInSync < 0.5 {
		t.Errorf("%.2f of the steady pulls in sync, want most", res.SteadyInSync)
	}
}

// TestScale is `make bench-scale`: FLEETSIM_NODES (comma-separated sizes) members each, figures logged.
func TestScale(t *testing.T) {
	sizes := os.Getenv("FLEETSIM_NODES")
	if sizes == "" {
		t.Skip("FLEETSIM_NODES not set (make bench-scale)")
	}
	for _, s := range splitComma(sizes) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 2 {
			t.Fatalf("FLEETSIM_NODES: %q", s)
		}
		latency := 5 * time.Millisecond
		if v := os.Getenv("FLEETSIM_LATENCY"); v != "" {
			if latency, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
		phase := 10 * time.Minute
		if v := os.Getenv("FLEETSIM_TIMEOUT"); v != "" {
			if phase, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
		var refresh time.Duration // FLEETSIM_REFRESH: MemberRefresh (default the node's, 30 s)
		if v := os.Getenv("FLEETSIM_REFRESH"); v != "" {
			if refresh, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
		steady := 15 * time.Second // FLEETSIM_STEADY: how long to measure complete tables' pulls (three rounds)
		if v := os.Getenv("FLEETSIM_STEADY"); v != "" {
			if steady, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
		var idle time.Duration // FLEETSIM_IDLE: members idle after full membership, before the flight
		if v := os.Getenv("FLEETSIM_IDLE"); v != "" {
			if idle, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		res, err := Run(ctx, Config{Nodes: n, Latency: latency, Timeout: phase, Seed: 1, MemberRefresh: refresh,
			Steady: steady, Idle: idle,
			Progress: func(phase string, r Result) { t.Logf("%s: %s", phase, r) },
			Waiting: func(d time.Duration, complete int, listed float64) {
				t.Logf("membership after %.0fs: %d of %d members list all, %.1f listed on average", d.Seconds(), complete, n, listed)
			}})
		cancel()
		t.Log(res)
		for _, l := range res.Timeline {
			t.Log("timeline:", l)
		}
		for _, c := range res.Compilers {
			t.Log("compiler:", c)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
