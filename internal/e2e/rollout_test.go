//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/api"
)

// rolloutName is the rollout the fleet test publishes.
const rolloutName = "kiosk-detector"

// TestRolloutFleet: an operator publishes a rollout on one agent of six in two compatibility classes; every agent
// becomes ready with one compile per class. An agent started after the publish catches up without compiling.
// A second model (version 2) and a rollback to the first (version 3) reach every agent, the rollback without a
// single compile: the first model's blobs were kept pinned as the previous version.
func TestRolloutFleet(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()

	opKey := filepath.Join(t.TempDir(), "operator.key")
	out, err := exec.CommandContext(ctx, npuAgent, "--json", "keygen", "--out", opKey).Output()
	if err != nil {
		t.Fatalf("keygen: %v", err)
	}
	var kg struct {
		PublicKey string `json:"public_key"`
	}
	if err := json.Unmarshal(out, &kg); err != nil {
		t.Fatalf("keygen printed %q: %v", out, err)
	}
	members := []member{{"A", classA114}, {"B", classB}, {"A", classA114}, {"B", classB}, {"A", classA114}, {"B", classB}}
	f := startFleet(ctx, t, members, fleetOptions{
		compileTime: time.Second, blobSize: 4 << 20, trustedKeys: []string{kg.PublicKey}, extraHosts: 1,
	})
	publisher := f.daemons[0]
	modelB, err := WriteModel(f.dir, "e2e-rollout-second", 48<<10)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(version int, model string) api.Rollout {
		t.Helper()
		out, err := publisher.CLI(ctx, "publish", "--key", opKey, "--name", rolloutName, "--version", strconv.Itoa(version),
			"--model", model, "--shape", testShape, "--expires", "1h")
		if err != nil {
			t.Fatal(err)
		}
		var r api.Rollout
		if err := json.Unmarshal(out, &r); err != nil || r.Version != uint64(version) {
			t.Fatalf("publish printed %q: %v", out, err)
		}
		return r
	}

	start := time.Now()
	v1 := publish(1, f.model)
	f.waitReady(ctx, publisher, 1, len(f.daemons))
	t.Logf("version 1 ready on %d agents %s after the publish", len(f.daemons), time.Since(start).Round(time.Millisecond))
	f.checkCompiles(ctx, map[string]float64{"A": 1, "B": 1})
	for _, d := range f.daemons {
		f.checkHolds(ctx, d, v1, 0)
	}

	// A late joiner learns the rollout by pull sync and is served from its peers.
	late := f.startMember(ctx, member{"A", classA114})
	if err := late.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := late.WaitRollout(ctx, rolloutName, "its own version 1 ready", selfReady(1)); err != nil {
		t.Fatal(err)
	}
	t.Logf("late joiner ready %s after its API answered", time.Since(start).Round(time.Millisecond))
	f.waitReady(ctx, publisher, 1, len(f.daemons))
	f.checkCompiles(ctx, map[string]float64{"A": 1, "B": 1})

	start = time.Now()
	v2 := publish(2, modelB)
	if v2.ModelID == v1.ModelID {
		t.Fatal("the second model has the first one's ID")
	}
	f.waitReady(ctx, publisher, 2, len(f.daemons))
	t.Logf("version 2 ready on %d agents %s after the publish", len(f.daemons), time.Since(start).Round(time.Millisecond))
	f.checkCompiles(ctx, map[string]float64{"A": 2, "B": 2})

	// Rollback: version 3 names version 1's model.
	start = time.Now()
	v3 := publish(3, f.model)
	if v3.ModelID != v1.ModelID {
		t.Fatalf("version 3 has model %s, want version 1's %s", v3.ModelID, v1.ModelID)
	}
	f.waitReady(ctx, publisher, 3, len(f.daemons))
	t.Logf("rollback ready on %d agents %s after the publish", len(f.daemons), time.Since(start).Round(time.Millisecond))
	f.checkCompiles(ctx, map[string]float64{"A": 2, "B": 2})
	for _, d := range f.daemons {
		f.checkHolds(ctx, d, v3, 2)
	}
}

// selfReady holds when the daemon's own row reports version ready.
func selfReady(version uint64) func(api.RolloutStatus) error {
	return func(st api.RolloutStatus) error {
		for _, p := range st.Peers {
			if p.Self {
				if p.Version == version && p.State == "ready" {
					return nil
				}
				return fmt.Errorf("own row: version %d %s %s", p.Version, p.State, p.Reason)
			}
		}
		return errors.New("no own row yet")
	}
}

// waitReady waits until d sees n agents (itself included) report version ready; a failure stops the wait.
func (f *testFleet) waitReady(ctx context.Context, d *Daemon, version uint64, n int) {
	f.t.Helper()
	err := d.WaitRollout(ctx, rolloutName, fmt.Sprintf("%d agents ready at version %d", n, version), func(st api.RolloutStatus) error {
		ready := 0
		for _, p := range st.Peers {
			if p.Version == version && p.State == "failed" {
				return fmt.Errorf("%w: %s failed: %s", errFailedAgent, p.Peer, p.Reason)
			}
			if p.Version == version && p.State == "ready" {
				ready++
			}
		}
		if ready < n {
			return fmt.Errorf("%d of %d ready (summary %+v)", ready, n, st.Summary)
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

var errFailedAgent = errors.New("an agent failed the rollout")

// checkCompiles checks the number of compiles per class, summed over each class's daemons' metrics.
func (f *testFleet) checkCompiles(ctx context.Context, want map[string]float64) {
	f.t.Helper()
	got := map[string]float64{}
	for i, d := range f.daemons {
		n, err := d.Metric(ctx, `npu_agent_compiles_total{result="ok"}`)
		if errors.Is(err, ErrMetric) {
			n, err = 0, nil // no compile yet: the series does not exist
		}
		if err != nil {
			f.t.Fatal(err)
		}
		got[f.members[i].class] += n
	}
	for class, w := range want {
		if got[class] != w {
			f.t.Errorf("class %s: %v compiles, want %v", class, got[class], w)
		}
	}
}

// checkHolds checks that d lists the rollout at r's version (with previous) and holds r's source model.
func (f *testFleet) checkHolds(ctx context.Context, d *Daemon, r api.Rollout, previous uint64) {
	f.t.Helper()
	rs, err := d.API().Rollouts(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Version != r.Version || rs[0].Previous != previous || rs[0].State != "ready" || rs[0].ModelID != r.ModelID {
		f.t.Errorf("%s lists %+v, want version %d (previous %d) ready", d.Name, rs, r.Version, previous)
	}
	for _, name := range r.Files {
		if _, err := os.Stat(filepath.Join(d.Dir, "data", "models", r.ModelID, name)); err != nil {
			f.t.Errorf("%s: source model file: %v", d.Name, err)
		}
	}
}
