//go:build !unix

package share

import "io/fs"

// Elsewhere os.Root already refuses links that leave the directory; there are no FIFOs to block on.
const (
	oNoFollow = 0
	oNonBlock = 0
)

// inode is unknown here: a replaced entry is told apart by size and mtime only.
func inode(fs.FileInfo) uint64 { return 0 }

// isReadOnly: elsewhere a read-only directory is a permission error.
func isReadOnly(error) bool { return false }
