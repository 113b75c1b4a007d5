//go:build linux

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
)

// The ids of the group-based setup (docs/operations.md section 10): the application's group, which the daemon's
// user (nobody) is a member of, and two application users in it. Numeric: nothing is added to /etc/group.
const (
	appGID   = 61234
	appUID   = 61235
	otherUID = 61236
)

// TestOVCacheUnprivilegedDaemon runs the daemon as an unprivileged user in the application's group, as the
// packaged unit with SupplementaryGroups= does, sharing directories of the recommended setup (2770 root:group,
// group and mode configured, no owner). An application writes entries into one directory; the daemon harvests
// them and populates the other: each entry lands with the daemon's uid, the group and the mode, and another
// application user of the group loads one (a cache hit) and removes one it cannot use, which the daemon then
// never writes again. A third directory the daemon may not write is warned about once, with the fix, however
// often its populate is tried, and counted. `config check` as that user refuses an owner and a group it cannot
// give, and accepts the group-based setup.
func TestOVCacheUnprivilegedDaemon(t *testing.T) {
	requireLab(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, err := os.MkdirTemp("", "npu-agent-ovperm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// The binaries are where every user may run them.
	bin, app := filepath.Join(base, "npu-agent"), filepath.Join(base, "ovapp")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", app, "github.com/npu-agent/npu-agent/ovcache/ovcachetest/cmd/ovapp").CombinedOutput(); err != nil {
		t.Fatalf("go build ovapp: %v: %s", err, out)
	}
	exe, err := os.ReadFile(npuAgent)
	if err == nil {
		err = os.WriteFile(bin, exe, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	mkdir := func(name string, mode os.FileMode, uid, gid int) string {
		t.Helper()
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // after chown, which clears setgid
			t.Fatal(err)
		}
		return p
	}
	daemonDir := mkdir("daemon", 0o750, daemonUID, daemonUID)
	appDir := mkdir("app", os.ModeSetgid|0o770, 0, appGID)
	sharedDir := mkdir("shared", os.ModeSetgid|0o770, 0, appGID)
	lockedDir := mkdir("locked", 0o755, 0, 0) // the daemon may read, not write
	group := strconv.Itoa(appGID)
	// config check reads the daemon's fingerprint_override, which Start writes later.
	if err := os.WriteFile(filepath.Join(daemonDir, "fingerprint.yaml"), LunarLake.YAML(), 0o644); err != nil {
		t.Fatal(err)
	}

	// config check as the daemon's user, with and without the group.
	nobody := &syscall.Credential{Uid: daemonUID, Gid: daemonUID}
	member := &syscall.Credential{Uid: daemonUID, Gid: daemonUID, Groups: []uint32{appGID}}
	i := 0
	for _, tc := range []struct {
		name       string
		cred       *syscall.Credential
		owner      string
		code       int
		want, lack []string
	}{
		{"impossible owner and group", nobody, "0", 2,
			[]string{`ovcache.dirs[0].owner: "0"`, "CAP_CHOWN", `ovcache.dirs[0].group: "` + group + `"`, "usermod -aG", "SupplementaryGroups="}, nil},
		{"group, not a member", nobody, "", 2, []string{"ovcache.dirs[0].group"}, []string{".owner"}},
		{"group-based, a member", member, "", 0, nil, []string{"ovcache.dirs"}},
	} {
		i++
		cfg := Config{Dir: daemonDir, OVCacheDirs: []OVCacheDir{{Path: sharedDir, Build: ovcachetest.Build, Owner: tc.owner, Group: group, Mode: "0440"}}}
		path := filepath.Join(base, "check-"+strconv.Itoa(i)+".yaml")
		if err := os.WriteFile(path, cfg.yaml(), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, bin, "--config", path, "config", "check")
		cmd.Env = append(daemonEnv(), "NPU_AGENT_SOCKET="+filepath.Join(daemonDir, "none.sock"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: tc.cred}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := cmd.ProcessState.ExitCode()
		if code != tc.code {
			t.Errorf("%s: config check exit %d (%v), want %d: %s", tc.name, code, err, tc.code, stderr.Bytes())
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%s: config check does not say %q: %s", tc.name, w, stderr.Bytes())
			}
		}
		for _, l := range tc.lack {
			if strings.Contains(stderr.String(), l) {
				t.Errorf("%s: config check says %q: %s", tc.name, l, stderr.Bytes())
			}
		}
	}

	dirCfg := func(p string) OVCacheDir {
		return OVCacheDir{Path: p, Build: ovcachetest.Build, Group: group, Mode: "0440"}
	}
	d := startStoreDaemon(ctx, t, Config{Binary: bin, Dir: daemonDir, Fingerprint: LunarLake, CompileTime: 50 * time.Millisecond,
		BlobSize: 64 << 10, User: member, OVCacheDirs: []OVCacheDir{dirCfg(appDir), dirCfg(sharedDir), dirCfg(lockedDir)}})

	runApp := func(uid int, dir, model string, args ...string) ovcachetest.Result {
		t.Helper()
		cmd := exec.CommandContext(ctx, app, append([]string{"-cache-dir", dir, "-model", model,
			"-prop", "DEVICE_ARCHITECTURE=" + LunarLake.Arch, "-prop", "NPU_DRIVER_VERSION=" + LunarLake.DriverVersion,
			"-payload", "200000"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: appGID}}
		return ovappResult(t, cmd, fmt.Sprintf("as uid %d in %s", uid, dir))
	}
	// Two models, two blobs: rejecting the second's blob leaves the first for the locked directory.
	var names []string
	for i, m := range []string{"model one", "model two"} {
		r := runApp(appUID, appDir, m, "-seed", strconv.Itoa(i+1))
		if !r.Compiled {
			t.Fatalf("the application did not compile %q: %+v", m, r)
		}
		names = append(names, r.Name)
	}

	// Both entries land in the shared directory: the daemon's, the application's group, 0440.
	if err := d.poll(ctx, "both entries in the shared directory", func(context.Context) (bool, error) {
		return len(entries(t, sharedDir)) == 2, nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		fi, err := os.Lstat(filepath.Join(sharedDir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != daemonUID || st.Gid != appGID || fi.Mode() != 0o440 {
			t.Errorf("%s: uid %d gid %d mode %v, want %d %d -r--r-----", name, st.Uid, st.Gid, fi.Mode(), daemonUID, appGID)
		}
	}
	// Another user of the group loads the first (no compile) and removes the second, which its plugin refuses.
	if r := runApp(otherUID, sharedDir, "model one", "-seed", "1"); !r.Hit || r.Compiled {
		t.Errorf("another application user does not load the daemon's entry: %+v", r)
	}
	if r := runApp(otherUID, sharedDir, "model two", "-seed", "2", "-import-fails"); !r.Removed {
		t.Errorf("another application user could not remove the daemon's entry: %+v", r)
	}
	if err := d.poll(ctx, "the rejection", func(ctx context.Context) (bool, error) {
		return ovMetric(ctx, t, d, "rejected") == 1, nil
	}); err != nil {
		t.Fatal(err)
	}

	// The locked directory: tried at least twice (so its backoff ended once), warned about once, with the fix.
	if err := d.poll(ctx, "two refused populates", func(ctx context.Context) (bool, error) {
		v, err := d.Metric(ctx, `npu_agent_ovcache_populate_failures_total{reason="permission"}`)
		if errors.Is(err, ErrMetric) {
			return false, nil
		}
		return v >= 2, err
	}); err != nil {
		t.Fatal(err)
	}
	warned := allOf(contains("cannot write the cache directory"), contains(lockedDir))
	if n, err := d.CountLog(warned); err != nil || n != 1 {
		t.Errorf("%d warnings about the locked directory (%v), want 1", n, err)
	}
	if n, _ := d.CountLog(allOf(warned, contains("chmod 2770"))); n != 1 {
		t.Error("the warning about the locked directory does not say the fix")
	}
	if n, _ := d.CountLog(allOf(contains("cannot write the cache directory"), contains(sharedDir))); n != 0 {
		t.Error("a warning about the writable shared directory")
	}
	if got := entries(t, lockedDir); len(got) != 0 {
		t.Errorf("entries in the locked directory: %v", got)
	}
	// The rejected entry is not written again (the application's own entry stands under its name).
	fi, err := os.Lstat(filepath.Join(sharedDir, names[1]))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != otherUID {
		t.Errorf("%s is uid %d's, want the application's (%d)", names[1], st.Uid, otherUID)
	}
}
