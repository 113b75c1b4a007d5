//go:build linux

// Package fleetbench measures how long a distribution system takes to copy one blob from one seed host to every
// other host of a simulated LAN (internal/netlab), and compares it with the physical lower bound.
//
// Host 0 of the lab is the seed; hosts 1..N receive. With upload rate u_s on the seed, download rates d_i and
// upload rates u_i on the receivers, no system can finish before
//
//	max(S/u_s, S/min d_i, N*S/(u_s + sum u_i))
//
// (the seed must send every byte once, the slowest receiver must receive every byte, and N copies must cross the
// hosts' uplinks). Systems plug in through the System interface.
package fleetbench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

// Sentinel errors.
var (
	ErrConfig     = errors.New("invalid fleet benchmark config")
	ErrVerify     = errors.New("copy does not match the seed blob")
	ErrIncomplete = errors.New("not every receiver reported a copy")
)

// SeedHost is the lab host that holds the blob at the start.
const SeedHost = 0

// System is one way of distributing a blob. A System value is used for one run: Setup, Run, Close.
type System interface {
	// Name identifies the system in results, e.g. "nginx".
	Name() string
	// Setup starts whatever must run before the transfer (servers, trackers, the seed) and returns once Run can
	// start. It is not timed.
	Setup(ctx context.Context, env Env) error
	// Run starts the transfer on every receiver (hosts 1..N) at the same moment and returns when each holds the
	// blob, with each receiver's completion time since that moment and the path of its copy. The harness checks
	// every copy's size and SHA-256 after Run.
	Run(ctx context.Context) ([]HostResult, error)
	// Close stops every process the system started. The harness removes Env.Dir itself.
	Close() error
}

// Env is what a system gets to work with.
type Env struct {
	Lab  *netlab.Lab
	Seed Blob   // on the seed host (host 0)
	Dir  string // empty directory for the system's files and the receivers' copies
}

// HostResult is one receiver's outcome.
type HostResult struct {
	Host    int           // lab host index, 1..N
	Elapsed time.Duration // from the start of Run's transfer to the complete copy
	Path    string        // the copy
	// FirstByte is from the start of the transfer to the loader's first byte read from the copy (a loader imports
	// only complete blobs); 0: the harness sets it to Elapsed.
	FirstByte time.Duration
}

// SeedLeaver is a System whose seed can leave mid-run (the seed-leaves scenario).
type SeedLeaver interface {
	// StopSeed stops the seed host's part of the system; the receivers must finish from each other.
	StopSeed() error
}

// SeedSentWaiter is a SeedLeaver that knows exactly when every block has reached some receiver: the harness stops
// its seed then, not at the SeedLeaveCopies proxy.
type SeedSentWaiter interface {
	WaitSeedSent(ctx context.Context) error
}

// Noter is a System with something to say about its last run (e.g. its seed's own counters), printed after it.
type Noter interface {
	Notes() string
}

// Config is one benchmark run.
type Config struct {
	Hosts int    // lab hosts including the seed, at least 2
	Size  int64  // blob payload size in bytes (the blob's trailer adds a few hundred)
	Rate  string // every host's rate in each direction, e.g. "100mbit"
	// TCPCongestion is every host's TCP congestion control (netlab.Config); empty: the machine's.
	TCPCongestion string
	Dir           string // working directory; blob and copies go under it
	Timeout       time.Duration
	// KeepFailed keeps a failed system's directory under Dir (its programs' logs) instead of removing it.
	KeepFailed bool
	// Slow lists receivers shaped to SlowRate instead of Rate (heterogeneous links).
	Slow     []int
	SlowRate string
	// SeedLeaves stops the seed (SeedLeaver) once it reports every block delivered (SeedSentWaiter), or else once
	// its uplink has sent SeedLeaveCopies copies of the blob.
	SeedLeaves bool
	// Timeline is how often link and CPU use are sampled during the run (0: TimelineInterval); at least
	// MinTimelineInterval, as each sample runs `ip -s -j link` in the lab's bridge namespace.
	Timeline time.Duration
	// Settle is how long the lab idles between a system's setup and its release: a fleet's daemons run long
	// before a rollout, and their start-up traffic (mDNS queries, membership pulls) is not the rollout's.
	Settle time.Duration
}

// MinTimelineInterval is the shortest Config.Timeline.
const MinTimelineInterval = 100 * time.Millisecond

// SeedLeaveCopies is how many blob sizes the seed's interface must have sent (headers included) before it leaves
// in the seed-leaves scenario. The harness cannot see which blocks a system sent, so this is a proxy for "every
// block has left the seed": a system that sends each block once from the seed has sent all of them after about
// 1.05 copies (TCP/IP headers); at 1.25 one that sent up to about 15 % of the blocks twice has too, and one that
// sent more duplicates may be left without a block and fail the run. npu-agent reports the moment exactly
// (SeedSentWaiter) and is not stopped by this proxy.
const SeedLeaveCopies = 1.25

// rates returns every host's rate in bit/s.
func (c Config) rates() []float64 {
	bps, _ := netlab.ParseRate(c.Rate)
	slow, _ := netlab.ParseRate(c.SlowRate)
	r := make([]float64, c.Hosts)
	for i := range r {
		r[i] = float64(bps)
		if slices.Contains(c.Slow, i) {
			r[i] = float64(slow)
		}
	}
	return r
}

// Limits that keep a run within what one machine can hold.
const (
	MaxHosts = 64
	MaxSize  = 8 << 30
)

// Validate checks c.
func (c Config) Validate() error {
	if c.Hosts < 2 || c.Hosts > MaxHosts {
		return fmt.Errorf("%w: hosts %d out of range 2..%d (one seed and at least one receiver)", ErrConfig, c.Hosts, MaxHosts)
	}
	if c.Size < 1 || c.Size > MaxSize {
		return fmt.Errorf("%w: size %d out of range 1..%d bytes", ErrConfig, c.Size, int64(MaxSize))
	}
	if _, err := netlab.ParseRate(c.Rate); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if c.Dir == "" {
		return fmt.Errorf("%w: no working directory", ErrConfig)
	}
	if len(c.Slow) > 0 {
		if _, err := netlab.ParseRate(c.SlowRate); err != nil {
			return fmt.Errorf("%w: slow rate: %w", ErrConfig, err)
		}
		for _, i := range c.Slow {
			if i <= SeedHost || i >= c.Hosts {
				return fmt.Errorf("%w: slow host %d is not a receiver", ErrConfig, i)
			}
		}
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("%w: timeout %v", ErrConfig, c.Timeout)
	}
	if c.Timeline != 0 && c.Timeline < MinTimelineInterval {
		return fmt.Errorf("%w: timeline interval %v shorter than %v", ErrConfig, c.Timeline, MinTimelineInterval)
	}
	return nil
}

// Result is one system's run.
type Result struct {
	System string
	Hosts  []HostResult // sorted by Elapsed
	Last   time.Duration
	Median time.Duration
	// FirstByte is the median host's time to the loader's first byte of the blob.
	FirstByte time.Duration
	Bound     time.Duration
	CPU       CPUUsage // machine CPU use during Run
	Links     LinkUse  // how busy the links were until the last host finished
	// SeedCopies is what the seed's interface sent until the last host finished, in blob sizes (headers included;
	// a seed that sends each block once sends about 1.04).
	SeedCopies float64
	// Received is the bytes copied to the receivers: their number times the blob's size.
	Received int64
	// Timeline is link and CPU use every TimelineEvery during the run.
	Timeline      []LinkSample
	TimelineEvery time.Duration
	Err           error // the run failed; the other fields may be zero
}

// Ratio is Last over Bound.
func (r Result) Ratio() float64 { return r.Last.Seconds() / r.Bound.Seconds() }

// CPUPerByte is the benchmark's processes' CPU time per byte received (ns/B; 0 when unknown): the CPU cost of a
// system independent of how long the run took, which the issue compares between systems.
func (r Result) CPUPerByte() float64 {
	if r.Received <= 0 {
		return 0
	}
	return float64(r.CPU.Procs.Nanoseconds()) / float64(r.Received)
}

// LabPrefix names the benchmark's labs; CleanupStale(LabPrefix) removes those of killed runs.
const LabPrefix = "fleetbench"

// Run benchmarks each system in turn, each on a fresh lab, and returns one Result per system. A system's failure
// is recorded in its Result and the next system still runs; only errors of the harness itself are returned.
func Run(ctx context.Context, cfg Config, systems []System, log io.Writer) ([]Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "creating %s blob\n", FormatSize(cfg.Size))
	seed, err := MakeSeed(ctx, filepath.Join(cfg.Dir, "seed"), cfg.Size)
	if err != nil {
		return nil, err
	}
	rates := cfg.rates()
	bound := LowerBound(seed.Size, rates[SeedHost], rates[1:], rates[1:])
	var results []Result
	for _, s := range systems {
		if _, ok := s.(SeedLeaver); cfg.SeedLeaves && !ok {
			fmt.Fprintf(log, "skipping %s: its seed cannot leave (it is the only source)\n", s.Name())
			continue
		}
		fmt.Fprintf(log, "running %s\n", s.Name())
		r := runOne(ctx, cfg, s, seed, log)
		r.System, r.Bound = s.Name(), bound
		if r.Err != nil {
			fmt.Fprintf(log, "%s failed: %v\n", s.Name(), r.Err)
		}
		if n, ok := s.(Noter); ok {
			if notes := n.Notes(); notes != "" {
				fmt.Fprintf(log, "%s: %s\n", s.Name(), notes)
			}
		}
		results = append(results, r)
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
	}
	return results, nil
}

func runOne(ctx context.Context, cfg Config, s System, seed Blob, log io.Writer) (r Result) {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	lab, err := netlab.New(ctx, netlab.Config{Hosts: cfg.Hosts, Rate: cfg.Rate, Prefix: LabPrefix, TCPCongestion: cfg.TCPCongestion})
	if err != nil {
		return Result{Err: err}
	}
	for _, i := range cfg.Slow {
		if err := lab.Shape(i, cfg.SlowRate); err != nil {
			lab.Close()
			return Result{Err: err}
		}
	}
	dir := filepath.Join(cfg.Dir, s.Name())
	defer func() {
		r.Err = errors.Join(r.Err, s.Close(), lab.Close())
		if r.Err != nil && cfg.KeepFailed {
			fmt.Fprintf(log, "%s failed; its files are kept in %s\n", s.Name(), dir)
			return
		}
		r.Err = errors.Join(r.Err, os.RemoveAll(dir))
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Result{Err: fmt.Errorf("fleetbench: %w", err)}
	}
	if err := s.Setup(ctx, Env{Lab: lab, Seed: seed, Dir: dir}); err != nil {
		return Result{Err: fmt.Errorf("%s setup: %w", s.Name(), err)}
	}
	select {
	case <-ctx.Done():
		return Result{Err: ctx.Err()}
	case <-time.After(cfg.Settle):
	}
	sampler, err := StartCPUSampler(500 * time.Millisecond)
	if err != nil {
		return Result{Err: err}
	}
	meter, err := startProcCPU(lab)
	if err != nil {
		sampler.Stop()
		return Result{Err: err}
	}
	before, err := labStats(ctx, lab)
	if err != nil {
		sampler.Stop()
		return Result{Err: err}
	}
	bps, _ := netlab.ParseRate(cfg.Rate)
	every := cmp.Or(cfg.Timeline, TimelineInterval)
	tl, err := startTimeline(ctx, lab, float64(bps), every)
	if err != nil {
		sampler.Stop()
		return Result{Err: err}
	}
	t0 := time.Now()
	leave := make(chan error, 1)
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	if cfg.SeedLeaves {
		go func() { leave <- leaveSeed(lctx, lab, s.(SeedLeaver), before[SeedHost].TxBytes, seed.Size, log) }()
	} else {
		leave <- nil
	}
	hosts, err := s.Run(ctx)
	wall := time.Since(t0)
	samples, terr := tl.stop()
	if err == nil {
		err = terr
	}
	var after []netlab.LinkStats
	if err == nil {
		after, err = labStats(ctx, lab)
	}
	lcancel()
	if cfg.SeedLeaves {
		if lerr := <-leave; err == nil && lerr != nil {
			err = lerr
		}
	}
	cpu := sampler.Stop()
	if procs, merr := meter.stop(); merr == nil {
		cpu.Procs = procs
		cpu.ProcsShare = procs.Seconds() / (wall.Seconds() * float64(runtime.NumCPU()))
	} else if err == nil {
		err = merr
	}
	if err != nil {
		return Result{Err: fmt.Errorf("%s run: %w", s.Name(), err), CPU: cpu}
	}
	if err := checkHosts(hosts, cfg.Hosts); err != nil {
		return Result{Err: err, CPU: cpu}
	}
	fmt.Fprintf(log, "verifying %d copies\n", len(hosts))
	for _, h := range hosts {
		if err := VerifyFile(h.Path, seed); err != nil {
			return Result{Err: fmt.Errorf("host %d: %w", h.Host, err), CPU: cpu}
		}
	}
	slices.SortFunc(hosts, func(a, b HostResult) int { return int(a.Elapsed - b.Elapsed) })
	last := hosts[len(hosts)-1].Elapsed
	fb := make([]HostResult, len(hosts))
	for i, h := range hosts {
		if h.FirstByte == 0 {
			h.FirstByte = h.Elapsed
		}
		fb[i] = HostResult{Elapsed: h.FirstByte}
	}
	slices.SortFunc(fb, func(a, b HostResult) int { return int(a.Elapsed - b.Elapsed) })
	fmt.Fprintf(log, "%s: per MiB received, the lab's processes made %s\n", s.Name(),
		meter.Events.perMiB(int64(len(hosts))*seed.Size))
	return Result{Hosts: hosts, Last: last, Median: median(hosts), FirstByte: median(fb), CPU: cpu,
		Links: linkUse(before, after, last, cfg.rates()), Timeline: samples, TimelineEvery: every,
		SeedCopies: float64(after[SeedHost].TxBytes-before[SeedHost].TxBytes) / float64(seed.Size),
		Received:   int64(len(hosts)) * seed.Size}
}

// LinkUse says how close to their rate the links ran, from interface byte counters (headers included, as tc
// counts them) over the time to the last host. Near 1 the links, not the CPU or the protocol, were the limit.
type LinkUse struct {
	SeedUp float64 // seed's bytes sent over what its uplink could carry
	AllUp  float64 // all hosts' bytes sent over what all uplinks could carry
}

func linkUse(before, after []netlab.LinkStats, elapsed time.Duration, bps []float64) LinkUse {
	if len(before) == 0 || len(before) != len(after) || len(bps) != len(after) || elapsed <= 0 {
		return LinkUse{}
	}
	var all, capacity float64
	for i := range after {
		if bps[i] <= 0 {
			return LinkUse{}
		}
		all += float64(after[i].TxBytes - before[i].TxBytes)
		capacity += elapsed.Seconds() * bps[i] / 8 // bytes host i's link can carry
	}
	return LinkUse{
		SeedUp: float64(after[SeedHost].TxBytes-before[SeedHost].TxBytes) / (elapsed.Seconds() * bps[SeedHost] / 8),
		AllUp:  all / capacity,
	}
}

// leaveSeed stops the seed once every block has left it: when the system says so (SeedSentWaiter), else once its
// interface has sent SeedLeaveCopies copies of the blob since the run started (polled every 100 ms). It gives up
// when ctx ends.
func leaveSeed(ctx context.Context, lab *netlab.Lab, s SeedLeaver, tx0 uint64, size int64, log io.Writer) error {
	if w, ok := s.(SeedSentWaiter); ok {
		if err := w.WaitSeedSent(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // the run ended first
			}
			return err
		}
		sent := "?"
		if st, err := lab.Stats(ctx, SeedHost); err == nil {
			sent = FormatSize(int64(st.TxBytes - tx0))
		}
		fmt.Fprintf(log, "seed leaves: it reports every block delivered, after sending %s\n", sent)
		return s.StopSeed()
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		st, err := lab.Stats(ctx, SeedHost)
		if err != nil {
			return nil // the run is ending
		}
		if float64(st.TxBytes-tx0) >= SeedLeaveCopies*float64(size) {
			fmt.Fprintf(log, "seed leaves after sending %s\n", FormatSize(int64(st.TxBytes-tx0)))
			return s.StopSeed()
		}
	}
}

func labStats(ctx context.Context, lab *netlab.Lab) ([]netlab.LinkStats, error) {
	stats := make([]netlab.LinkStats, len(lab.Hosts))
	for i := range lab.Hosts {
		var err error
		if stats[i], err = lab.Stats(ctx, i); err != nil {
			return nil, err
		}
	}
	return stats, nil
}

// checkHosts checks there is exactly one result per receiver.
func checkHosts(hosts []HostResult, labHosts int) error {
	seen := make([]bool, labHosts)
	for _, h := range hosts {
		if h.Host <= SeedHost || h.Host >= labHosts || seen[h.Host] {
			return fmt.Errorf("%w: bad or repeated host %d", ErrIncomplete, h.Host)
		}
		seen[h.Host] = true
	}
	if len(hosts) != labHosts-1 {
		return fmt.Errorf("%w: %d of %d receivers", ErrIncomplete, len(hosts), labHosts-1)
	}
	return nil
}

// median of hosts sorted by Elapsed; the mean of the middle two for an even count.
func median(hosts []HostResult) time.Duration {
	n := len(hosts)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return hosts[n/2].Elapsed
	}
	return (hosts[n/2-1].Elapsed + hosts[n/2].Elapsed) / 2
}

// LowerBound is the shortest time in which one seed with upload rate seedUp (bit/s) can get size bytes to receivers
// with download rates down and upload rates up: max(S/u_s, S/min d, N*S/(u_s + sum u)).
func LowerBound(size int64, seedUp float64, down, up []float64) time.Duration {
	bits := float64(size) * 8
	t := bits / seedUp
	if len(down) > 0 {
		t = max(t, bits/slices.Min(down))
	}
	sumUp := seedUp
	for _, u := range up {
		sumUp += u
	}
	t = max(t, float64(len(down))*bits/sumUp)
	return time.Duration(t * float64(time.Second))
}

// WriteTable prints results as a table: system, time to last host, median host time, bound, ratio, link use, CPU.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "system\tlast host\tmedian host\tloader 1st byte (median)\tbound\tlast/bound\tseed sent/blob\tseed up use\tall up use\tcpu avg\tcpu peak core\tbench procs cpu\tbench cpu/recv byte\t")
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(tw, "%s\tfailed\t\t\t\t\t\t\t\t\t\t\t\t\n", r.System)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.2fs\t%.2fs\t%.2fs\t%.2fs\t%.2f\t%.2f\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f%%\t%.0f%%\t%.1fns\t\n", r.System, r.Last.Seconds(),
			r.Median.Seconds(), r.FirstByte.Seconds(), r.Bound.Seconds(), r.Ratio(), r.SeedCopies, 100*r.Links.SeedUp, 100*r.Links.AllUp,
			100*r.CPU.Avg, 100*r.CPU.PeakCore, 100*r.CPU.ProcsShare, r.CPUPerByte())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		if r.Err != nil {
			if _, err := fmt.Fprintf(w, "%s: %s\n", r.System, oneLine(r.Err)); err != nil {
				return err
			}
		}
	}
	return nil
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }
