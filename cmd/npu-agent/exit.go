package main

import (
	"context"
	"errors"
	"os"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

// Exit codes, documented in README.md and docs/operations.md. One place maps errors to them.
const (
	exitOK           = 0
	exitError        = 1 // anything not listed below
	exitUsage        = 2 // bad flags, arguments or config
	exitNotFound     = 3 // no such blob, model file or record
	exitIncompatible = 4 // the blob cannot be loaded by this host's NPU stack
	exitNoCompiler   = 5 // a compile was needed and no compiler is available
	exitCompile      = 6 // the compiler failed
	exitCorrupt      = 7 // verify found corrupt data
	exitNoDaemon     = 8 // the command needs a running daemon and none answers
	exitRejected     = 9 // the daemon rejected a rollout manifest (trust, signature, version, expiry) or follows none
	exitInterrupted  = 130
)

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

func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ce codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	for _, m := range []struct {
		code int
		errs []error
	}{
		{exitInterrupted, []error{context.Canceled}},
		{exitNoDaemon, []error{errNoDaemon}},
		{exitRejected, []error{api.ErrRolloutsDisabled, rollout.ErrNoTrustedKeys, rollout.ErrUnsigned, rollout.ErrUnknownKey,
			rollout.ErrBadSignature, rollout.ErrThreshold, rollout.ErrRollback, rollout.ErrEquivocation, rollout.ErrExpired,
			rollout.ErrNameMismatch, rollout.ErrSourceMismatch, rollout.ErrNonCanonical, rollout.ErrTooLarge}},
		{exitNoCompiler, []error{compile.ErrNoCompiler}},
		{exitCompile, []error{compile.ErrCompileFailed, compile.ErrNoOutput, compile.ErrTimeout, compile.ErrHelperProtocol, compile.ErrNoDevice}},
		{exitIncompatible, []error{compat.ErrIncompatible, compat.ErrNoMetadata, compat.ErrMetadataVersion, compat.ErrFutureMetadata, compat.ErrMalformedTrailer}},
		{exitCorrupt, []error{blobstore.ErrInvalidData}},
		{exitNotFound, []error{blobstore.ErrNotFound, os.ErrNotExist, rollout.ErrNotFound}},
		{exitUsage, []error{compile.ErrInvalidModel, compile.ErrInvalidProfile, compat.ErrOverride, compat.ErrInvalidFingerprint,
			rollout.ErrInvalidManifest, rollout.ErrInvalidKey, rollout.ErrKeyPermissions}},
	} {
		for _, e := range m.errs {
			if errors.Is(err, e) {
				return m.code
			}
		}
	}
	return exitError
}
