package procs

import (
	"slices"
	"strings"
)

// SysmonSetting keeps the Go runtime's sysmon thread out of its deep sleep: any schedtrace period makes sysmon poll
// at up to 10 ms instead of parking whenever every P is idle, and the largest (24.8 days) prints one SCHED line to
// stderr at start on a host up longer than that, then one every 24.8 days.
//
// Why: a daemon moving bytes at a link's rate goes idle and busy again thousands of times a second. Parked, sysmon
// is woken by the first system call after each idle spell (a futex wake and two context switches) and then polls
// every 20 µs for a millisecond or more. On the 12-host fleet benchmark that was 90 % of the daemons' futex calls,
// three quarters of their nanosleeps, half their context switches and a fifth of their CPU per received byte
// (docs/benchmarks.md "Sysmon kept awake"). Awake, it costs an idle daemon about 60 wake-ups a second.
const SysmonSetting = "schedtrace=2147483647"

// sysmonEnv returns env with SysmonSetting added to GODEBUG, and false when GODEBUG already names schedtrace:
// the operator's own setting (schedtrace=0 restores the runtime's default), or the exec already done.
func sysmonEnv(env []string) ([]string, bool) {
	for i, kv := range env {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		if !ok {
			continue
		}
		// The runtime reads the first GODEBUG, field by field, nothing trimmed.
		for f := range strings.SplitSeq(v, ",") {
			if strings.HasPrefix(f, "schedtrace=") {
				return env, false
			}
		}
		out := slices.Clone(env)
		if v = strings.TrimSuffix(v, ","); v != "" {
			v += ","
		}
		out[i] = "GODEBUG=" + v + SysmonSetting
		return out, true
	}
	return append(slices.Clone(env), "GODEBUG="+SysmonSetting), true
}
