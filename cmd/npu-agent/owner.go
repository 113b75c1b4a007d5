package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/npu-agent/npu-agent/config"
)

// daemonUser is the system user the Debian package runs the daemon as.
const daemonUser = "npu-agent"

// checkStoreOwner lets a command open the store in this process (no daemon runs) only as the user owning the
// data directory and its store, so that it never leaves files the daemon cannot open. Root may not create the
// package's data directory, which systemd creates for the daemon's user.
func checkStoreOwner(dataDir string) error {
	euid := os.Geteuid()
	for _, dir := range []string{dataDir, filepath.Join(dataDir, "store")} {
		uid, err := fileOwner(dir)
		if errors.Is(err, fs.ErrNotExist) {
			if dir == dataDir && euid == 0 && filepath.Clean(dataDir) == config.Default().DataDir {
				if _, err := user.Lookup(daemonUser); err == nil {
					return fmt.Errorf("%w: data directory %s does not exist yet and root would own what this command creates there: "+
						"start the daemon first (systemctl start npu-agent), or run as %s (sudo -u %s npu-agent ...)",
						fs.ErrPermission, dataDir, daemonUser, daemonUser)
				}
			}
			return nil
		}
		if err != nil || uid < 0 || uid == euid {
			continue // not a system that tells owners (windows), or ours
		}
		name := strconv.Itoa(uid)
		if u, err := user.LookupId(name); err == nil {
			name = u.Username
		}
		return fmt.Errorf("%w: no daemon answers, and the store in %s belongs to user %s: without a daemon, store commands "+
			"run only as the store's owner so that the daemon can open every file afterwards; start the daemon "+
			"(systemctl start npu-agent) or run as %s (sudo -u %s npu-agent ...)", fs.ErrPermission, dir, name, name, name)
	}
	return nil
}
