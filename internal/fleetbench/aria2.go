//go:build linux

package fleetbench

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// trackerPort is where opentracker listens (TCP and UDP) on the seed.
const trackerPort = 6969

// pieceLengthExp is log2 of the torrent's piece length: 256 KiB, mktorrent's default, gives a 128 MiB blob 512
// pieces, plenty for 11 peers to trade.
const pieceLengthExp = 18

// Aria2 is BitTorrent distribution: opentracker and an aria2c seed on the seed host, aria2c on every receiver,
// all started at once and trading pieces with each other. Only the lab's tracker is used: no DHT, local peer
// discovery or peer exchange. Nothing limits uploads, and finished receivers keep seeding until the run ends
// (seed ratio 0). A host's time is when aria2 runs its on-bt-download-complete hook: every piece downloaded and
// hash-checked.
type Aria2 struct {
	// Encrypt makes every aria2c require BitTorrent's message stream encryption with RC4 on every byte (MSE/PE,
	// `--bt-require-crypto --bt-min-crypto-level=arc4`): the protocol's own answer to an untrusted network, to
	// compare with npu-agent, which encrypts every byte with TLS. The system is then "aria2-mse".
	Encrypt bool

	env      Env
	torrent  string
	infoHash [20]byte
	tracker  *proc
	seed     *proc
	clients  []*proc
}

var _ System = (*Aria2)(nil)

// Name implements System.
func (a *Aria2) Name() string {
	if a.Encrypt {
		return "aria2-mse"
	}
	return "aria2"
}

// args are the options of every aria2c, seed and receivers alike.
func (a *Aria2) args() []string {
	args := []string{
		"--no-conf=true", // nothing from the invoking user's ~/.aria2
		"--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
		"--disable-ipv6=true",
		"--seed-ratio=0.0", // seed until stopped
		"--max-overall-upload-limit=0", "--max-upload-limit=0",
		"--max-overall-download-limit=0", "--max-download-limit=0",
		"--bt-max-peers=0", // unlimited
		"--file-allocation=none",
		"--listen-port=6881",
		"--bt-save-metadata=false",
		"--allow-overwrite=true", "--auto-file-renaming=false",
		"--summary-interval=0", "--show-console-readout=false", "--console-log-level=warn", "--enable-color=false",
		// Die with the harness rather than linger if it is killed.
		"--stop-with-process=" + strconv.Itoa(os.Getpid()),
	}
	if a.Encrypt {
		args = append(args, "--bt-require-crypto=true", "--bt-min-crypto-level=arc4")
	}
	return args
}

// Setup implements System: it makes the torrent, starts the tracker (whitelisting the torrent: Debian's
// opentracker is built in whitelist mode) and the seed, and waits until the tracker lists the seed.
func (a *Aria2) Setup(ctx context.Context, env Env) error {
	if err := requireTools("aria2c", "opentracker", "mktorrent"); err != nil {
		return err
	}
	a.env = env
	seedIP := env.Lab.Hosts[SeedHost].IP
	trackerAddr := netip.AddrPortFrom(seedIP, trackerPort).String()
	a.torrent = filepath.Join(env.Dir, "blob.torrent")
	if out, err := exec.CommandContext(ctx, "mktorrent", "-l", strconv.Itoa(pieceLengthExp),
		"-a", "http://"+trackerAddr+"/announce", "-o", a.torrent, env.Seed.Path).CombinedOutput(); err != nil {
		return fmt.Errorf("fleetbench: mktorrent: %w: %s", err, bytes.TrimSpace(out))
	}
	out, err := exec.CommandContext(ctx, "aria2c", "--no-conf=true", "-S", a.torrent).Output()
	if err != nil {
		return fmt.Errorf("fleetbench: aria2c -S: %w", err)
	}
	if a.infoHash, err = parseInfoHash(out); err != nil {
		return err
	}

	// opentracker chroots into its directory and drops to nobody, so the directory and whitelist must be
	// readable by nobody and the whitelist named relative to it.
	tdir := filepath.Join(env.Dir, "tracker")
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	if err := os.Chmod(tdir, 0o755); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	files := map[string]string{
		"whitelist.txt":    hex.EncodeToString(a.infoHash[:]) + "\n",
		"opentracker.conf": "access.whitelist whitelist.txt\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tdir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("fleetbench: %w", err)
		}
	}
	a.tracker, err = start(ctx, env.Lab, SeedHost, filepath.Join(tdir, "opentracker.log"), "opentracker",
		"-f", filepath.Join(tdir, "opentracker.conf"), "-d", tdir, "-u", "nobody",
		"-i", seedIP.String(), "-p", strconv.Itoa(trackerPort), "-P", strconv.Itoa(trackerPort))
	if err != nil {
		return err
	}
	scrape := "http://" + trackerAddr + "/scrape?info_hash=" + percentEncode(a.infoHash[:])
	ready, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := waitHTTP(ready, env.Lab, 1, http.MethodGet, scrape, a.tracker, func(r *http.Response, body []byte) bool {
		return r.StatusCode == http.StatusOK && bytes.HasPrefix(body, []byte("d5:files"))
	}); err != nil {
		return err
	}

	// The seed checks its copy against the torrent before it seeds.
	a.seed, err = start(ctx, env.Lab, SeedHost, filepath.Join(env.Dir, "seed-aria2.log"), "aria2c",
		append(a.args(), "--dir="+filepath.Dir(env.Seed.Path), "--check-integrity=true", a.torrent)...)
	if err != nil {
		return err
	}
	// Receivers learn peers from the tracker only when they announce, so the seed must be listed before they
	// start; each receiver learns of later ones when those connect to it.
	seeded, cancel2 := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel2()
	return waitHTTP(seeded, env.Lab, 1, http.MethodGet, scrape, a.seed, func(r *http.Response, body []byte) bool {
		return r.StatusCode == http.StatusOK && bytes.Contains(body, []byte("8:completei1e"))
	})
}

var infoHashRE = regexp.MustCompile(`(?m)^Info Hash: ([0-9a-fA-F]{40})\s*$`)

// parseInfoHash finds the info hash in the output of `aria2c -S`.
func parseInfoHash(out []byte) ([20]byte, error) {
	var h [20]byte
	m := infoHashRE.FindSubmatch(out)
	if m == nil {
		return h, fmt.Errorf("fleetbench: no info hash in aria2c -S output")
	}
	_, err := hex.Decode(h[:], m[1])
	return h, err
}

// percentEncode encodes every byte as %XX: trackers differ in how they read '+' and other reserved characters
// that url.QueryEscape leaves or rewrites.
func percentEncode(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		fmt.Fprintf(&sb, "%%%02X", c)
	}
	return sb.String()
}

// hookScript records when aria2 finished the download, next to itself, atomically for the poller.
const hookScript = `#!/bin/sh
d=$(dirname "$0")
date +%s%N > "$d/done.tmp" && mv "$d/done.tmp" "$d/done"
`

// Run implements System: every receiver's aria2c starts at once; a host is done when its hook has run.
func (a *Aria2) Run(ctx context.Context) ([]HostResult, error) {
	dirs, err := receiverDirs(a.env)
	if err != nil {
		return nil, err
	}
	for _, d := range dirs[1:] {
		if err := os.WriteFile(filepath.Join(d, "done.sh"), []byte(hookScript), 0o755); err != nil {
			return nil, fmt.Errorf("fleetbench: %w", err)
		}
	}
	t0 := time.Now()
	for i := 1; i < len(dirs); i++ {
		p, err := start(ctx, a.env.Lab, i, filepath.Join(dirs[i], "aria2.log"), "aria2c",
			append(a.args(), "--dir="+dirs[i], "--on-bt-download-complete="+filepath.Join(dirs[i], "done.sh"), a.torrent)...)
		if err != nil {
			return nil, err
		}
		a.clients = append(a.clients, p)
	}

	name := filepath.Base(a.env.Seed.Path)
	results := make([]HostResult, 0, len(dirs)-1)
	finished := make([]bool, len(dirs))
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(results) < len(dirs)-1 {
		for i := 1; i < len(dirs); i++ {
			if finished[i] {
				continue
			}
			select {
			case err := <-a.clients[i-1].done:
				a.clients[i-1].done <- err
				return nil, fmt.Errorf("host %d: aria2c exited before finishing (%v): %s", i, err, a.clients[i-1].tail())
			default:
			}
			at, ok, err := readDone(filepath.Join(dirs[i], "done"))
			if err != nil {
				return nil, fmt.Errorf("host %d: %w", i, err)
			}
			if ok {
				finished[i] = true
				results = append(results, HostResult{Host: i, Elapsed: at.Sub(t0), Path: filepath.Join(dirs[i], name)})
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("fleetbench: %d of %d receivers done: %w", len(results), len(dirs)-1, ctx.Err())
		case <-tick.C:
		}
	}
	return results, nil
}

// readDone reads the time a hook script wrote (nanoseconds since the epoch), if it has run.
func readDone(path string) (time.Time, bool, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("fleetbench: %w", err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || ns <= 0 {
		return time.Time{}, false, fmt.Errorf("fleetbench: completion time %q in %s is not a time", b, path)
	}
	return time.Unix(0, ns), true, nil
}

// StopSeed implements SeedLeaver: the seed's aria2c stops; the tracker (infrastructure, not a source) stays.
func (a *Aria2) StopSeed() error {
	err := a.seed.stop()
	a.seed = nil
	return err
}

// Close implements System.
func (a *Aria2) Close() error {
	return stopAll(append([]*proc{a.tracker, a.seed}, a.clients...))
}
