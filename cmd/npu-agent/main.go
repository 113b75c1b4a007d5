// Command npu-agent keeps compiled Intel NPU blobs, shares them with LAN peers and compiles only when no
// compatible blob exists. This package wires flags, config and signals; the logic lives in the packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/npu-agent/npu-agent/internal/procs"
)

// errInterrupted is what an interrupted command reports (exit code 130).
var errInterrupted = fmt.Errorf("interrupted: %w", context.Canceled)

func main() {
	daemonExec = procs.ExecWithSysmonSetting
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd(os.Stdout, os.Stderr)
	err := root.ExecuteContext(ctx)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = errInterrupted // Ctrl-C or SIGTERM, not a failure to explain
	}
	if err != nil {
		printError(root.ErrOrStderr(), jsonRequested(os.Args[1:]), err)
	}
	os.Exit(exitCode(err))
}

// jsonRequested looks for --json before cobra has parsed flags (an error may come from parsing itself).
func jsonRequested(args []string) bool {
	for _, a := range args {
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}

func printError(w interface{ Write([]byte) (int, error) }, asJSON bool, err error) {
	if asJSON {
		_ = writeJSON(w, map[string]any{"error": err.Error(), "exit_code": exitCode(err)})
		return
	}
	fmt.Fprintf(w, "npu-agent: %v\n", err)
}
