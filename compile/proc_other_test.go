//go:build !unix

package compile

import "os"

// processGone reports whether pid has exited, as far as os.FindProcess can tell.
func processGone(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return true
	}
	p.Release()
	return false
}
