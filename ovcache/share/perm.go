package share

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
)

// Cred is what the daemon's process may give the files it creates: its effective user and groups, and whether
// it holds CAP_CHOWN (root under the packaged unit does not: CapabilityBoundingSet= is empty).
type Cred struct {
	UID, GID int
	Groups   []int // supplementary groups
	CanChown bool
}

// ErrCannotOwn says a configured owner or group is one the daemon cannot give its entries.
var ErrCannotOwn = errors.New("the daemon cannot give its entries this owner or group")

// CanOwn says whether a process with c can give its entries owner uid (-1: its own), as Linux decides a chown
// of a file the process owns: another user needs CAP_CHOWN. The error says what to change.
func (c Cred) CanOwn(uid int) error {
	if uid < 0 || uid == c.UID || c.CanChown {
		return nil
	}
	return fmt.Errorf("%w: uid %d; the daemon runs as uid %d without CAP_CHOWN and can only write entries it owns itself: "+
		"leave owner unset and let the application read them through group and mode (docs/operations.md section 10)", ErrCannotOwn, uid, c.UID)
}

// CanGroup says whether a process with c can give its entries group gid (-1: its own): it needs CAP_CHOWN or
// membership. The error says what to change.
func (c Cred) CanGroup(gid int) error {
	if gid < 0 || gid == c.GID || slices.Contains(c.Groups, gid) || c.CanChown {
		return nil
	}
	return fmt.Errorf("%w: gid %d; the daemon (uid %d) is not a member of it: add it "+
		"(`usermod -aG GROUP npu-agent`, or SupplementaryGroups=GROUP with `systemctl edit npu-agent`) and restart it", ErrCannotOwn, gid, c.UID)
}

// Populate failure reasons (the reason label of npu_agent_ovcache_populate_failures_total).
const (
	failReadOnly   = "read_only"  // the directory is on a read-only mount (ProtectSystem= without ReadWritePaths=)
	failPermission = "permission" // the daemon's user may not create files there or give them their owner
	failOther      = "other"      // fetching or checking the blob, a full disk, ...
)

// failReason classifies a populate error; a directory's reason comes with the fix the log line gives once.
func failReason(err error) (reason, fix string) {
	switch {
	case isReadOnly(err):
		return failReadOnly, "the directory is read-only for the daemon: under the packaged unit add it to ReadWritePaths= " +
			"(systemctl edit npu-agent; docs/operations.md section 10) and restart the daemon"
	case errors.Is(err, fs.ErrPermission):
		return failPermission, "the daemon's user cannot create entries here or give them the configured owner: make the " +
			"directory writable by a group the daemon is in (chgrp GROUP DIR; chmod 2770 DIR; SupplementaryGroups=GROUP) " +
			"and leave owner unset (docs/operations.md section 10)"
	}
	return failOther, ""
}
