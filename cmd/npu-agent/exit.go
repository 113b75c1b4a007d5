package main

import (
	"errors"

	"github.com/npu-agent/npu-agent/api"
)

// Exit codes, documented in README.md and docs/operations.md. api's error table maps errors to them, so an
// error exits the same whether the work ran in this process or in the daemon.
const (
	exitOK           = api.ExitOK
	exitError        = api.ExitError
	exitUsage        = api.ExitUsage
	exitNotFound     = api.ExitNotFound
	exitIncompatible = api.ExitIncompatible
	exitNoCompiler   = api.ExitNoCompiler
	exitCompile      = api.ExitCompile
	exitCorrupt      = api.ExitCorrupt
	exitNoDaemon     = api.ExitNoDaemon
	exitRejected     = api.ExitRejected
	exitInterrupted  = api.ExitInterrupted
)

// errNoDaemon reports a command that needs the daemon when none answers.
var errNoDaemon = api.ErrNoDaemon

// usageError marks errors that are the caller's to fix (flags, arguments, config).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// codedError carries an exit code decided where the error was understood.
type codedError struct {
	error
	code int
}

func (e codedError) Unwrap() error { return e.error }

func withCode(err error, code int) error {
	if err == nil {
		return nil
	}
	return codedError{err, code}
}

// exitCode is the code decided where the error was understood (withCode, usageError), else api.ExitCode's.
func exitCode(err error) int {
	var ce codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return api.ExitCode(err)
}
