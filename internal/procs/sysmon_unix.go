//go:build unix

package procs

import (
	"fmt"
	"os"
	"syscall"
)

// ExecWithSysmonSetting replaces the process with the same binary, arguments and PID, its environment with
// SysmonSetting added to GODEBUG: the runtime reads that setting only at start. It returns nil without exec when
// GODEBUG names schedtrace already, and an error when the exec failed (the caller runs on as it is).
func ExecWithSysmonSetting() error {
	env, ok := sysmonEnv(os.Environ())
	if !ok {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("keep sysmon awake: %w", err)
	}
	if err := syscall.Exec(exe, os.Args, env); err != nil {
		return fmt.Errorf("keep sysmon awake: exec %s: %w", exe, err)
	}
	return nil // not reached
}
