// Package flight is the fleet-wide single flight: when no compatible blob exists anywhere, the peers of one
// compatibility class that want the same model and profile agree on one compiler; the others wait for its result,
// take over if it dies, and never wait past a deadline. The rules are in DESIGN.md.
package flight

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Defaults of Config.
const (
	DefaultWindow      = 200 * time.Millisecond
	DefaultLeaseTTL    = 15 * time.Second
	DefaultDeadline    = 30 * time.Minute
	DefaultMaxFailures = 2
)

// Errors of Do.
var (
	ErrInvalidRequest = errors.New("invalid flight request")
	ErrBusy           = errors.New("key already in flight in this process")
	ErrRemoteFailed   = errors.New("fleet compile failed on other peers")
)

// Config tunes a Coordinator. Zero fields take the defaults.
type Config struct {
	// Window is how long a new flight collects WANTs before it elects, and how long a claim waits for a better
	// claim before its holder starts compiling.
	Window time.Duration
	// LeaseTTL is how long a WANT or LEASE stays live after receipt. Holders heartbeat and waiters re-announce
	// every LeaseTTL/3; an elected peer that does not claim within LeaseTTL is passed over.
	LeaseTTL time.Duration
	// Spread is the range of the WANT suppression backoff (rule 2; default 2 × Window): longer spreads mean
	// fewer WANTs when deliveries are slow, and a later first claim.
	Spread time.Duration
	// Deadline bounds a flight: past it a peer that is not compiling compiles itself.
	Deadline time.Duration
	// MaxFailures is how many failed DONEs of usable holders a waiter accepts before it gives up with
	// ErrRemoteFailed instead of electing another compiler.
	MaxFailures int
	// Logger receives debug events; nil means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.Spread == 0 {
		c.Spread = 2 * c.Window
	}
	if c.Deadline == 0 {
		c.Deadline = DefaultDeadline
	}
	if c.MaxFailures == 0 {
		c.MaxFailures = DefaultMaxFailures
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.Window < 0:
		return c, fmt.Errorf("%w: window %v is negative", ErrInvalidRequest, c.Window)
	case c.LeaseTTL < MinTTL || c.LeaseTTL > MaxTTL || c.LeaseTTL%time.Millisecond != 0:
		return c, fmt.Errorf("%w: lease TTL %v outside [%v, %v] or not whole milliseconds", ErrInvalidRequest,
			c.LeaseTTL, MinTTL, MaxTTL)
	case c.Spread < 0:
		return c, fmt.Errorf("%w: spread %v is negative", ErrInvalidRequest, c.Spread)
	case c.Deadline < 0:
		return c, fmt.Errorf("%w: deadline %v is negative", ErrInvalidRequest, c.Deadline)
	case c.MaxFailures < 0:
		return c, fmt.Errorf("%w: max failures %d is negative", ErrInvalidRequest, c.MaxFailures)
	}
	return c, nil
}

// Role says how a flight ended for this peer.
type Role int

// Roles of an Outcome.
const (
	RoleCompiled Role = iota + 1 // elected (or alone) and compiled
	RoleTookOver                 // compiled after an earlier holder expired, failed or yielded
	RoleWaited                   // another peer compiled; its DONE gave the CID
	RoleFound                    // Ready reported a compatible blob; nobody compiled for us
	RoleDeadline                 // compiled because the deadline passed while waiting
)

func (r Role) String() string {
	switch r {
	case RoleCompiled:
		return "compiled"
	case RoleTookOver:
		return "took-over"
	case RoleWaited:
		return "waited"
	case RoleFound:
		return "found"
	case RoleDeadline:
		return "deadline"
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// Compiled reports whether this peer ran the compile.
func (r Role) Compiled() bool { return r == RoleCompiled || r == RoleTookOver || r == RoleDeadline }

// Outcome is the result of Do.
type Outcome struct {
	Role  Role
	CID   cid.Cid // the blob's CID; cid.Undef when the compile failed
	From  peer.ID // who compiled: this peer, the DONE's sender for RoleWaited, empty for RoleFound
	Epoch uint64  // epoch of the lease the blob was compiled under; 0 for RoleFound
	// Yielded counts the compiles this peer started and cancelled during the flight because another holder's
	// lease beat its own (messages delayed past the claim window, rule 7).
	Yielded int
}

// Request is one flight.
type Request struct {
	Key  Key
	Rank int // 0..65535; lower serves more peers: a blob of rank r serves every peer of the class with rank >= r
	// Compile compiles the blob here and returns its CID. Do calls it at most once at a time, and again only
	// after it cancelled a compile to yield to another holder (rule 7); it must return soon after ctx is cancelled.
	Compile func(ctx context.Context) (cid.Cid, error)
	// Ready reports a compatible blob already known (a record in the p2p record set). Nil means never. Do calls
	// it at the start, on Notify and before it starts compiling; it must not block.
	Ready func() (cid.Cid, bool)
}

// Coordinator runs the fleet single flight for the local peer. Run must be running for Do to hear other peers.
type Coordinator struct {
	tr   Transport
	self peer.ID
	cfg  Config
	log  *slog.Logger
	tick time.Duration

	mu      sync.Mutex
	flights map[Key]*flight
	// finished holds the DONE of each key this peer compiled within the last finishedTTL, to answer a WANT for
	// it: a waiter that missed the DONE (gossip lost it, or it joined after) is served instead of compiling again.
	finished map[Key]*finishedKey
}

type finishedKey struct {
	done     []byte // the encoded DONE
	expires  time.Time
	answered time.Time
}

// maxFinished bounds Coordinator.finished.
const maxFinished = 256

// New returns a Coordinator that talks over tr.
func New(tr Transport, cfg Config) (*Coordinator, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tick := min(cfg.Window, cfg.LeaseTTL/3) / 4
	tick = max(tick, time.Millisecond)
	return &Coordinator{tr: tr, self: tr.Self(), cfg: cfg, log: cfg.Logger, tick: tick, flights: map[Key]*flight{},
		finished: map[Key]*finishedKey{}}, nil
}

// Run receives messages and hands them to the flights they concern, until ctx is done or the transport is
// closed. Messages that do not decode, or whose claimed sender is not their author, are dropped.
func (c *Coordinator) Run(ctx context.Context) error {
	for {
		data, author, err := c.tr.Next(ctx)
		switch {
		case ctx.Err() != nil || errors.Is(err, ErrClosed):
			return nil
		case err != nil:
			return fmt.Errorf("flight: receive: %w", err)
		}
		m, err := Decode(data)
		if err != nil {
			c.log.Debug("flight: drop message", "from", author, "err", err)
			continue
		}
		if m.Sender != author {
			c.log.Debug("flight: drop message with forged sender", "type", m.Type, "sender", m.Sender,
				"author", author)
			continue
		}
		c.mu.Lock()
		f := c.flights[m.Key]
		c.mu.Unlock()
		if f == nil {
			if m.Type == TypeWant {
				c.answerFinished(ctx, m.Key)
			}
			continue
		}
		select {
		case f.inbox <- m:
		case <-f.done:
		case <-ctx.Done():
			return nil
		}
	}
}

// remember keeps the DONE of a key this peer compiled, for answerFinished.
func (c *Coordinator) remember(k Key, done []byte) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, e := range c.finished {
		if !now.Before(e.expires) {
			delete(c.finished, key)
		}
	}
	if len(c.finished) < maxFinished {
		c.finished[k] = &finishedKey{done: done, expires: now.Add(c.finishedTTL())}
	}
}

// finishedTTL is how long a DONE is answered: a waiter that missed it speaks at most a lease TTL (its holder's
// last heartbeat expires) plus a backoff spread after it; twice the TTL leaves room for a late heartbeat.
func (c *Coordinator) finishedTTL() time.Duration { return 2*c.cfg.LeaseTTL + c.cfg.Spread }

// answerFinished publishes again the DONE of a key this peer compiled within finishedTTL, at most once per
// window (the asker elects no sooner than a window after its WANT): a WANT for it comes from a peer that missed
// the DONE.
func (c *Coordinator) answerFinished(ctx context.Context, k Key) {
	now := time.Now()
	c.mu.Lock()
	e := c.finished[k]
	if e == nil || !now.Before(e.expires) || now.Sub(e.answered) < c.cfg.Window {
		c.mu.Unlock()
		return
	}
	e.answered = now
	c.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, finalPublishTimeout)
	defer cancel()
	if err := c.tr.Publish(pctx, e.done); err != nil {
		c.log.Debug("flight: publish failed", "key", k.String(), "type", TypeDone, "err", err)
	}
}

// Notify tells every flight in progress that a new record arrived, so it calls Ready again.
func (c *Coordinator) Notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.flights {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// Do runs one flight for req and returns when a blob is known: found, compiled here or by another peer. It
// returns the compile's error if this peer compiled and failed, ErrRemoteFailed once Config.MaxFailures usable
// holders failed, ErrBusy if the key is already in flight in this process, or ctx's error.
func (c *Coordinator) Do(ctx context.Context, req Request) (Outcome, error) {
	if err := validateKey(req.Key); err != nil {
		return Outcome{}, fmt.Errorf("flight: %w: %w", ErrInvalidRequest, err)
	}
	if req.Rank < 0 || req.Rank > math.MaxUint16 {
		return Outcome{}, fmt.Errorf("flight: %w: rank %d outside [0, %d]", ErrInvalidRequest, req.Rank,
			math.MaxUint16)
	}
	if req.Compile == nil {
		return Outcome{}, fmt.Errorf("flight: %w: no compile function", ErrInvalidRequest)
	}
	if req.Ready == nil {
		req.Ready = func() (cid.Cid, bool) { return cid.Undef, false }
	}
	if c, ok := req.Ready(); ok {
		return Outcome{Role: RoleFound, CID: c}, nil
	}
	f := &flight{
		c: c, key: req.Key, rank: uint16(req.Rank), req: req,
		inbox: make(chan *Message, 64), wake: make(chan struct{}, 1), done: make(chan struct{}),
		wants: map[peer.ID]want{}, leases: map[peer.ID]lease{}, excluded: map[peer.ID]bool{},
		failed: map[peer.ID]uint64{}, failures: map[peer.ID]string{}, result: make(chan compileResult, 1),
	}
	c.mu.Lock()
	if c.flights[req.Key] != nil {
		c.mu.Unlock()
		return Outcome{}, fmt.Errorf("flight %s: %w", req.Key, ErrBusy)
	}
	c.flights[req.Key] = f
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.flights, req.Key)
		close(f.done)
		c.mu.Unlock()
	}()
	return f.run(ctx)
}
