//go:build !unix

package compile

import "os/exec"

// setProcessGroup: without process groups, cancellation kills the compiler process itself (exec's default).
func setProcessGroup(cmd *exec.Cmd) {}
