package api

import (
	"context"
	"errors"
	"io/fs"
	"net/http"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

// StatusClientClosedRequest is the status logged when the client went away before the answer (nginx's 499).
const StatusClientClosedRequest = 499

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
)

// wireErrors maps sentinel errors to HTTP status and wire code, and codes back to sentinels in the client. The
// first match wins, so specific errors come before general ones. Codes are API: never change one.
var wireErrors = []struct {
	err    error
	status int
	code   string
}{
	{ErrBadRequest, http.StatusBadRequest, "bad_request"},
	{ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
	{ErrForbidden, http.StatusForbidden, "forbidden"},
	{ErrShuttingDown, http.StatusServiceUnavailable, "shutting_down"},
	{ErrRolloutsDisabled, http.StatusServiceUnavailable, "rollouts_disabled"},
	{rollout.ErrNoTrustedKeys, http.StatusServiceUnavailable, "no_trusted_keys"},
	{rollout.ErrTooLarge, http.StatusRequestEntityTooLarge, "manifest_too_large"},
	{rollout.ErrUnsigned, http.StatusForbidden, "unsigned"},
	{rollout.ErrUnknownKey, http.StatusForbidden, "unknown_key"},
	{rollout.ErrBadSignature, http.StatusForbidden, "bad_signature"},
	{rollout.ErrThreshold, http.StatusForbidden, "threshold"},
	{rollout.ErrRollback, http.StatusConflict, "rollback"},
	{rollout.ErrEquivocation, http.StatusConflict, "equivocation"},
	{rollout.ErrNameMismatch, http.StatusConflict, "name_mismatch"},
	{rollout.ErrExpired, http.StatusUnprocessableEntity, "expired"},
	{rollout.ErrSourceMismatch, http.StatusUnprocessableEntity, "source_mismatch"},
	{rollout.ErrNonCanonical, http.StatusUnprocessableEntity, "non_canonical"},
	{rollout.ErrInvalidManifest, http.StatusUnprocessableEntity, "invalid_manifest"},
	{rollout.ErrCorruptState, http.StatusInternalServerError, "corrupt_state"},
	{rollout.ErrNotFound, http.StatusNotFound, "no_such_rollout"},
	{blobstore.ErrNotFound, http.StatusNotFound, "not_found"},
	{blobstore.ErrInvalidData, http.StatusUnprocessableEntity, "invalid_data"},
	{blobstore.ErrIncomplete, http.StatusConflict, "incomplete"},
	{blobstore.ErrPinned, http.StatusConflict, "pinned"},
	{compat.ErrNoMetadata, http.StatusUnprocessableEntity, "no_metadata"},
	{compat.ErrMetadataVersion, http.StatusUnprocessableEntity, "metadata_version"},
	{compat.ErrFutureMetadata, http.StatusUnprocessableEntity, "future_metadata"},
	{compat.ErrMalformedTrailer, http.StatusUnprocessableEntity, "malformed_trailer"},
	{compat.ErrRuntimeRequirements, http.StatusUnprocessableEntity, "runtime_requirements"},
	{compat.ErrInvalidFingerprint, http.StatusUnprocessableEntity, "invalid_fingerprint"},
	{compat.ErrNoNPU, http.StatusServiceUnavailable, "no_npu"},
	{compat.ErrIncompatible, http.StatusUnprocessableEntity, "incompatible"},
	{compile.ErrNoCompiler, http.StatusServiceUnavailable, "no_compiler"},
	{compile.ErrCompileFailed, http.StatusInternalServerError, "compile_failed"},
	{compile.ErrTimeout, http.StatusGatewayTimeout, "compile_timeout"},
	{compile.ErrInvalidModel, http.StatusUnprocessableEntity, "invalid_model"},
	{compile.ErrInvalidProfile, http.StatusUnprocessableEntity, "invalid_profile"},
	{fs.ErrNotExist, http.StatusNotFound, "no_such_file"},
	{fs.ErrPermission, http.StatusForbidden, "permission"},
	{context.Canceled, StatusClientClosedRequest, "canceled"},
	{context.DeadlineExceeded, http.StatusGatewayTimeout, "timeout"},
}

const codeInternal = "internal"

// errorStatus maps err to its HTTP status and wire code; unknown errors are 500 "internal". An *Error in err's
// chain keeps its own status and code: an Agent adapter can answer errors of packages this one cannot import.
func errorStatus(err error) (int, string) {
	var ae *Error
	if errors.As(err, &ae) && ae.Status >= 400 && ae.Status <= 599 && ae.Code != "" {
		return ae.Status, ae.Code
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge, "too_large"
	}
	for _, we := range wireErrors {
		if errors.Is(err, we.err) {
			return we.status, we.code
		}
	}
	return http.StatusInternalServerError, codeInternal
}

// errorBody is the JSON body of every error response.
type errorBody struct {
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

// Unwrap returns the sentinel error of e's code, or nil for codes this client does not know.
func (e *Error) Unwrap() error {
	for _, we := range wireErrors {
		if we.code == e.Code {
			return we.err
		}
	}
	return nil
}
