//go:build linux

package fleetbench

import (
	"bytes"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

func TestLinkSample(t *testing.T) {
	t.Parallel()
	const bps = 8e6 // 1 MB/s
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	tests := []struct {
		name          string
		before, after []netlab.LinkStats
		dt            time.Duration
		want          LinkSample
	}{
		{
			name:   "seed full, receivers uneven",
			before: []netlab.LinkStats{{}, {}, {}},
			after:  []netlab.LinkStats{{TxBytes: 2e6}, {RxBytes: 2e6, TxBytes: 1e6}, {RxBytes: 1e6}},
			dt:     2 * time.Second,
			want:   LinkSample{SeedUp: 1, RecvUp: 0.25, MinUp: 0, MaxUp: 0.5, RecvDown: 0.75, MinDown: 0.5, MaxDown: 1},
		},
		{
			name:   "counters relative to before",
			before: []netlab.LinkStats{{TxBytes: 5e6}, {RxBytes: 7e6}},
			after:  []netlab.LinkStats{{TxBytes: 5.5e6}, {RxBytes: 7.5e6}},
			dt:     time.Second,
			want:   LinkSample{SeedUp: 0.5, RecvDown: 0.5, MinDown: 0.5, MaxDown: 0.5},
		},
		{name: "no time", before: []netlab.LinkStats{{}, {}}, after: []netlab.LinkStats{{}, {}}},
		{name: "mismatched reads", before: []netlab.LinkStats{{}}, after: []netlab.LinkStats{{}, {}}, dt: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := linkSample(tc.before, tc.after, tc.dt, bps)
			if !near(got.SeedUp, tc.want.SeedUp) || !near(got.RecvUp, tc.want.RecvUp) || !near(got.RecvDown, tc.want.RecvDown) ||
				!near(got.MinDown, tc.want.MinDown) || !near(got.MaxDown, tc.want.MaxDown) ||
				!near(got.MinUp, tc.want.MinUp) || !near(got.MaxUp, tc.want.MaxUp) {
				t.Errorf("linkSample = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestWriteTimeline(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	r := Result{System: "x", Timeline: []LinkSample{{At: 1500 * time.Millisecond, SeedUp: 0.96, RecvDown: 0.5, CPU: 1}}}
	if err := WriteTimeline(&b, r); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "per 1s") || !strings.Contains(lines[2], "1.5s") || !strings.Contains(lines[2], "96%") ||
		!strings.Contains(lines[2], "100%") {
		t.Errorf("timeline output:\n%s", b.String())
	}
	b.Reset()
	r.TimelineEvery = 250 * time.Millisecond
	if err := WriteTimeline(&b, r); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.String(), "x, link and CPU use per 250ms:") {
		t.Errorf("timeline output at 250ms:\n%s", b.String())
	}
}

func TestParseBridgeStats(t *testing.T) {
	t.Parallel()
	port := func(name string, rx, tx uint64) string {
		return `{"ifname":"` + name + `","stats64":{"rx":{"bytes":` + strconv.FormatUint(rx, 10) + `,"packets":1},"tx":{"bytes":` +
			strconv.FormatUint(tx, 10) + `}}}`
	}
	good := "[" + strings.Join([]string{port("lo", 9, 9), port("br0", 5, 5), port("v1", 10, 20), port("v0", 30, 40), port("vx", 1, 1)}, ",") + "]"
	tests := []struct {
		name  string
		out   string
		hosts int
		want  []netlab.LinkStats
		err   bool
	}{
		{"ports swapped to the host's view", good, 2, []netlab.LinkStats{{RxBytes: 40, TxBytes: 30}, {RxBytes: 20, TxBytes: 10}}, false},
		{"missing port", good, 3, nil, true},
		{"not json", "Device not found", 1, nil, true},
		{"too large", "[" + strings.Repeat(" ", maxBridgeStats) + "]", 1, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseBridgeStats([]byte(tc.out), tc.hosts)
			if (err != nil) != tc.err || (err == nil && !slices.Equal(got, tc.want)) {
				t.Errorf("parseBridgeStats = %v, %v; want %v, error %t", got, err, tc.want, tc.err)
			}
		})
	}
}

func FuzzParseBridgeStats(f *testing.F) {
	f.Add([]byte(`[{"ifname":"v0","stats64":{"rx":{"bytes":1},"tx":{"bytes":2}}}]`), 1)
	f.Add([]byte(`[{"ifname":"v-1"},{"ifname":"v99999999999999999999"}]`), 2)
	f.Fuzz(func(t *testing.T, out []byte, hosts int) {
		if hosts < 0 || hosts > MaxHosts {
			return
		}
		if got, err := parseBridgeStats(out, hosts); err == nil && len(got) != hosts {
			t.Fatalf("%d counters for %d hosts", len(got), hosts)
		}
	})
}
