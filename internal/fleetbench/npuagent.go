//go:build linux

package fleetbench

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/internal/e2e"
	"github.com/npu-agent/npu-agent/p2p"
	"github.com/npu-agent/npu-agent/rollout"
)

// NPUAgent is npu-agent's own distribution: a daemon on every host, joined into one fleet by mDNS and a fleet
// key. The seed's daemon holds the blob (registered through its API before the run); at the start every receiver
// runs `npu-agent fetch`, which asks its daemon, which fetches the blob from the peers that have it, chunk by chunk,
// serving the chunks it holds to the others meanwhile. A host's time is when its fetch command returns: the blob
// verified, stored and written out as the file a loader would import.
type NPUAgent struct {
	// Binary is the npu-agent binary to run.
	Binary string
	// Authority joins the fleet with a fleet authority's member certificates instead of a fleet key
	// (docs/design.md 6.2): no second cipher on every byte, QUIC as a fallback.
	Authority bool

	env     Env
	daemons []*e2e.Daemon // index = lab host
	left    bool          // the seed's daemon was stopped by StopSeed
	notes   string        // Notes, read from the seed's log before Close stops it
}

var _ System = (*NPUAgent)(nil)

// receiverCompileTime is the simulated compile time on receivers. They must fetch, never compile: a compile this
// long would overrun any run's timeout, so a receiver that compiles fails the run instead of skewing it.
const receiverCompileTime = 24 * time.Hour

// Name implements System.
func (a *NPUAgent) Name() string {
	if a.Authority {
		return "npu-agent-authority"
	}
	return "npu-agent"
}

// Setup implements System: it starts a daemon on every host, waits until each sees all the others, registers the
// seed blob with the seed's daemon, and waits until every receiver has the record of it.
func (a *NPUAgent) Setup(ctx context.Context, env Env) error {
	if a.Binary == "" {
		return fmt.Errorf("%w: no npu-agent binary (fleetbench -npu-agent)", ErrConfig)
	}
	if _, err := os.Stat(a.Binary); err != nil {
		return fmt.Errorf("fleetbench: npu-agent binary: %w", err)
	}
	a.env = env
	key := filepath.Join(env.Dir, "fleet.key")
	var authority ed25519.PrivateKey
	if a.Authority {
		_, authority, _ = ed25519.GenerateKey(nil)
	} else if err := e2e.WriteFleetKey(key); err != nil {
		return err
	}
	for i := range env.Lab.Hosts {
		c := e2e.Config{
			Binary: a.Binary, Dir: filepath.Join(env.Dir, "h"+strconv.Itoa(i)), Fingerprint: SeedFingerprint,
			CompileTime: receiverCompileTime, BlobSize: 4096, P2P: true, FleetKeyFile: key,
		}
		if a.Authority {
			if err := memberOf(authority, &c); err != nil {
				return err
			}
		}
		d, err := e2e.Start(ctx, env.Lab, i, c)
		if err != nil {
			return err
		}
		a.daemons = append(a.daemons, d)
	}
	ready, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for _, d := range a.daemons {
		if err := d.WaitReady(ready); err != nil {
			return err
		}
	}
	for _, d := range a.daemons {
		if err := d.WaitPeers(ready, len(a.daemons)-1); err != nil {
			return err
		}
	}
	return a.seed(ready)
}

// memberOf gives the daemon of c an identity and a certificate of authority, in place of the fleet key.
func memberOf(authority ed25519.PrivateKey, c *e2e.Config) error {
	id, err := e2e.WriteIdentity(filepath.Join(c.Dir, "data"))
	if err != nil {
		return err
	}
	cert, err := p2p.IssueCert(authority, id, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		return err
	}
	c.FleetKeyFile, c.MemberCertFile = "", filepath.Join(c.Dir, "member.cert")
	c.FleetAuthority = rollout.FormatPublicKey(authority.Public().(ed25519.PublicKey))
	if err := os.WriteFile(c.MemberCertFile, p2p.EncodePEM(cert, true), 0o644); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	return nil
}

// seed registers the seed blob with the seed host's daemon, which announces it to the fleet, then waits until
// every receiver's daemon knows of it: a fetch that started before would find no record and go to the compile path.
func (a *NPUAgent) seed(ctx context.Context) error {
	prof, err := seedProfile()
	if err != nil {
		return err
	}
	f, err := os.Open(a.env.Seed.Path)
	if err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	defer f.Close()
	res, err := a.daemons[SeedHost].API().Put(ctx, api.PutRequest{Model: a.env.Seed.Model, Profile: prof}, f)
	if err != nil {
		return fmt.Errorf("fleetbench: register the seed blob: %w", err)
	}
	if res.SHA256 != fmt.Sprintf("%x", a.env.Seed.SHA256) {
		return fmt.Errorf("%w: the seed daemon stored sha256 %s", ErrVerify, res.SHA256)
	}
	st, err := a.daemons[SeedHost].API().Status(ctx)
	if err != nil {
		return fmt.Errorf("fleetbench: seed status: %w", err)
	}
	for _, d := range a.daemons[SeedHost+1:] {
		if err := d.WaitPeerRecords(ctx, st.PeerID, 1); err != nil {
			return err
		}
	}
	return nil
}

// Run implements System: every receiver's fetch is released at the same moment; a host is done when its fetch
// returns. A fetch that was not served from a peer fails the run.
func (a *NPUAgent) Run(ctx context.Context) ([]HostResult, error) {
	receivers := a.daemons[SeedHost+1:]
	results := make([]HostResult, len(receivers))
	errs := make([]error, len(receivers))
	release := make(chan struct{})
	var wg sync.WaitGroup
	var t0 time.Time
	for k, d := range receivers {
		wg.Go(func() {
			// A daemon whose fetch failed falls back to compiling (receiverCompileTime): end its fetch at once.
			fctx, cancel := context.WithCancelCause(ctx)
			defer cancel(nil)
			go func() {
				if d.WaitLog(fctx, "compile fallback", e2e.LogMsg(compileFallbackMsg)) == nil {
					cancel(fmt.Errorf("%w: its fetch from peers failed and it began to compile (log %s)", errCompiling, d.LogPath))
				}
			}()
			<-release
			res, err := d.Fetch(fctx, a.env.Seed.Model, SeedShape)
			results[k] = HostResult{Host: d.Host, Elapsed: time.Since(t0), Path: res.Path}
			if err == nil {
				results[k].FirstByte, err = firstByte(res.Path, t0)
			}
			switch {
			case err != nil && errors.Is(context.Cause(fctx), errCompiling):
				errs[k] = fmt.Errorf("host %d: %w", d.Host, context.Cause(fctx))
			case err != nil && ctx.Err() != nil:
				// Hung rather than failed: its stacks in its log say where.
				errs[k] = errors.Join(fmt.Errorf("host %d: %w (stacks in %s)", d.Host, err, d.LogPath), d.DumpStacks())
			case err != nil:
				errs[k] = fmt.Errorf("host %d: %w", d.Host, err)
			case res.Source != "peer":
				errs[k] = fmt.Errorf("host %d: blob came from %q, want peer", d.Host, res.Source)
			}
		})
	}
	t0 = time.Now()
	close(release)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return results, nil
}

// compileFallbackMsg is the agent's log message when no peer could serve the blob (agent.fromPeers).
const compileFallbackMsg = "no peer could serve a compatible blob; compiling"

// seedDeliveredMsg is the p2p server's log message when a blob it seeds has had every chunk delivered once
// (p2p/swarm_served.go).
const seedDeliveredMsg = "every chunk of the blob delivered to peers at least once"

var errCompiling = errors.New("receiver fell back to compiling")

// WaitSeedSent implements SeedSentWaiter: the seed's daemon logs when every chunk has been read whole by some
// receiver (a receiver's next request on the stream proves it).
func (a *NPUAgent) WaitSeedSent(ctx context.Context) error {
	return a.daemons[SeedHost].WaitLog(ctx, "every chunk delivered", e2e.LogMsg(seedDeliveredMsg))
}

// Notes implements Noter.
func (a *NPUAgent) Notes() string { return a.notes }

// seedNotes is the seed's own count of chunks sent more than once (load-insensitive, unlike times), from its log,
// and the receivers' counts of requests that duplicated one in flight and chunks received in vain.
func (a *NPUAgent) seedNotes() string {
	if len(a.daemons) == 0 {
		return ""
	}
	line := lastLog(a.daemons[SeedHost], seedDeliveredMsg)
	if line == "" {
		return "the seed did not report every chunk delivered"
	}
	var out []string
	for _, k := range []string{"chunks", "resent", "refused", "all_sent_after", "all_delivered_after"} {
		if v, ok := logField(line, k); ok {
			out = append(out, k+" "+v)
		}
	}
	notes := "seed, when every chunk had been delivered once: " + strings.Join(out, ", ") +
		" (resent: chunks sent twice; refused: repeat requests answered NO_CHUNK)"
	// Counts each receiver logs with transferDoneMsg, summed over the receivers; the per-rule ones only over those
	// that logged them (binaries before them log the first two).
	counts := []string{"duplicate_requests", "wasted_chunks", "slow_copies", "slow_wasted", "fill_copies", "fill_wasted"}
	sum := make([]int, len(counts))
	logged := make([]int, len(counts)) // receivers that logged each count
	var took []time.Duration           // each receiver's transfer alone: a host's time minus it is its fetch command's overhead
	for _, d := range a.daemons[SeedHost+1:] {
		l := lastLog(d, transferDoneMsg)
		if v, ok := logField(l, "took"); ok {
			if dur, err := time.ParseDuration(v); err == nil {
				took = append(took, dur)
			}
		}
		for i, k := range counts {
			v, ok := logField(l, k)
			if x, err := strconv.Atoi(v); ok && err == nil {
				sum[i] += x
				logged[i]++
			}
		}
	}
	if n := logged[1]; n > 0 {
		notes += fmt.Sprintf("; %d receivers: %d duplicate requests, %d chunks received in vain", n, sum[0], sum[1])
		if logged[5] > 0 {
			notes += fmt.Sprintf(" (slow copies %d, %d in vain; end-game fill copies %d, %d in vain)", sum[2], sum[3], sum[4], sum[5])
		}
	}
	if len(took) > 0 {
		notes += fmt.Sprintf("; transfers took %s-%s", slices.Min(took), slices.Max(took))
	}
	return notes
}

// transferDoneMsg is a receiver's log message when its transfer has every chunk (p2p/fetch.go).
const transferDoneMsg = "blob transfer has every chunk"

// lastLog returns the last line of d's log whose message is msg, or "".
func lastLog(d *e2e.Daemon, msg string) string {
	var line string
	d.CountLog(func(l string) bool {
		if e2e.LogMsg(msg)(l) {
			line = l
			return true
		}
		return false
	})
	return line
}

// logField returns the value of key=value in an slog text line.
func logField(line, k string) (string, bool) {
	i := strings.Index(line, " "+k+"=")
	if i < 0 {
		return "", false
	}
	v, _, _ := strings.Cut(strings.TrimSpace(line[i+len(k)+2:]), " ")
	return v, true
}

// StopSeed implements SeedLeaver: the seed's daemon stops (SIGTERM).
func (a *NPUAgent) StopSeed() error {
	a.left = true
	return a.daemons[SeedHost].Stop()
}

// firstByte reads the first byte of path as a loader would and returns the time since t0.
func firstByte(path string, t0 time.Time) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("loader: %w", err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.Read(b[:]); err != nil {
		return 0, fmt.Errorf("loader: %w", err)
	}
	return time.Since(t0), nil
}

// Close implements System.
func (a *NPUAgent) Close() error {
	a.notes = a.seedNotes()
	errs := make([]error, len(a.daemons))
	var wg sync.WaitGroup
	for i, d := range a.daemons {
		if i == SeedHost && a.left {
			continue
		}
		wg.Go(func() { errs[i] = d.Stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}
