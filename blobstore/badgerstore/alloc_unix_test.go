//go:build unix

package badgerstore

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// allocated is the disk space the value-log files of dir occupy (they are sparse while written).
func allocated(t *testing.T, dir string) int64 {
	t.Helper()
	// The value log, and the blob files (layout 2).
	files, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
	for _, sub := range []string{dirBlobs, dirPartial, dirTmp} {
		more, _ := filepath.Glob(filepath.Join(dir, sub, "*"))
		files = append(files, more...)
	}
	var n int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		n += st.Sys().(*syscall.Stat_t).Blocks * 512
	}
	return n
}
