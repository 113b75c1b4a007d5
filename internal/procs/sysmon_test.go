package procs

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSysmonEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		env      []string
		want     []string
		wantExec bool
	}{
		{"no GODEBUG: added", []string{"A=1"}, []string{"A=1", "GODEBUG=" + SysmonSetting}, true},
		{"empty GODEBUG", []string{"GODEBUG=", "B=2"}, []string{"GODEBUG=" + SysmonSetting, "B=2"}, true},
		{"other settings kept, in place", []string{"A=1", "GODEBUG=gctrace=1", "B=2"}, []string{"A=1", "GODEBUG=gctrace=1," + SysmonSetting, "B=2"}, true},
		{"trailing comma", []string{"GODEBUG=gctrace=1,"}, []string{"GODEBUG=gctrace=1," + SysmonSetting}, true},
		{"operator's opt-out wins", []string{"GODEBUG=schedtrace=0"}, []string{"GODEBUG=schedtrace=0"}, false},
		{"operator's own period wins", []string{"GODEBUG=gctrace=1,schedtrace=1000"}, []string{"GODEBUG=gctrace=1,schedtrace=1000"}, false},
		{"already exec'd", []string{"GODEBUG=" + SysmonSetting}, []string{"GODEBUG=" + SysmonSetting}, false},
		{"only the first GODEBUG counts", []string{"GODEBUG=a=1", "GODEBUG=schedtrace=0"}, []string{"GODEBUG=a=1," + SysmonSetting, "GODEBUG=schedtrace=0"}, true},
		{"a lookalike key is not schedtrace", []string{"GODEBUG=xschedtrace=1"}, []string{"GODEBUG=xschedtrace=1," + SysmonSetting}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := slices.Clone(tt.env)
			got, exec := sysmonEnv(in)
			if exec != tt.wantExec || !slices.Equal(got, tt.want) {
				t.Errorf("sysmonEnv(%q) = %q, %v; want %q, %v", tt.env, got, exec, tt.want, tt.wantExec)
			}
			if !slices.Equal(in, tt.env) {
				t.Errorf("sysmonEnv changed its argument to %q", in)
			}
		})
	}
}

// TestExecWithSysmonSetting runs this test binary as a child that calls ExecWithSysmonSetting: the process execs
// itself once (same PID, GODEBUG with the setting) and the exec'd process, seeing it, runs on.
func TestExecWithSysmonSetting(t *testing.T) {
	if os.Getenv("PROCS_EXEC_CHILD") != "" {
		before := os.Getenv("PROCS_EXEC_PID")
		if before == "" {
			if err := os.Setenv("PROCS_EXEC_PID", strconv.Itoa(os.Getpid())); err != nil {
				fmt.Println("setenv:", err)
				os.Exit(2)
			}
		}
		if err := ExecWithSysmonSetting(); err != nil {
			fmt.Println("exec:", err)
			os.Exit(2)
		}
		fmt.Printf("pid-before=%s pid=%d godebug=%s\n", before, os.Getpid(), os.Getenv("GODEBUG"))
		os.Exit(0)
	}
	t.Parallel()
	tests := []struct {
		name, godebug, want string
		execs               bool
	}{
		{"exec'd once with the setting", "gctrace=0", "gctrace=0," + SysmonSetting, true},
		{"operator's schedtrace: no exec", "schedtrace=0", "schedtrace=0", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestExecWithSysmonSetting$", "-test.timeout=30s")
			env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
			cmd.Env = append(env, "PROCS_EXEC_CHILD=1", "GODEBUG="+tt.godebug)
			cmd.WaitDelay = 10 * time.Second
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("child: %v: %s", err, out)
			}
			line := strings.TrimSpace(string(out))
			pid := strconv.Itoa(cmd.Process.Pid)
			wantBefore := ""
			if tt.execs {
				wantBefore = pid // the exec'd process saw the PID its first run recorded: the same
			}
			want := fmt.Sprintf("pid-before=%s pid=%s godebug=%s", wantBefore, pid, tt.want)
			if !strings.HasPrefix(line, want) {
				t.Errorf("child printed %q, want %q", line, want)
			}
		})
	}
}
