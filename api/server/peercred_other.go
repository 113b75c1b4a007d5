//go:build !linux

package server

import (
	"errors"
	"net"
)

// peerUID is not implemented here: store maintenance through the API is refused (run the CLI without a daemon).
func peerUID(*net.UnixConn) (uint32, error) {
	return 0, errors.New("peer credentials are not supported on this system")
}
