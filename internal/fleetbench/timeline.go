//go:build linux

package fleetbench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

// TimelineInterval is how often the timeline samples the links and CPUs during a run, unless Config.Timeline says.
const TimelineInterval = time.Second

// LinkSample is the lab's link and CPU use over one sampling interval of a run: where the time went, second by
// second (a link near 1 is full; an idle link with busy CPUs points at the CPU).
type LinkSample struct {
	At       time.Duration // end of the interval, since the start of the run
	SeedUp   float64       // seed's bytes sent over what its uplink could carry
	RecvUp   float64       // the same, averaged over the receivers' uplinks
	MinUp    float64       // least-used receiver uplink
	MaxUp    float64       // most-used receiver uplink
	RecvDown float64       // receivers' bytes received over what their downlinks could carry, averaged
	MinDown  float64       // least-used receiver downlink
	MaxDown  float64       // most-used receiver downlink
	CPU      float64       // busy share of all the machine's CPUs
}

// timeline samples every host's interface counters and the machine's CPU every interval until stop.
type timeline struct {
	lab      *netlab.Lab
	bps      float64
	interval time.Duration
	cancel   context.CancelFunc
	done     chan struct{}
	samples  []LinkSample // owned by the sampling goroutine until done is closed
	err      error
}

func startTimeline(ctx context.Context, lab *netlab.Lab, bps float64, interval time.Duration) (*timeline, error) {
	stats, err := bridgeStats(ctx, lab)
	if err != nil {
		return nil, err
	}
	cpu, _, err := readProcStat()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	tl := &timeline{lab: lab, bps: bps, interval: interval, cancel: cancel, done: make(chan struct{})}
	go tl.loop(ctx, stats, cpu)
	return tl, nil
}

func (tl *timeline) loop(ctx context.Context, prev []netlab.LinkStats, prevCPU cpuTimes) {
	defer close(tl.done)
	t0 := time.Now()
	prevAt := t0
	tick := time.NewTicker(tl.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		stats, err := bridgeStats(ctx, tl.lab)
		if ctx.Err() != nil {
			return
		}
		cpu, _, cerr := readProcStat()
		if err == nil {
			err = cerr
		}
		if err != nil {
			tl.err = err
			return
		}
		now := time.Now()
		s := linkSample(prev, stats, now.Sub(prevAt), tl.bps)
		s.At, s.CPU = now.Sub(t0), busyFraction(prevCPU, cpu)
		tl.samples = append(tl.samples, s)
		prev, prevAt, prevCPU = stats, now, cpu
	}
}

// stop ends the sampling and returns the samples taken.
func (tl *timeline) stop() ([]LinkSample, error) {
	tl.cancel()
	<-tl.done
	return tl.samples, tl.err
}

// bridgeStats reads every host's link counters at once from the bridge side of the lab, so that one sample's
// counters are from one moment however loaded the machine is (reading each host in turn through its namespace
// spreads a sample over tens of milliseconds). The bridge port of host i (netlab names it v<i>, in the namespace
// <prefix>-<id>-br) receives what the host sends and sends what it receives.
func bridgeStats(ctx context.Context, lab *netlab.Lab) ([]netlab.LinkStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ns := LabPrefix + "-" + lab.ID + "-br"
	out, err := exec.CommandContext(ctx, "ip", "-n", ns, "-s", "-j", "link", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("fleetbench: read bridge counters: %w", err)
	}
	return parseBridgeStats(out, len(lab.Hosts))
}

// maxBridgeStats bounds the `ip -j -s link` output parsed: well under 1 KiB per port.
const maxBridgeStats = 1 << 20

// parseBridgeStats turns `ip -s -j link show` output of the bridge namespace into each host's counters.
func parseBridgeStats(out []byte, hosts int) ([]netlab.LinkStats, error) {
	if len(out) > maxBridgeStats {
		return nil, fmt.Errorf("fleetbench: bridge counters: %d bytes of output, more than %d", len(out), maxBridgeStats)
	}
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			Rx struct{ Bytes uint64 } `json:"rx"`
			Tx struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("fleetbench: bridge counters: %w", err)
	}
	stats := make([]netlab.LinkStats, hosts)
	seen := make([]bool, hosts)
	for _, l := range links {
		num, ok := strings.CutPrefix(l.Name, "v")
		if !ok {
			continue
		}
		i, err := strconv.Atoi(num)
		if err != nil || i < 0 || i >= hosts {
			continue
		}
		stats[i] = netlab.LinkStats{RxBytes: l.Stats.Tx.Bytes, TxBytes: l.Stats.Rx.Bytes}
		seen[i] = true
	}
	if i := slices.Index(seen, false); i >= 0 {
		return nil, fmt.Errorf("fleetbench: bridge counters: no port v%d", i)
	}
	return stats, nil
}

// linkSample computes link use between two reads of every host's counters, dt apart. Host SeedHost is the seed.
func linkSample(before, after []netlab.LinkStats, dt time.Duration, bps float64) LinkSample {
	var s LinkSample
	if len(before) != len(after) || len(after) < 2 || dt <= 0 || bps <= 0 {
		return s
	}
	capacity := dt.Seconds() * bps / 8
	use := func(a, b uint64) float64 { return float64(b-a) / capacity }
	s.SeedUp = use(before[SeedHost].TxBytes, after[SeedHost].TxBytes)
	var up, down []float64
	for i := range after {
		if i == SeedHost {
			continue
		}
		up = append(up, use(before[i].TxBytes, after[i].TxBytes))
		down = append(down, use(before[i].RxBytes, after[i].RxBytes))
	}
	n := float64(len(down))
	for _, u := range up {
		s.RecvUp += u
	}
	s.RecvUp /= n
	s.MinUp, s.MaxUp = slices.Min(up), slices.Max(up)
	for _, d := range down {
		s.RecvDown += d
	}
	s.RecvDown /= n
	s.MinDown, s.MaxDown = slices.Min(down), slices.Max(down)
	return s
}

// WriteTimeline prints one system's timeline, one line per sample, use in percent.
func WriteTimeline(w io.Writer, r Result) error {
	if _, err := fmt.Fprintf(w, "%s, link and CPU use per %s:\n", r.System, cmp.Or(r.TimelineEvery, TimelineInterval)); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "t\tseed up\trecv up avg\trecv up min\trecv up max\trecv down avg\trecv down min\trecv down max\tcpu\t")
	for _, s := range r.Timeline {
		fmt.Fprintf(tw, "%.1fs\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f%%\t\n", s.At.Seconds(),
			100*s.SeedUp, 100*s.RecvUp, 100*s.MinUp, 100*s.MaxUp, 100*s.RecvDown, 100*s.MinDown, 100*s.MaxDown, 100*s.CPU)
	}
	return tw.Flush()
}
