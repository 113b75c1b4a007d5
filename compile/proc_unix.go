//go:build unix

package compile

import (
	"os/exec"
	"syscall"
)

// setProcessGroup puts the compiler in its own process group and makes cancellation kill the whole group: a
// compiler wrapper script must not leave its compiler running.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
}
