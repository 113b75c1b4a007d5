package metrics

import (
	"errors"
	"github.com/npu-agent/npu-agent/blobstore"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

func newTest(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func TestCounters(t *testing.T) {
	t.Parallel()
	m, _ := newTest(t)
	m.Fetched(blobstore.SourcePeer, 100)
	m.Fetched(blobstore.SourcePeer, 50)
	m.Fetched(blobstore.SourceStore, 7)
	m.Fetched("garbage", 1)
	m.Compiled(90*time.Second, nil)
	m.Compiled(time.Second, errors.New("boom"))
	m.Waited(ScopeFleet)
	m.Waited(ScopeFleet)
	m.Waited(ScopeLocal)
	m.Lookup(true)
	m.Lookup(false)
	m.Lookup(true)
	m.SetStore(1<<30, 3)
	m.ChunkRejected()
	m.SetPeers(4)
	m.SetPeers(2)

	tests := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"fetches peer", m.fetches.WithLabelValues("peer"), 2},
		{"fetches store", m.fetches.WithLabelValues("store"), 1},
		{"fetches compiled", m.fetches.WithLabelValues("compiled"), 0},
		{"fetches other", m.fetches.WithLabelValues("other"), 1},
		{"bytes peer", m.fetchBytes.WithLabelValues("peer"), 150},
		{"bytes store", m.fetchBytes.WithLabelValues("store"), 7},
		{"compiles ok", m.compiles.WithLabelValues("ok"), 1},
		{"compiles error", m.compiles.WithLabelValues("error"), 1},
		{"waits fleet", m.waits.WithLabelValues("fleet"), 2},
		{"waits local", m.waits.WithLabelValues("local"), 1},
		{"lookups", m.lookups, 3},
		{"hits", m.hits, 2},
		{"store bytes", m.storeBytes, 1 << 30},
		{"store blobs", m.storeBlobs, 3},
		{"chunks rejected", m.chunksRejected, 1},
		{"peers", m.peers, 2},
	}
	for _, tc := range tests {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCompileHistogram(t *testing.T) {
	t.Parallel()
	m, reg := newTest(t)
	m.Compiled(90*time.Second, nil)
	m.Compiled(2*time.Second, nil)
	want := `
# HELP npu_agent_compile_duration_seconds Duration of local compiles, successful or not.
# TYPE npu_agent_compile_duration_seconds histogram
npu_agent_compile_duration_seconds_bucket{le="1"} 0
npu_agent_compile_duration_seconds_bucket{le="5"} 1
npu_agent_compile_duration_seconds_bucket{le="15"} 1
npu_agent_compile_duration_seconds_bucket{le="30"} 1
npu_agent_compile_duration_seconds_bucket{le="60"} 1
npu_agent_compile_duration_seconds_bucket{le="120"} 2
npu_agent_compile_duration_seconds_bucket{le="300"} 2
npu_agent_compile_duration_seconds_bucket{le="600"} 2
npu_agent_compile_duration_seconds_bucket{le="1200"} 2
npu_agent_compile_duration_seconds_bucket{le="2400"} 2
npu_agent_compile_duration_seconds_bucket{le="4800"} 2
npu_agent_compile_duration_seconds_bucket{le="+Inf"} 2
npu_agent_compile_duration_seconds_sum 92
npu_agent_compile_duration_seconds_count 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "npu_agent_compile_duration_seconds"); err != nil {
		t.Error(err)
	}
}

func TestLabelsExportedFromStart(t *testing.T) {
	t.Parallel()
	_, reg := newTest(t)
	for name, want := range map[string]int{
		"npu_agent_fetches_total":            3,
		"npu_agent_fetch_bytes_total":        3,
		"npu_agent_compiles_total":           2,
		"npu_agent_singleflight_waits_total": 2,
		"npu_agent_store_lookups_total":      1,
		"npu_agent_peers_connected":          1,
	} {
		if got, err := testutil.GatherAndCount(reg, name); err != nil || got != want {
			t.Errorf("%s: %d series (%v), want %d", name, got, err, want)
		}
	}
}

func TestComputedMetrics(t *testing.T) {
	t.Parallel()
	m, reg := newTest(t)
	m.ChunksFetched(3)
	m.ChunksFetched(0)
	m.ChunksFetched(-2)
	want := `# HELP npu_agent_chunks_fetched_total Chunks fetched from peers into the store (verified).
# TYPE npu_agent_chunks_fetched_total counter
npu_agent_chunks_fetched_total 3
# HELP npu_agent_chunks_served_total Chunks sent to peers.
# TYPE npu_agent_chunks_served_total counter
npu_agent_chunks_served_total 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "npu_agent_chunks_fetched_total", "npu_agent_chunks_served_total"); err != nil {
		t.Error(err)
	}
	m.SetChunksServed(func() int64 { return 42 })
	m.SetPeersRefused(func() int64 { return 7 })
	m.SetRollouts(func() map[string]int { return map[string]int{"ready": 2, "failed": 1, "strange": 1} })
	want = `# HELP npu_agent_chunks_served_total Chunks sent to peers.
# TYPE npu_agent_chunks_served_total counter
npu_agent_chunks_served_total 42
# HELP npu_agent_peers_refused_total Peers disconnected and refused for a missing or invalid membership proof (fleet authority).
# TYPE npu_agent_peers_refused_total counter
npu_agent_peers_refused_total 7
# HELP npu_agent_rollouts Rollouts this agent follows, by its own state of each.
# TYPE npu_agent_rollouts gauge
npu_agent_rollouts{state="compiling"} 0
npu_agent_rollouts{state="failed"} 1
npu_agent_rollouts{state="fetching"} 0
npu_agent_rollouts{state="not_selected"} 0
npu_agent_rollouts{state="pending"} 0
npu_agent_rollouts{state="ready"} 2
npu_agent_rollouts{state="strange"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "npu_agent_chunks_served_total", "npu_agent_peers_refused_total", "npu_agent_rollouts"); err != nil {
		t.Error(err)
	}
	var nilM *Metrics
	nilM.ChunksFetched(1)
	nilM.SetChunksServed(func() int64 { return 1 })
	nilM.SetPeersRefused(func() int64 { return 1 })
	nilM.SetRollouts(nil)
}

func TestLint(t *testing.T) {
	t.Parallel()
	_, reg := newTest(t)
	problems, err := promlint.NewWithMetricFamilies(mustGather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func mustGather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestNilSafe(t *testing.T) {
	t.Parallel()
	var m *Metrics
	m.Fetched(blobstore.SourcePeer, 1)
	m.Compiled(time.Second, nil)
	m.Waited(ScopeLocal)
	m.Lookup(true)
	m.SetStore(1, 1)
	m.ChunkRejected()
	m.SetPeers(1)
}

func TestUnregistered(t *testing.T) {
	t.Parallel()
	m, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	m.Lookup(true)
	if got := testutil.ToFloat64(m.hits); got != 1 {
		t.Errorf("hits = %v", got)
	}
}

func TestDoubleRegistration(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(reg); err == nil {
		t.Error("registering twice on one registry succeeded")
	}
}
