//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// WriteIdentity creates the daemon identity key the p2p node would create in dataDir (p2p.IdentityFile, mode
// 0600) and returns its peer ID, so static peer lists can be written before any daemon runs.
func WriteIdentity(dataDir string) (peer.ID, error) {
	sk, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return "", err
	}
	b, err := crypto.MarshalPrivateKey(sk)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("e2e: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "identity.key"), b, 0o600); err != nil {
		return "", fmt.Errorf("e2e: %w", err)
	}
	return peer.IDFromPrivateKey(sk)
}

// RSS is the daemon's resident set size in bytes (VmRSS of /proc/<pid>/status).
func (d *Daemon) RSS() (int64, error) {
	st, err := ProcStatus(d.PID())
	if err != nil {
		return 0, err
	}
	rss, ok := st["VmRSS"]
	if !ok {
		return 0, fmt.Errorf("e2e: no VmRSS in /proc/%d/status", d.PID())
	}
	return rss, nil
}

// ProcStatus reads /proc/<pid>/status: the lines in kB in bytes (VmRSS, VmHWM, RssAnon, ...), the other numeric
// lines as they are (Threads).
func ProcStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	m := map[string]int64{}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		f := strings.Fields(v)
		if !ok || len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) == 2 && f[1] == "kB" {
			n <<= 10
		}
		m[k] = n
	}
	return m, nil
}
