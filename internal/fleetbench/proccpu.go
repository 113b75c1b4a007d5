//go:build linux

package fleetbench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every Linux ABI Go supports.
const clockTick = time.Second / 100

// procCPU is the CPU time (user+system) of one process from /proc/<pid>/stat. The command name in parentheses
// may itself hold spaces and parentheses, so fields are counted from the last ')'.
func parseProcPidStat(b []byte) (time.Duration, error) {
	f, err := statFields(b, 13)
	if err != nil {
		return 0, err
	}
	var ticks uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(string(s), 10, 63)
		if err != nil {
			return 0, fmt.Errorf("fleetbench: /proc/<pid>/stat time %q: %w", s, err)
		}
		ticks += v
	}
	if ticks > uint64(1<<63-1)/uint64(clockTick) {
		return 0, errors.New("fleetbench: /proc/<pid>/stat time out of range")
	}
	return time.Duration(ticks) * clockTick, nil
}

// statFields returns the fields of /proc/<pid>/stat after the command name (which may hold spaces and
// parentheses), at least n of them: the state is [0].
func statFields(b []byte, n int) ([][]byte, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("fleetbench: /proc/<pid>/stat without command name")
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < n {
		return nil, errors.New("fleetbench: /proc/<pid>/stat too short")
	}
	return f, nil
}

// procEvents counts one process's read and write system calls (/proc/<pid>/io syscr, syscw), its threads'
// context switches, voluntary and not (/proc/<pid>/task/*/status), and its minor page faults (/proc/<pid>/stat):
// per byte received they show the work per event (frames, wake-ups) that CPU time mixes with the work per byte,
// and the faults on new memory, which cost 5-8 ns/B on a VM whose host takes back free memory
// (docs/benchmarks.md wave 11).
type procEvents struct{ reads, writes, switches, faults int64 }

func (e procEvents) sub(o procEvents) procEvents {
	return procEvents{e.reads - o.reads, e.writes - o.writes, e.switches - o.switches, e.faults - o.faults}
}

func (e procEvents) add(o procEvents) procEvents {
	return procEvents{e.reads + o.reads, e.writes + o.writes, e.switches + o.switches, e.faults + o.faults}
}

// parseMinorFaults reads a process's minor page faults (minflt, the 10th field) out of /proc/<pid>/stat.
func parseMinorFaults(b []byte) (int64, error) {
	f, err := statFields(b, 8)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(string(f[7]), 10, 63)
	return int64(n), err
}

// parseProcEvents reads the counters out of /proc/<pid>/io and /proc/<pid>/status; a field missing is 0.
func parseProcEvents(io, status []byte) procEvents {
	var e procEvents
	for line := range bytes.Lines(append(io, status...)) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			continue
		}
		switch string(k) {
		case "syscr":
			e.reads += n
		case "syscw":
			e.writes += n
		case "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches":
			e.switches += n
		}
	}
	return e
}

// labProcCPU returns the CPU time so far of every process in the lab's namespaces, by PID.
func labProcCPU(lab *netlab.Lab) (map[int]time.Duration, error) {
	cpu, _, err := labProcs(lab)
	return cpu, err
}

// labProcs returns the CPU time and event counts so far of every process in the lab's namespaces, by PID.
func labProcs(lab *netlab.Lab) (map[int]time.Duration, map[int]procEvents, error) {
	inLab := map[string]bool{}
	for _, h := range lab.Hosts {
		fi, err := os.Stat(filepath.Join("/run/netns", h.NS))
		if err != nil {
			return nil, nil, fmt.Errorf("fleetbench: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, nil, errors.New("fleetbench: no inode for a namespace")
		}
		inLab["net:["+strconv.FormatUint(st.Ino, 10)+"]"] = true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil, fmt.Errorf("fleetbench: %w", err)
	}
	cpu, events := map[int]time.Duration{}, map[int]procEvents{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net"))
		if err != nil || !inLab[ns] {
			continue // gone, or not ours
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if t, err := parseProcPidStat(b); err == nil {
			cpu[pid] = t
		}
		// The process's io counts every thread; a status counts its own thread only: every thread's alive now.
		io, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "io"))
		ev := parseProcEvents(io, nil)
		tasks, _ := filepath.Glob(filepath.Join("/proc", e.Name(), "task", "*", "status"))
		for _, task := range tasks {
			status, _ := os.ReadFile(task)
			ev.switches += parseProcEvents(nil, status).switches
		}
		ev.faults, _ = parseMinorFaults(b)
		events[pid] = ev
	}
	return cpu, events, nil
}

// ownCPU is the CPU time of this process and of its reaped children. Commands started in the lab are children
// (ip netns exec execs in place), so the ones that exit during a run are counted here when reaped.
func ownCPU() time.Duration {
	var t time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			t += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return t
}

// procCPUMeter measures the CPU time spent by the harness, its children and every process in a lab over a run.
type procCPUMeter struct {
	lab    *netlab.Lab
	own    time.Duration
	procs  map[int]time.Duration
	events map[int]procEvents
	// Events: the read and write system calls, context switches and minor faults since start of the lab's processes alive at
	// stop (set by stop; processes that exited meanwhile, such as fetch commands, are not in it).
	Events procEvents
}

func startProcCPU(lab *netlab.Lab) (*procCPUMeter, error) {
	m := &procCPUMeter{lab: lab, own: ownCPU()}
	var err error
	m.procs, m.events, err = labProcs(lab)
	return m, err
}

// stop returns the CPU time used since start. Call it before the lab's processes are stopped and reaped.
func (m *procCPUMeter) stop() (time.Duration, error) {
	now, events, err := labProcs(m.lab)
	if err != nil {
		return 0, err
	}
	total := ownCPU() - m.own
	for pid, t := range now {
		total += t - m.procs[pid]
	}
	m.Events = procEvents{}
	for pid, e := range events {
		d := e.sub(m.events[pid])
		m.Events = m.Events.add(d)
	}
	return total, nil
}

// perMiB formats the events per MiB of received bytes.
func (e procEvents) perMiB(received int64) string {
	if received <= 0 {
		return "unknown"
	}
	mib := float64(received) / (1 << 20)
	return fmt.Sprintf("%.0f reads, %.0f writes, %.0f context switches, %.0f minor faults", float64(e.reads)/mib,
		float64(e.writes)/mib, float64(e.switches)/mib, float64(e.faults)/mib)
}
