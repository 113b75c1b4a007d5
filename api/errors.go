package api

import (
	"context"
	"errors"
	"io/fs"
	"net/http"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/config"
	"github.com/npu-agent/npu-agent/rollout"
)

// StatusClientClosedRequest is the status logged when the client went away before the answer (nginx's 499).
const StatusClientClosedRequest = 499

// Exit codes of the npu-agent CLI, documented in README.md and docs/operations.md (a test keeps them in step).
const (
	ExitOK           = 0
	ExitError        = 1 // anything not listed below
	ExitUsage        = 2 // bad flags, arguments, config or request
	ExitNotFound     = 3 // no such blob, model file or record
	ExitIncompatible = 4 // the blob cannot be loaded by this host's NPU stack
	ExitNoCompiler   = 5 // a compile was needed and no compiler is available
	ExitCompile      = 6 // the compiler failed
	ExitCorrupt      = 7 // verify found corrupt data
	ExitNoDaemon     = 8 // the command needs a running daemon and none answers
	ExitRejected     = 9 // the daemon rejected a rollout manifest (trust, signature, version, expiry) or follows none
	ExitInterrupted  = 130
)

// Errors of this package.
var (
	// ErrNoDaemon reports that no daemon answers on the socket.
	ErrNoDaemon = errors.New("no npu-agent daemon is running")
	// ErrBadRequest reports a malformed request; the message says what is wrong.
	ErrBadRequest = errors.New("bad request")
	// ErrShuttingDown reports that the daemon stopped while the request was in progress.
	ErrShuttingDown = errors.New("daemon is shutting down")
	// ErrTooLarge reports a request body over its limit.
	ErrTooLarge = errors.New("request body too large")
	// ErrForbidden reports a TCP request that looks like it comes from a web page.
	ErrForbidden = errors.New("forbidden")
	// ErrUnauthorized reports a TCP request, other than /metrics and /v1/healthz, without the API token.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrRequestTimeout reports a request body that stalled past its idle deadline.
	ErrRequestTimeout = errors.New("request timed out")
	// ErrBusy reports a client with too many requests in progress.
	ErrBusy = errors.New("too many requests in progress from this client")
	// ErrNoSpace reports an upload refused by the store's free-space guard.
	ErrNoSpace = errors.New("not enough free disk space")
)

// Wire codes the server answers without a sentinel error.
const (
	CodeInternal         = "internal"           // an error no row matches
	CodeNoSuchEndpoint   = "no_such_endpoint"   // no handler for the path
	CodeMethodNotAllowed = "method_not_allowed" // a handler for the path, not for the method
	CodeTooLarge         = "too_large"          // ErrTooLarge and *http.MaxBytesError
)

// ErrorRow is one row of the error table: how an error is answered on the wire and how the CLI exits with it.
type ErrorRow struct {
	Err    error  // the sentinel, matched with errors.Is; nil for codes the server answers without one
	Code   string // wire code; "" for errors only the CLI meets, which never cross the wire. Codes are API.
	Status int    // HTTP status; 0 when Code is ""
	Exit   int    // CLI exit code, the same in-process and through the daemon
}

// errorTable is the one table of errors. The first row whose Err matches wins, so specific errors come before
// general ones. Never change a code; README.md and docs/operations.md list the codes and exit codes.
var errorTable = []ErrorRow{
	{ErrBadRequest, "bad_request", http.StatusBadRequest, ExitUsage},
	{ErrTooLarge, CodeTooLarge, http.StatusRequestEntityTooLarge, ExitError},
	{ErrForbidden, "forbidden", http.StatusForbidden, ExitError},
	{ErrUnauthorized, "unauthorized", http.StatusUnauthorized, ExitError},
	{ErrRequestTimeout, "request_timeout", http.StatusRequestTimeout, ExitError},
	{ErrBusy, "busy", http.StatusTooManyRequests, ExitError},
	{ErrNoSpace, "no_space", http.StatusInsufficientStorage, ExitError},
	{ErrShuttingDown, "shutting_down", http.StatusServiceUnavailable, ExitError},
	{ErrRolloutsDisabled, "rollouts_disabled", http.StatusServiceUnavailable, ExitRejected},
	{ErrNoDaemon, "", 0, ExitNoDaemon},
	// Before the domain errors: an interrupted command exits 130 whatever it was doing.
	{context.Canceled, "canceled", StatusClientClosedRequest, ExitInterrupted},

	{rollout.ErrNoTrustedKeys, "no_trusted_keys", http.StatusServiceUnavailable, ExitRejected},
	{rollout.ErrTooLarge, "manifest_too_large", http.StatusRequestEntityTooLarge, ExitRejected},
	{rollout.ErrUnsigned, "unsigned", http.StatusForbidden, ExitRejected},
	{rollout.ErrUnknownKey, "unknown_key", http.StatusForbidden, ExitRejected},
	{rollout.ErrBadSignature, "bad_signature", http.StatusForbidden, ExitRejected},
	{rollout.ErrThreshold, "threshold", http.StatusForbidden, ExitRejected},
	{rollout.ErrRollback, "rollback", http.StatusConflict, ExitRejected},
	{rollout.ErrEquivocation, "equivocation", http.StatusConflict, ExitRejected},
	{rollout.ErrNameMismatch, "name_mismatch", http.StatusConflict, ExitRejected},
	{rollout.ErrExpired, "expired", http.StatusUnprocessableEntity, ExitRejected},
	{rollout.ErrSourceMismatch, "source_mismatch", http.StatusUnprocessableEntity, ExitRejected},
	{rollout.ErrNonCanonical, "non_canonical", http.StatusUnprocessableEntity, ExitRejected},
	{rollout.ErrCorruptState, "corrupt_state", http.StatusInternalServerError, ExitError},
	{rollout.ErrNotFound, "no_such_rollout", http.StatusNotFound, ExitNotFound},

	{blobstore.ErrNotFound, "not_found", http.StatusNotFound, ExitNotFound},
	{blobstore.ErrInvalidData, "invalid_data", http.StatusUnprocessableEntity, ExitCorrupt},
	{blobstore.ErrIncomplete, "incomplete", http.StatusConflict, ExitError},
	{blobstore.ErrPinned, "pinned", http.StatusConflict, ExitError},

	{compat.ErrNoMetadata, "no_metadata", http.StatusUnprocessableEntity, ExitIncompatible},
	{compat.ErrMetadataVersion, "metadata_version", http.StatusUnprocessableEntity, ExitIncompatible},
	{compat.ErrFutureMetadata, "future_metadata", http.StatusUnprocessableEntity, ExitIncompatible},
	{compat.ErrMalformedTrailer, "malformed_trailer", http.StatusUnprocessableEntity, ExitIncompatible},
	{compat.ErrRuntimeRequirements, "runtime_requirements", http.StatusUnprocessableEntity, ExitIncompatible},
	{compat.ErrNoNPU, "no_npu", http.StatusServiceUnavailable, ExitError},
	{compat.ErrIncompatible, "incompatible", http.StatusUnprocessableEntity, ExitIncompatible},

	{compile.ErrNoCompiler, "no_compiler", http.StatusServiceUnavailable, ExitNoCompiler},
	{compile.ErrCompileFailed, "compile_failed", http.StatusInternalServerError, ExitCompile},
	{compile.ErrNoOutput, "no_output", http.StatusInternalServerError, ExitCompile},
	{compile.ErrTimeout, "compile_timeout", http.StatusGatewayTimeout, ExitCompile},
	{compile.ErrHelperProtocol, "helper_protocol", http.StatusInternalServerError, ExitCompile},
	{compile.ErrNoDevice, "no_device", http.StatusServiceUnavailable, ExitCompile},

	// Before the invalid-input rows: a model file that is missing or unreadable is that, not a malformed model.
	{compile.ErrNotPermitted, "not_permitted", http.StatusForbidden, ExitError},
	{fs.ErrNotExist, "no_such_file", http.StatusNotFound, ExitNotFound},
	{fs.ErrPermission, "permission", http.StatusForbidden, ExitError},

	{compile.ErrInvalidModel, "invalid_model", http.StatusUnprocessableEntity, ExitUsage},
	{compile.ErrInvalidProfile, "invalid_profile", http.StatusUnprocessableEntity, ExitUsage},
	{compat.ErrInvalidFingerprint, "invalid_fingerprint", http.StatusUnprocessableEntity, ExitUsage},
	{rollout.ErrInvalidManifest, "invalid_manifest", http.StatusUnprocessableEntity, ExitUsage},
	{compat.ErrOverride, "", 0, ExitUsage},
	{config.ErrInvalid, "", 0, ExitUsage},
	{rollout.ErrInvalidKey, "", 0, ExitUsage},
	{rollout.ErrKeyPermissions, "", 0, ExitUsage},

	{context.DeadlineExceeded, "timeout", http.StatusGatewayTimeout, ExitError},

	{nil, CodeInternal, http.StatusInternalServerError, ExitError},
	{nil, CodeNoSuchEndpoint, http.StatusNotFound, ExitError},
	{nil, CodeMethodNotAllowed, http.StatusMethodNotAllowed, ExitError},
}

// ErrorTable returns a copy of the error table, in matching order.
func ErrorTable() []ErrorRow { return append([]ErrorRow(nil), errorTable...) }

// lookup returns the first row err matches, by an *Error's code when the daemon answered it, else by sentinel.
func lookup(err error) (ErrorRow, bool) {
	var ae *Error
	if errors.As(err, &ae) {
		if row, ok := rowOfCode(ae.Code); ok {
			return row, true
		}
	}
	for _, row := range errorTable {
		if row.Err != nil && errors.Is(err, row.Err) {
			return row, true
		}
	}
	return ErrorRow{}, false
}

func rowOfCode(code string) (ErrorRow, bool) {
	if code == "" {
		return ErrorRow{}, false
	}
	for _, row := range errorTable {
		if row.Code == code {
			return row, true
		}
	}
	return ErrorRow{}, false
}

// ErrorStatus maps err to its HTTP status and wire code; unknown errors are 500 "internal". An *Error in err's
// chain keeps its own status and code (a proxy passes a daemon's answer on unchanged).
func ErrorStatus(err error) (status int, code string) {
	var ae *Error
	if errors.As(err, &ae) && ae.Status >= 400 && ae.Status <= 599 && ae.Code != "" {
		return ae.Status, ae.Code
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge, CodeTooLarge
	}
	for _, row := range errorTable {
		if row.Err != nil && row.Code != "" && errors.Is(err, row.Err) {
			return row.Status, row.Code
		}
	}
	return http.StatusInternalServerError, CodeInternal
}

// ExitCode is the CLI's exit code for err: 0 for nil, the row's exit code, or ExitError. An error answered by the
// daemon exits as the same error met in-process would.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	if row, ok := lookup(err); ok {
		return row.Exit
	}
	return ExitError
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error is an error answered by the daemon. errors.Is matches the sentinel its code stands for, so callers
// branch the same way on a local and a remote error (errors.Is(err, blobstore.ErrNotFound)).
type Error struct {
	Status  int    // HTTP status
	Code    string // wire code, e.g. "not_found"
	Message string // the daemon's error text
}

// Error returns the daemon's message as is: it already says what failed.
func (e *Error) Error() string { return e.Message }

// Unwrap returns the sentinel error of e's code, or nil for codes without one and codes this client does not know.
func (e *Error) Unwrap() error {
	row, _ := rowOfCode(e.Code)
	return row.Err
}
