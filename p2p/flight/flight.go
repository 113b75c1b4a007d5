package flight

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// maxPeers bounds the peers one flight tracks; WANTs from further peers are ignored.
const maxPeers = 4096

// finalPublishTimeout bounds the last message of a flight, sent after the caller's ctx may be done.
const finalPublishTimeout = 2 * time.Second

type want struct {
	rank    uint16
	expires time.Time
}

type lease struct {
	rank    uint16
	epoch   uint64
	held    bool
	expires time.Time
}

type compileResult struct {
	cid cid.Cid
	err error
}

// flight is the local view of one key. Only the goroutine of Do touches its state; Run only feeds inbox.
type flight struct {
	c     *Coordinator
	key   Key
	rank  uint16
	req   Request
	inbox chan *Message
	wake  chan struct{}
	done  chan struct{}

	start      time.Time
	wants      map[peer.ID]want  // live WANTs of other peers
	leases     map[peer.ID]lease // live claims and leases of other peers
	excluded   map[peer.ID]bool  // never elected again in this flight: expired, failed or silent when elected
	failed     map[peer.ID]uint64
	failures   map[peer.ID]string // reasons of failed DONEs from usable holders
	maxEpoch   uint64
	lostHolder bool // a usable claim or lease of another peer ended without a blob: compiling is a takeover

	elected   peer.ID
	electedAt time.Time

	// Suppression (rule 2): a round starts at the flight's start and again whenever the usable claim or lease
	// it waited on ends. In a round the peer publishes its WANT only at fireAt, and only if no better candidate's
	// WANT and no usable lease is live by then; wantSent is when it did (zero: silent this round).
	roundStart time.Time
	fireAt     time.Time
	wantSent   time.Time
	onLease    bool // a usable claim or lease was live at the last step
	spoke      bool // published a WANT or LEASE that others may track: leave withdraws it

	claiming bool
	claimEnd time.Time
	epoch    uint64 // our claim or lease

	compiling     bool
	yielded       int // compiles cancelled because another holder's lease beats ours (rule 7)
	role          Role
	cancelCompile context.CancelFunc
	result        chan compileResult

	nextSend    time.Time // next WANT refresh, or next heartbeat while claiming or compiling
	lastSent    time.Time
	announceDue bool // a new peer appeared: announce ourselves at once, at most once per tick

	holder holderState // the peer this flight waits for, read by Coordinator.Holder (holder.go)
}

type exit struct {
	out Outcome
	err error
}

func (f *flight) run(ctx context.Context) (Outcome, error) {
	f.start = time.Now()
	f.newRound(f.start)
	f.log("flight start", "rank", f.rank, "backoff", f.fireAt.Sub(f.start))
	tick := time.NewTicker(f.c.tick)
	defer tick.Stop()
	for {
		x := f.drain(ctx)
		if x == nil {
			x = f.step(ctx, time.Now())
		}
		if x != nil {
			return x.out, x.err
		}
		f.noteHolder()
		select {
		case <-ctx.Done():
			x = f.abort(ctx)
		case m := <-f.inbox:
			x = f.handle(ctx, m, time.Now())
		case <-f.wake:
			if !f.compiling {
				x = f.checkReady(ctx)
			}
		case r := <-f.result:
			x = f.finishCompile(ctx, r)
		case <-tick.C:
		}
		if x != nil {
			return x.out, x.err
		}
	}
}

// drain applies the messages already queued (at most the queue's capacity), so that step, which may speak,
// acts on the freshest view: a peer that ran late must not publish a WANT that a queued better WANT suppresses.
func (f *flight) drain(ctx context.Context) *exit {
	for range cap(f.inbox) {
		select {
		case m := <-f.inbox:
			if x := f.handle(ctx, m, time.Now()); x != nil {
				return x
			}
		default:
			return nil
		}
	}
	return nil
}

// step advances the state machine on the passage of time.
func (f *flight) step(ctx context.Context, now time.Time) *exit {
	ttl := f.c.cfg.LeaseTTL
	if f.announceNow(now) {
		f.announce(ctx, now)
	}
	if f.compiling {
		return nil
	}
	if now.Sub(f.start) >= f.c.cfg.Deadline {
		f.log("deadline passed, compiling here")
		f.startCompile(ctx, RoleDeadline, now)
		return nil
	}
	f.expire(now)
	if f.claiming {
		if now.Before(f.claimEnd) {
			return nil
		}
		if x := f.checkReady(ctx); x != nil {
			return x
		}
		role := RoleCompiled
		if f.lostHolder {
			role = RoleTookOver
		}
		f.startCompile(ctx, role, now)
		return nil
	}
	if f.usableLease() {
		f.onLease, f.elected = true, ""
		return nil
	}
	if f.onLease {
		// The claim or lease this peer waited on ended: a new round, so the waiters of a lost holder do not all
		// speak at once (rule 8).
		f.onLease = false
		f.newRound(now)
	}
	if f.wantSent.IsZero() && !now.Before(f.fireAt) && !f.betterWant() {
		f.wantSent = now
		f.log("want")
		f.announce(ctx, now)
		return nil
	}
	if now.Sub(f.roundStart) < f.c.cfg.Spread+f.c.cfg.Window {
		return nil
	}
	best := f.best()
	switch {
	case best == f.c.self && f.wantSent.IsZero():
		// Every better candidate this peer heard is gone, and nobody heard this peer: speak in a new round
		// rather than claim unannounced.
		f.newRound(now)
	case best == f.c.self && now.Sub(f.wantSent) < f.c.cfg.Window:
	case best == f.c.self:
		f.epoch = f.maxEpoch + 1
		f.maxEpoch = f.epoch
		f.claiming = true
		f.claimEnd = now.Add(f.c.cfg.Window)
		f.elected = ""
		f.log("claim", "epoch", f.epoch)
		f.announce(ctx, now)
	case best != f.elected:
		f.elected, f.electedAt = best, now
		f.log("elected", "peer", best)
	case now.Sub(f.electedAt) >= ttl:
		f.log("elected peer did not claim, passing over it", "peer", best)
		f.excluded[best] = true
		f.elected = ""
	}
	return nil
}

// newRound starts a suppression round at now: this peer stays silent until its backoff passed.
func (f *flight) newRound(now time.Time) {
	f.roundStart, f.wantSent, f.elected = now, time.Time{}, ""
	f.fireAt = now.Add(backoff(f.key, f.c.self, f.c.cfg.Spread))
}

// announceNow reports whether this peer publishes its state now: a claimant or holder heartbeats every T/3 and
// answers a new peer within a tick; a waiter refreshes its WANT only while it is the best candidate it knows of
// and no usable lease is live (everyone else stays silent).
func (f *flight) announceNow(now time.Time) bool {
	due := !now.Before(f.nextSend) || (f.announceDue && now.Sub(f.lastSent) >= f.c.tick)
	if !due || f.claiming || f.compiling {
		return due
	}
	if f.wantSent.IsZero() || f.usableLease() || f.best() != f.c.self {
		f.announceDue = false
		return false
	}
	return true
}

// handle applies one message from another peer.
func (f *flight) handle(ctx context.Context, m *Message, now time.Time) *exit {
	p := m.Sender
	switch m.Type {
	case TypeWant:
		w, known := f.wants[p]
		fresh := !known || !now.Before(w.expires)
		if !known && len(f.wants) >= maxPeers {
			return nil
		}
		f.wants[p] = want{rank: m.Rank, expires: now.Add(m.TTL)}
		// A peer we did not know: a holder, or a better candidate, tells it about itself soon rather than at its
		// next refresh (announceNow decides who).
		f.announceDue = f.announceDue || fresh
	case TypeLease:
		if e, ok := f.failed[p]; ok && m.Epoch <= e {
			return nil
		}
		_, known := f.leases[p]
		if !known && len(f.leases) >= maxPeers {
			return nil
		}
		// A new claimant that may not have heard our claim or lease: tell it soon, so it yields within its window.
		f.announceDue = f.announceDue || (!known && (f.claiming || f.compiling))
		f.leases[p] = lease{rank: m.Rank, epoch: m.Epoch, held: m.Held, expires: now.Add(m.TTL)}
		f.maxEpoch = max(f.maxEpoch, m.Epoch)
		if f.compiling && f.role != RoleDeadline && m.Held && m.Rank <= f.rank &&
			heldBeats(f.key, p, m.Rank, m.Epoch, f.c.self, f.rank, f.epoch) {
			// Two holders: messages were delayed past the claim window (or a partition healed). The later
			// claimant yields, so of any set of concurrent holders exactly one keeps compiling.
			f.log("yield compile", "to", p, "epoch", m.Epoch)
			f.cancelCompile()
			if r := <-f.result; r.err == nil {
				return f.finishCompile(ctx, r) // it finished before it saw the cancel: its blob is as good
			}
			f.compiling, f.yielded = false, f.yielded+1
			f.publish(ctx, &Message{Type: TypeRelease, Epoch: f.epoch})
			return nil
		}
		if f.claiming && m.Rank <= f.rank &&
			(m.Held || claimBeats(f.key, p, m.Rank, m.Epoch, f.c.self, f.rank, f.epoch)) {
			f.log("yield claim", "to", p, "epoch", m.Epoch, "held", m.Held)
			f.claiming = false
			f.publish(ctx, &Message{Type: TypeRelease, Epoch: f.epoch})
		}
	case TypeDone:
		// A failure counts only from a current holder: the sender's live held lease of that epoch. A failed
		// DONE from anyone else (a throwaway identity that never held the key, or a holder of another epoch)
		// changes nothing. A DONE with a CID is taken from anyone: it only names a blob, which is verified
		// against its CID and a signed record before use, and a late joiner may have missed the holder's lease.
		if l, ok := f.leases[p]; !m.CID.Defined() && (!ok || !l.held || l.epoch != m.Epoch) {
			f.log("ignore failure from a non-holder", "peer", p, "epoch", m.Epoch)
			return nil
		}
		f.maxEpoch = max(f.maxEpoch, m.Epoch)
		delete(f.leases, p)
		delete(f.wants, p)
		usable := m.Rank <= f.rank
		if m.CID.Defined() {
			if usable && !f.compiling {
				f.log("served", "by", p, "cid", m.CID, "epoch", m.Epoch)
				return f.leave(ctx, Outcome{Role: RoleWaited, CID: m.CID, From: p, Epoch: m.Epoch}, nil)
			}
			return nil
		}
		f.log("holder failed", "peer", p, "epoch", m.Epoch, "reason", m.Reason)
		f.failed[p] = max(f.failed[p], m.Epoch)
		f.excluded[p] = true
		if !usable {
			return nil
		}
		f.lostHolder = true
		f.failures[p] = m.Reason
		if len(f.failures) >= f.c.cfg.MaxFailures && !f.compiling {
			return f.leave(ctx, Outcome{}, fmt.Errorf("flight %s: %w: %s", f.key, ErrRemoteFailed, f.failureText()))
		}
	case TypeRelease:
		if l, ok := f.leases[p]; ok && l.epoch == m.Epoch {
			delete(f.leases, p)
		}
	case TypeWithdraw:
		if l, ok := f.leases[p]; ok && l.rank <= f.rank {
			f.lostHolder = true
		}
		delete(f.wants, p)
		delete(f.leases, p)
	}
	return nil
}

// expire forgets WANTs and leases whose TTL passed; a holder whose lease expired is never elected again here.
func (f *flight) expire(now time.Time) {
	for p, w := range f.wants {
		if !now.Before(w.expires) {
			delete(f.wants, p)
		}
	}
	for p, l := range f.leases {
		if !now.Before(l.expires) {
			f.log("lease expired", "holder", p, "epoch", l.epoch)
			delete(f.leases, p)
			f.excluded[p] = true
			f.lostHolder = f.lostHolder || l.rank <= f.rank
		}
	}
}

// usableLease reports whether a live claim or lease exists whose blob would serve this peer.
func (f *flight) usableLease() bool {
	for _, l := range f.leases {
		if l.rank <= f.rank {
			return true
		}
	}
	return false
}

// best returns the preferred compiler among this peer and the live, not excluded wanters whose blob serves it.
func (f *flight) best() peer.ID {
	best, bestRank := f.c.self, f.rank
	for p, w := range f.wants {
		if f.excluded[p] || w.rank > f.rank {
			continue
		}
		if before(f.key, p, w.rank, best, bestRank) {
			best, bestRank = p, w.rank
		}
	}
	return best
}

// betterWant reports whether a live, not excluded WANT of a candidate preferred to this peer is known: this peer
// then stays silent (rule 2).
func (f *flight) betterWant() bool {
	for p, w := range f.wants {
		if !f.excluded[p] && before(f.key, p, w.rank, f.c.self, f.rank) {
			return true
		}
	}
	return false
}

func (f *flight) checkReady(ctx context.Context) *exit {
	c, ok := f.req.Ready()
	if !ok {
		return nil
	}
	f.log("compatible blob found", "cid", c)
	return f.leave(ctx, Outcome{Role: RoleFound, CID: c}, nil)
}

func (f *flight) startCompile(ctx context.Context, role Role, now time.Time) {
	if !f.claiming {
		f.epoch = f.maxEpoch + 1
		f.maxEpoch = f.epoch
	}
	f.claiming = false
	f.compiling = true
	f.role = role
	f.log("compile", "role", role, "epoch", f.epoch)
	cctx, cancel := context.WithCancel(ctx)
	f.cancelCompile = cancel
	go func() {
		c, err := f.req.Compile(cctx)
		f.result <- compileResult{cid: c, err: err}
	}()
	f.announce(ctx, now)
}

// announce publishes this peer's state: its lease while claiming or compiling, else its WANT.
func (f *flight) announce(ctx context.Context, now time.Time) {
	ttl := f.c.cfg.LeaseTTL
	m := &Message{Type: TypeWant, Rank: f.rank, TTL: ttl}
	if f.claiming || f.compiling {
		m = &Message{Type: TypeLease, Rank: f.rank, Epoch: f.epoch, TTL: ttl, Held: f.compiling}
	}
	f.publish(ctx, m)
	f.lastSent, f.nextSend, f.announceDue = now, now.Add(ttl/3), false
}

func (f *flight) finishCompile(ctx context.Context, r compileResult) *exit {
	f.compiling = false
	f.cancelCompile()
	if r.err != nil && ctx.Err() != nil {
		return f.leave(ctx, Outcome{}, fmt.Errorf("flight %s: %w", f.key, ctx.Err()))
	}
	if r.err == nil {
		if err := checkCID(r.cid); err != nil {
			r.err = fmt.Errorf("compile returned an invalid CID: %w", err)
		}
	}
	out := Outcome{Role: f.role, From: f.c.self, Epoch: f.epoch, Yielded: f.yielded}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalPublishTimeout)
	defer cancel()
	done := &Message{Type: TypeDone, Rank: f.rank, Epoch: f.epoch}
	if r.err != nil {
		done.Reason = reason(r.err)
		f.log("compile failed", "err", r.err)
		f.publish(pctx, done)
		return &exit{out: out, err: fmt.Errorf("flight %s: compile: %w", f.key, r.err)}
	}
	done.CID = r.cid
	out.CID = r.cid
	f.log("compiled", "cid", r.cid)
	if data := f.publish(pctx, done); data != nil {
		f.c.remember(f.key, data)
	}
	return &exit{out: out}
}

// abort ends the flight on ctx cancellation: a running compile is cancelled and awaited.
func (f *flight) abort(ctx context.Context) *exit {
	if f.compiling {
		f.cancelCompile()
		<-f.result
		f.compiling = false
	}
	f.log("cancelled")
	return f.leave(ctx, Outcome{}, fmt.Errorf("flight %s: %w", f.key, ctx.Err()))
}

// leave withdraws this peer's WANT and any claim, so no one elects or waits on it, and ends the flight. A peer
// that never spoke leaves silently: nobody tracks it.
func (f *flight) leave(ctx context.Context, out Outcome, err error) *exit {
	if f.spoke {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalPublishTimeout)
		defer cancel()
		f.publish(pctx, &Message{Type: TypeWithdraw})
	}
	out.Yielded = f.yielded
	return &exit{out: out, err: err}
}

func (f *flight) failureText() string {
	var b strings.Builder
	for i, p := range slices.Sorted(maps.Keys(f.failures)) {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %s", p, f.failures[p])
	}
	return b.String()
}

// publish sends m from this peer, best effort: a lost message is covered by refreshes and TTLs. It returns the
// encoded message, nil if it could not be encoded.
func (f *flight) publish(ctx context.Context, m *Message) []byte {
	m.Sender = f.c.self
	m.Key = f.key
	f.spoke = f.spoke || m.Type == TypeWant || m.Type == TypeLease
	data, err := m.Encode()
	if err == nil {
		err = f.c.tr.Publish(ctx, data)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		f.c.log.Debug("flight: publish failed", "key", f.key.String(), "type", m.Type, "err", err)
	}
	return data
}

func (f *flight) log(msg string, args ...any) {
	f.c.log.Debug("flight: "+msg, append([]any{"key", f.key.String(), "self", f.c.self}, args...)...)
}
