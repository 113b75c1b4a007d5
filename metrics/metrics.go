// Package metrics defines npu-agent's Prometheus metrics in one place. They register on an injected
// prometheus.Registerer (libp2p's resource-manager metrics can share it), and every method is a no-op on a nil
// *Metrics, so packages take a *Metrics and work without one. The list and example queries are in
// docs/operations.md.
package metrics

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Namespace prefixes every metric name.
const Namespace = "npu_agent"

// Scope says which single flight a caller waited on.
type Scope string

// Scopes of single-flight waits.
const (
	ScopeLocal Scope = "local" // joined a compile or fetch already running in this process
	ScopeFleet Scope = "fleet" // waited for a peer of the same class to compile
)

// Metrics holds the agent's collectors. The zero value is not usable; nil is (every method is a no-op).
type Metrics struct {
	fetches        *prometheus.CounterVec
	fetchBytes     *prometheus.CounterVec
	compiles       *prometheus.CounterVec
	compileSeconds prometheus.Histogram
	waits          *prometheus.CounterVec
	lookups        prometheus.Counter
	hits           prometheus.Counter
	storeBytes     prometheus.Gauge
	storeBlobs     prometheus.Gauge
	chunksRejected prometheus.Counter
	chunksFetched  prometheus.Counter
	peers          prometheus.Gauge
	// Computed at scrape time from the components that keep them (set once those exist; absent: 0).
	chunksServed atomic.Pointer[func() int64]
	peersRefused atomic.Pointer[func() int64]
	rollouts     atomic.Pointer[func() map[string]int]
}

// counterFunc is a counter read at scrape time from *f (0 until it is set).
func counterFunc(name, help string, f *atomic.Pointer[func() int64]) prometheus.CounterFunc {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, func() float64 {
		if g := f.Load(); g != nil {
			return float64((*g)())
		}
		return 0
	})
}

// RolloutStates are the rollouts_by_state label values always exported: this agent's own state of a rollout
// (rollout.Phase) or not_selected.
var RolloutStates = []string{"pending", "fetching", "compiling", "ready", "failed", "not_selected"}

// New creates the metrics and registers them on reg (nil: not registered, for tests and tools).
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "fetches_total",
			Help: "Blobs obtained for ensure requests, by source (store, peer, compiled).",
		}, []string{"source"}),
		fetchBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "fetch_bytes_total",
			Help: "Bytes of the blobs counted in fetches_total, by source (store, peer, compiled).",
		}, []string{"source"}),
		compiles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "compiles_total",
			Help: "Local compiles, by result (ok, error).",
		}, []string{"result"}),
		compileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "compile_duration_seconds",
			Help: "Duration of local compiles, successful or not.",
			// NPU compiles take from seconds (small CNNs) to tens of minutes (large matmuls).
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400, 4800},
		}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "singleflight_waits_total",
			Help: "Requests that waited for a compile or fetch already in progress, by scope (local, fleet).",
		}, []string{"scope"}),
		lookups: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "store_lookups_total",
			Help: "Lookups of a (model, profile) in the local store.",
		}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "store_hits_total",
			Help: "Store lookups that found a compatible blob. Hit ratio: rate(store_hits_total) / rate(store_lookups_total).",
		}),
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "store_size_bytes",
			Help: "Bytes stored in the blob store, complete and partial blobs.",
		}),
		storeBlobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "store_blobs",
			Help: "Blobs in the blob store, complete and partial.",
		}),
		chunksRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "chunks_rejected_total",
			Help: "Chunks received from peers that did not match their hash and were dropped.",
		}),
		chunksFetched: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "chunks_fetched_total",
			Help: "Chunks fetched from peers into the store (verified).",
		}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "peers_connected",
			Help: "Fleet members currently connected.",
		}),
	}
	// Totals, not per peer: a label per peer grows with the fleet (thousands of members, design 6.10) and with
	// every identity a stranger makes up; which peers serve most is a question for the logs.
	served := counterFunc("chunks_served_total", "Chunks sent to peers.", &m.chunksServed)
	refused := counterFunc("peers_refused_total",
		"Peers disconnected and refused for a missing or invalid membership proof (fleet authority).", &m.peersRefused)
	// Export every label value from the start so that rate() and ratios have a series to work on.
	for _, s := range []blobstore.Source{blobstore.SourceStore, blobstore.SourcePeer, blobstore.SourceCompiled} {
		m.fetches.WithLabelValues(string(s))
		m.fetchBytes.WithLabelValues(string(s))
	}
	for _, r := range []string{"ok", "error"} {
		m.compiles.WithLabelValues(r)
	}
	for _, s := range []Scope{ScopeLocal, ScopeFleet} {
		m.waits.WithLabelValues(string(s))
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.fetches, m.fetchBytes, m.compiles, m.compileSeconds, m.waits,
		m.lookups, m.hits, m.storeBytes, m.storeBlobs, m.chunksRejected, m.chunksFetched, m.peers, served, refused,
		rolloutCollector{m}} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return m, nil
}

// Fetched counts a blob of n bytes obtained for an ensure request from source.
func (m *Metrics) Fetched(source blobstore.Source, n uint64) {
	if m == nil {
		return
	}
	l := sourceLabel(source)
	m.fetches.WithLabelValues(l).Inc()
	m.fetchBytes.WithLabelValues(l).Add(float64(n))
}

func sourceLabel(s blobstore.Source) string {
	switch s {
	case blobstore.SourceStore, blobstore.SourcePeer, blobstore.SourceCompiled:
		return string(s)
	}
	return "other"
}

// Compiled records a finished local compile; err is nil on success.
func (m *Metrics) Compiled(d time.Duration, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.compiles.WithLabelValues(result).Inc()
	m.compileSeconds.Observe(d.Seconds())
}

// Waited counts a request that joined a flight already in progress.
func (m *Metrics) Waited(scope Scope) {
	if m == nil {
		return
	}
	if scope != ScopeLocal && scope != ScopeFleet {
		scope = "other"
	}
	m.waits.WithLabelValues(string(scope)).Inc()
}

// Lookup counts a store lookup and whether it found a compatible blob.
func (m *Metrics) Lookup(hit bool) {
	if m == nil {
		return
	}
	m.lookups.Inc()
	if hit {
		m.hits.Inc()
	}
}

// SetStore sets the store's size and blob count.
func (m *Metrics) SetStore(bytes uint64, blobs int) {
	if m == nil {
		return
	}
	m.storeBytes.Set(float64(bytes))
	m.storeBlobs.Set(float64(blobs))
}

// ChunkRejected counts a chunk from a peer that failed verification.
func (m *Metrics) ChunkRejected() {
	if m == nil {
		return
	}
	m.chunksRejected.Inc()
}

// SetPeers sets how many fleet members are connected.
func (m *Metrics) SetPeers(n int) {
	if m == nil {
		return
	}
	m.peers.Set(float64(n))
}

// ChunksFetched counts n chunks fetched from peers into the store.
func (m *Metrics) ChunksFetched(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.chunksFetched.Add(float64(n))
}

// SetChunksServed names the counter of chunks sent to peers (the p2p node's), read at every scrape.
func (m *Metrics) SetChunksServed(f func() int64) {
	if m != nil && f != nil {
		m.chunksServed.Store(&f)
	}
}

// SetPeersRefused names the counter of peers refused for their membership proof (the p2p node's).
func (m *Metrics) SetPeersRefused(f func() int64) {
	if m != nil && f != nil {
		m.peersRefused.Store(&f)
	}
}

// SetRollouts names the function that counts this agent's rollouts by state, called at every scrape.
func (m *Metrics) SetRollouts(f func() map[string]int) {
	if m != nil && f != nil {
		m.rollouts.Store(&f)
	}
}

// rolloutCollector exports npu_agent_rollouts{state}: every RolloutStates value (0 when none), and any other
// state the function reports.
type rolloutCollector struct{ m *Metrics }

var rolloutsDesc = prometheus.NewDesc(Namespace+"_rollouts", "Rollouts this agent follows, by its own state of each.",
	[]string{"state"}, nil)

func (c rolloutCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rolloutsDesc }

func (c rolloutCollector) Collect(ch chan<- prometheus.Metric) {
	var counts map[string]int
	if f := c.m.rollouts.Load(); f != nil {
		counts = (*f)()
	}
	for _, s := range RolloutStates {
		ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(counts[s]), s)
	}
	for s, n := range counts {
		if !slices.Contains(RolloutStates, s) {
			ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(n), s)
		}
	}
}
