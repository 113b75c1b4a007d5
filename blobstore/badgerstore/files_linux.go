package badgerstore

import (
	"os"

	"golang.org/x/sys/unix"
)

// preallocate reserves disk blocks for [off, off+n) of f (fallocate), so that a blob written in place out of order
// stays in few extents; where the filesystem cannot, the file stays sparse and is filled as chunks arrive.
func preallocate(f *os.File, off, n int64) {
	_ = unix.Fallocate(int(f.Fd()), 0, off, n)
}

// startWriteback asks the kernel to start writing f's dirty pages without waiting (sync_file_range), so that the
// fsync at the end of a long write finds little left to do and the page cache does not fill with dirty pages.
func startWriteback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

// throttleWriteback waits until the writeback of f's pages started before has finished, then starts writeback of
// the pages dirty since (sync_file_range WAIT_BEFORE|WRITE). Called every writebackEvery bytes of a blob written in
// place, it keeps what the final fsync must wait for to about two windows, whatever the disk's speed: when the
// disk is slower than the network the writer waits here, during the transfer, rather than all at once at commit.
func throttleWriteback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE)
}

// openDirect opens the file at path for writes that bypass the page cache (O_DIRECT); a filesystem without direct
// I/O refuses with EINVAL.
func openDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
}
