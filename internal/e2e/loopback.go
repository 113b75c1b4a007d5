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
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.PID()))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("e2e: VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("e2e: no VmRSS in /proc/%d/status", d.PID())
}
