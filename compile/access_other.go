//go:build !linux

package compile

import (
	"io/fs"
	"os"
)

// openNoFollow opens path read-only. Off Linux (not a daemon target) there is no non-blocking or no-symlink open;
// owner refuses every caller check there.
func openNoFollow(path string, _ bool) (*os.File, error) { return os.Open(path) }

// owner is unknown off Linux: a caller's check then refuses.
func owner(fs.FileInfo) (uid, gid uint32, ok bool) { return 0, 0, false }
