package p2p

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Errors a peer reports in an ERROR frame. This file is the one place that maps them to and from wire codes.
var (
	ErrBadRequest     = errors.New("peer rejected the request as malformed")
	ErrBusy           = errors.New("peer is busy")
	ErrRemoteInternal = errors.New("peer failed internally")
	ErrUnsupported    = errors.New("peer does not support the request")
)

// errCode is an ERROR frame's code. Append-only, like message types.
type errCode uint16

const (
	codeInternal    errCode = 1
	codeNotFound    errCode = 2 // blobstore.ErrNotFound
	codeBadRequest  errCode = 3
	codeBusy        errCode = 4
	codeUnsupported errCode = 5
)

var codeErrors = map[errCode]error{
	codeInternal:    ErrRemoteInternal,
	codeNotFound:    blobstore.ErrNotFound,
	codeBadRequest:  ErrBadRequest,
	codeBusy:        ErrBusy,
	codeUnsupported: ErrUnsupported,
}

// RemoteError is an error reported by a peer; it unwraps to the sentinel of its code.
type RemoteError struct {
	Code errCode
	Msg  string
}

func (e *RemoteError) Error() string { return fmt.Sprintf("peer: %v: %s", e.Unwrap(), e.Msg) }

func (e *RemoteError) Unwrap() error {
	if err, ok := codeErrors[e.Code]; ok {
		return err
	}
	return ErrRemoteInternal
}

// wireCode picks the code a server reports for err; the message is err's text.
func wireCode(err error) errCode {
	switch {
	case errors.Is(err, blobstore.ErrNotFound):
		return codeNotFound
	case errors.Is(err, ErrProtocol), errors.Is(err, ErrBadRequest):
		return codeBadRequest
	case errors.Is(err, ErrBusy):
		return codeBusy
	case errors.Is(err, ErrUnsupported):
		return codeUnsupported
	default:
		return codeInternal
	}
}

func encodeError(err error) []byte {
	msg := err.Error()
	if len(msg) > maxErrorMsgLen {
		msg = msg[:maxErrorMsgLen]
	}
	b := binary.LittleEndian.AppendUint16(make([]byte, 0, 2+len(msg)), uint16(wireCode(err)))
	return append(b, msg...)
}

func decodeError(p []byte) error {
	if len(p) < 2 {
		return fmt.Errorf("%w: ERROR of %d bytes", ErrProtocol, len(p))
	}
	msg := string(p[2:])
	if !utf8.ValidString(msg) {
		msg = fmt.Sprintf("%q", msg)
	}
	return &RemoteError{Code: errCode(binary.LittleEndian.Uint16(p)), Msg: msg}
}
