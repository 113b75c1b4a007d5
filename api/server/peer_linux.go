package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// peerCred returns the uid, gid and supplementary groups of the process at the other end of a unix socket
// (SO_PEERCRED: the kernel's record of the connecting process, which a client cannot forge).
func peerCred(c net.Conn) (peer, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{}, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{}, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return peer{}, false
	}
	p := peer{uid: cred.Uid, gid: cred.Gid, known: true}
	p.groups = procGroups(cred.Pid)
	return p, true
}

// maxStatus bounds how much of /proc/<pid>/status is read.
const maxStatus = 64 << 10

// procGroups reads the supplementary groups of pid from /proc (the connecting process's own list, not a guess
// from /etc/group). If they cannot be read the caller has its primary group only: fewer rights, never more.
func procGroups(pid int32) []uint32 {
	f, err := os.Open("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxStatus))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []uint32
		for _, g := range strings.Fields(rest) {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				out = append(out, uint32(n))
			}
		}
		return out
	}
	return nil
}

func (p peer) String() string { return fmt.Sprintf("uid %d", p.uid) }
