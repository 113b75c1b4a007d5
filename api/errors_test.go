package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"testing"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

func TestErrorStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err    error
		status int
		code   string
	}{
		{&http.MaxBytesError{Limit: 10}, 413, "too_large"},
		{fmt.Errorf("reading blob: %w", &http.MaxBytesError{Limit: 10}), 413, "too_large"},
		{context.Canceled, StatusClientClosedRequest, "canceled"},
		{fmt.Errorf("%w: %w", ErrShuttingDown, context.Canceled), 503, "shutting_down"},
		{fmt.Errorf("%w: x", ErrBadRequest), 400, "bad_request"},
		{io.ErrUnexpectedEOF, 500, "internal"},
		{fmt.Errorf("ensure: %w", &Error{Status: 422, Code: "incompatible", Message: "x"}), 422, "incompatible"},
		{&Error{Status: 200, Code: "ok"}, 500, "internal"},
		{ErrNoDaemon, 500, "internal"}, // a CLI-side error has no wire row
		// A missing model file is that, not a malformed model (docs/operations.md: no_such_file).
		{fmt.Errorf("%w: open /m.bin: %w", compile.ErrInvalidModel, fs.ErrNotExist), 404, "no_such_file"},
		{fmt.Errorf("%w after 1s (%w)", compile.ErrTimeout, context.DeadlineExceeded), 504, "compile_timeout"},
	}
	for _, tc := range tests {
		if status, code := ErrorStatus(tc.err); status != tc.status || code != tc.code {
			t.Errorf("ErrorStatus(%v) = %d %q, want %d %q", tc.err, status, code, tc.status, tc.code)
		}
	}
}

func TestErrorTable(t *testing.T) {
	t.Parallel()
	// Every code is unique, so the client maps it back to exactly one row.
	codes, errs := map[string]bool{}, map[error]bool{}
	for _, row := range ErrorTable() {
		if row.Err == nil && row.Code == "" {
			t.Errorf("row %+v has neither an error nor a code", row)
		}
		if (row.Code == "") != (row.Status == 0) {
			t.Errorf("row %v %q: a wire code needs an HTTP status and only a wire code has one (status %d)", row.Err, row.Code, row.Status)
		}
		if row.Code != "" {
			if codes[row.Code] {
				t.Errorf("code %q appears twice", row.Code)
			}
			codes[row.Code] = true
			if got := (&Error{Code: row.Code}).Unwrap(); got != row.Err {
				t.Errorf("code %q unwraps to %v, want %v", row.Code, got, row.Err)
			}
		}
		if row.Err != nil {
			if errs[row.Err] {
				t.Errorf("error %v appears twice", row.Err)
			}
			errs[row.Err] = true
			// No row hides behind an earlier one: the sentinel itself finds its own row.
			if got := ExitCode(row.Err); got != row.Exit {
				t.Errorf("ExitCode(%v) = %d, want its row's %d", row.Err, got, row.Exit)
			}
		}
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		exit int
	}{
		{nil, ExitOK},
		{errors.New("disk on fire"), ExitError},
		{fmt.Errorf("fetch: %w", context.Canceled), ExitInterrupted},
		{fmt.Errorf("%w on /run/x.sock", ErrNoDaemon), ExitNoDaemon},
		{fmt.Errorf("ensure: %w", blobstore.ErrNotFound), ExitNotFound},
		{fmt.Errorf("compile: %w: out.blob was not written", compile.ErrNoOutput), ExitCompile},
		// The daemon's answer decides, by its code; an unknown code is a plain error.
		{fmt.Errorf("fetch: %w", &Error{Status: 500, Code: "no_output", Message: "x"}), ExitCompile},
		{&Error{Status: 500, Code: "from_a_newer_daemon", Message: "x"}, ExitError},
		{&Error{Status: 404, Code: CodeNoSuchEndpoint, Message: "x"}, ExitError},
	}
	for _, tc := range tests {
		if got := ExitCode(tc.err); got != tc.exit {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.exit)
		}
	}
}
