//go:build linux

package fleetbench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// CPUUsage is how busy the machine's CPUs were during a run, to tell whether the links or the CPU limited it.
// Busy time includes kernel time and softirq (where veth forwarding and tc shaping run), so it covers the whole
// simulated network, not just the benchmarked processes.
type CPUUsage struct {
	Avg      float64 // busy fraction of all CPUs over the run
	PeakCore float64 // highest busy fraction of any single CPU over any one sampling interval
	Samples  int     // sampling intervals behind PeakCore
	// Procs is the CPU time of the benchmark's own processes (the harness, the system's programs in the lab)
	// during the run, and ProcsShare that time over wall time times CPUs: unlike Avg it does not count other
	// load on the machine, nor kernel work the scheduler charges to no process (softirq in ksoftirqd).
	Procs      time.Duration
	ProcsShare float64
}

// cpuTimes is one line of /proc/stat in clock ticks.
type cpuTimes struct{ busy, total uint64 }

// maxProcStat bounds how much of /proc/stat is read: the cpu lines come first and fit easily for 1024 CPUs.
const maxProcStat = 256 << 10

// parseProcStat returns the aggregate "cpu" line and the per-CPU "cpuN" lines of /proc/stat.
func parseProcStat(r io.Reader) (all cpuTimes, cores []cpuTimes, err error) {
	sc := bufio.NewScanner(io.LimitReader(r, maxProcStat))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	seenAll := false
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu") {
			continue
		}
		// user nice system idle iowait irq softirq steal [guest guest_nice], the last two already in user/nice.
		if len(fields) < 9 {
			return all, nil, fmt.Errorf("fleetbench: /proc/stat line %q has too few fields", fields[0])
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(fields[i+1], 10, 64); err != nil {
				return all, nil, fmt.Errorf("fleetbench: /proc/stat %s: %w", fields[0], err)
			}
		}
		var t cpuTimes
		for i, x := range v {
			t.total += x
			if i != 3 && i != 4 { // idle and iowait are not busy
				t.busy += x
			}
		}
		if fields[0] == "cpu" {
			all, seenAll = t, true
		} else {
			cores = append(cores, t)
		}
	}
	if err := sc.Err(); err != nil {
		return all, nil, fmt.Errorf("fleetbench: read /proc/stat: %w", err)
	}
	if !seenAll || len(cores) == 0 {
		return all, nil, errors.New("fleetbench: /proc/stat has no cpu lines")
	}
	return all, cores, nil
}

func readProcStat() (cpuTimes, []cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, nil, fmt.Errorf("fleetbench: %w", err)
	}
	return parseProcStat(bytes.NewReader(b))
}

func busyFraction(a, b cpuTimes) float64 {
	if b.total <= a.total {
		return 0
	}
	return float64(b.busy-a.busy) / float64(b.total-a.total)
}

// CPUSampler samples /proc/stat while a run goes on.
type CPUSampler struct {
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	first cpuTimes
	usage CPUUsage
}

// StartCPUSampler takes a first sample and then one every interval until Stop.
func StartCPUSampler(interval time.Duration) (*CPUSampler, error) {
	all, cores, err := readProcStat()
	if err != nil {
		return nil, err
	}
	s := &CPUSampler{stop: make(chan struct{}), done: make(chan struct{}), first: all}
	go s.loop(interval, cores)
	return s, nil
}

func (s *CPUSampler) loop(interval time.Duration, prev []cpuTimes) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	prevAt := time.Now()
	for {
		stopping := false
		select {
		case <-t.C:
		case <-s.stop:
			stopping = true
		}
		all, cores, err := readProcStat()
		if err == nil && len(cores) == len(prev) {
			s.mu.Lock()
			s.usage.Avg = busyFraction(s.first, all)
			// A last, short interval at Stop is too few ticks to say anything about one core: it only counts
			// towards Avg.
			if now := time.Now(); now.Sub(prevAt) >= interval/2 {
				for i := range cores {
					s.usage.PeakCore = max(s.usage.PeakCore, busyFraction(prev[i], cores[i]))
				}
				s.usage.Samples++
				prev, prevAt = cores, now
			}
			s.mu.Unlock()
		}
		if stopping {
			return
		}
	}
}

// Stop takes a last sample and returns the usage since Start.
func (s *CPUSampler) Stop() CPUUsage {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usage
}
