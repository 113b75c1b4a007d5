package share

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// capChown is CAP_CHOWN's bit in /proc/self/status's CapEff.
const capChown = 1 << unix.CAP_CHOWN

// CurrentCred is this process's Cred: root without CAP_CHOWN (the packaged unit) cannot give files away either.
func CurrentCred() (Cred, error) {
	groups, err := os.Getgroups()
	if err != nil {
		return Cred{}, err
	}
	c := Cred{UID: os.Geteuid(), GID: os.Getegid(), Groups: groups}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return Cred{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return Cred{}, fmt.Errorf("/proc/self/status: CapEff: %w", err)
			}
			c.CanChown = caps&capChown != 0
			return c, nil
		}
	}
	return Cred{}, fmt.Errorf("/proc/self/status: no CapEff: %v", sc.Err())
}

// writable says why the daemon cannot create files in dir (nil: it can): EROFS on a read-only mount, EACCES
// without write permission, as the kernel decides for this process's effective ids and groups.
func writable(dir string) error {
	return unix.Faccessat(unix.AT_FDCWD, dir, unix.W_OK|unix.X_OK, unix.AT_EACCESS)
}
