//go:build !linux

package server

import (
	"fmt"
	"net"
)

// peerCred knows no credentials off Linux (not a daemon target): socket clients are anonymous there.
func peerCred(net.Conn) (peer, bool) { return peer{}, false }

func (p peer) String() string { return fmt.Sprintf("uid %d", p.uid) }
