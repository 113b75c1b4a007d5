//go:build !unix

package procs

// ExecWithSysmonSetting does nothing where there is no exec in place.
func ExecWithSysmonSetting() error { return nil }
