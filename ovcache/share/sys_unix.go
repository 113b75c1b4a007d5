//go:build unix

package share

import (
	"errors"
	"io/fs"
	"syscall"
)

// Opens inside a cache directory never follow a link and never block on a FIFO.
const (
	oNoFollow = syscall.O_NOFOLLOW
	oNonBlock = syscall.O_NONBLOCK
)

// inode tells a replaced entry from the one looked at before.
func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}

func isReadOnly(err error) bool { return errors.Is(err, syscall.EROFS) }
