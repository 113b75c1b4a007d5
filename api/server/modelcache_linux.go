package server

import (
	"io/fs"
	"syscall"
	"time"
)

// inodeCtime returns the file's inode number and status-change time; ok is false if the file system has none.
func inodeCtime(fi fs.FileInfo) (ino uint64, ctime time.Time, ok bool) {
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, time.Time{}, false
	}
	return sys.Ino, time.Unix(sys.Ctim.Sec, sys.Ctim.Nsec), true
}
