package p2p

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/npu-agent/npu-agent/internal/atomicfile"
)

// Membership proof with a fleet authority (docs/design.md 6.2, "Member certificates"): after the security
// handshake, each side reads the other's certificate once; until a peer is proven nothing else reaches it.

const (
	ProofProtocol       protocol.ID = "/npu-agent/membership/1.0.0"
	RevocationsProtocol protocol.ID = "/npu-agent/revocations/1.0.0"
	RevocationsTopic                = "/npu-agent/revocations/1"
	// RevocationsFile in Config.DataDir keeps the newest revocation list adopted.
	RevocationsFile = "revocations.pem"
	// DefaultProofTimeout bounds a proof: the stream, the read and the verdict.
	DefaultProofTimeout = 10 * time.Second

	maxProofResponse = 8 + 2 + MaxCertSize
	proofPenalty     = time.Minute
	maxPenalised     = 4096
	maxEverProven    = 4096
	membershipCheck  = 10 * time.Second // revocation file poll and expiry sweep
	certRenewWarning = 14 * 24 * time.Hour
)

// ErrNotMember is returned when a stream to a peer is refused because the peer has not proven membership.
var ErrNotMember = errors.New("peer has not proven fleet membership")

// proofState is the verdict on one connected peer; done closes when it is known.
type proofState struct {
	done     chan struct{}
	ok       bool
	notAfter time.Time
}

// membership proves peers' certificates, keeps the revocation list and gates streams (gatedHost) and
// connections (gater.refuse).
type membership struct {
	refused   atomic.Int64 // peers rejected for a missing or invalid proof (npu_agent_peers_refused_total)
	authority ed25519.PublicKey
	cert      []byte // ours
	timeout   time.Duration
	opFile    string // Config.RevocationsFile, "" none
	stored    string // <DataDir>/RevocationsFile
	log       *slog.Logger
	onProven  func(peer.ID) // the node's "new member connected" work; set before connections are proven

	h host.Host // the raw host (not gated)
	// ownNotAfter is when our certificate expires; watch warns from certRenewWarning before, once a day.
	ownNotAfter time.Time
	warnedAt    time.Time
	ctx         context.Context
	cancel      context.CancelFunc
	wg          sync.WaitGroup

	mu         sync.Mutex
	peers      map[peer.ID]*proofState
	penalised  map[peer.ID]time.Time // refused by the gater until then
	everProven map[peer.ID]time.Time
	rl         *RevocationList
	topic      *pubsub.Topic

	fileMu  sync.Mutex
	opStat  os.FileInfo // of opFile when last read
	storeMu sync.Mutex  // serialises store
}

// newMembership checks the configuration and loads the revocation lists (the operator's file must be valid).
func newMembership(cfg Config, log *slog.Logger) (*membership, error) {
	if len(cfg.Authority) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("p2p: config: fleet authority key has %d bytes, want %d", len(cfg.Authority), ed25519.PublicKeySize)
	}
	if len(cfg.FleetKey) > 0 {
		return nil, errors.New("p2p: config: a fleet key and a fleet authority exclude each other: choose one")
	}
	if _, err := DecodeCert(cfg.MemberCert, cfg.Authority); err != nil {
		return nil, fmt.Errorf("p2p: config: own member certificate: %w", err)
	}
	m := &membership{
		authority: cfg.Authority, cert: cfg.MemberCert, timeout: cfg.ProofTimeout, opFile: cfg.RevocationsFile,
		stored: filepath.Join(cfg.DataDir, RevocationsFile), log: log, onProven: func(peer.ID) {},
		peers: map[peer.ID]*proofState{}, penalised: map[peer.ID]time.Time{}, everProven: map[peer.ID]time.Time{},
	}
	if m.timeout <= 0 {
		m.timeout = DefaultProofTimeout
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if b, err := ReadPEMFile(m.stored, false); err == nil {
		if l, err := DecodeRevocations(b, m.authority); err == nil {
			m.rl = l
		} else {
			log.Warn("stored revocation list ignored", "path", m.stored, "err", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("stored revocation list ignored", "path", m.stored, "err", err)
	}
	if m.opFile != "" {
		if err := m.readOpFile(); err != nil {
			return nil, fmt.Errorf("p2p: config: revocations file: %w", err)
		}
	}
	return m, nil
}

// start runs on the raw host h: the proof responder, the connection watch and the periodic checks.
func (m *membership) start(h host.Host) {
	m.h = h
	if c, err := DecodeCert(m.cert, m.authority); err == nil {
		m.ownNotAfter = c.NotAfter
		if c.Peer != h.ID() {
			m.log.Error("member certificate names another peer: no member will accept this host",
				"cert_peer", c.Peer, "peer", h.ID())
		} else if now := time.Now(); now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
			m.log.Error("member certificate is not valid now: no member will accept this host",
				"not_before", c.NotBefore, "not_after", c.NotAfter)
		}
	}
	if m.rl != nil {
		if m.rl.Revoked(h.ID()) {
			m.log.Error("this host is revoked: members will refuse it", "peer", h.ID(), "seq", m.rl.Seq)
		}
		m.store()
	}
	h.SetStreamHandler(ProofProtocol, m.serveProof)
	h.Network().Notify(&network.NotifyBundle{
		ConnectedF:    func(_ network.Network, c network.Conn) { m.connected(c.RemotePeer()) },
		DisconnectedF: func(_ network.Network, c network.Conn) { m.disconnected(c.RemotePeer()) },
	})
	for _, p := range h.Network().Peers() {
		m.connected(p)
	}
	m.wg.Go(m.watch)
}

func (m *membership) stop() {
	m.mu.Lock() // connected checks ctx and adds to wg under mu: no Add races the Wait
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
}

// setOnProven sets the work done for each newly proven peer and does it for the peers proven already.
func (m *membership) setOnProven(fn func(peer.ID)) {
	m.mu.Lock()
	m.onProven = fn
	var proven []peer.ID
	for p, st := range m.peers {
		select {
		case <-st.done:
			if st.ok {
				proven = append(proven, p)
			}
		default:
		}
	}
	m.mu.Unlock()
	for _, p := range proven {
		fn(p)
	}
}

// refuse is the gater's check: a revoked peer, or one whose proof failed recently.
func (m *membership) refuse(p peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rl.Revoked(p) {
		return true
	}
	t, ok := m.penalised[p]
	if ok && time.Now().After(t) {
		delete(m.penalised, p)
		return false
	}
	return ok
}

// serveProof answers anyone (a certificate is public): the seq of the list held, the certificate's length, it.
func (m *membership) serveProof(s network.Stream) {
	defer s.Close()
	s.SetWriteDeadline(time.Now().Add(m.timeout))
	m.mu.Lock()
	var seq uint64
	if m.rl != nil {
		seq = m.rl.Seq
	}
	m.mu.Unlock()
	b := binary.LittleEndian.AppendUint64(nil, seq)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m.cert)))
	if _, err := s.Write(append(b, m.cert...)); err != nil {
		s.Reset()
	}
}

// connected starts proving p unless a proof of p is running or done.
func (m *membership) connected(p peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.peers[p]; ok || m.ctx.Err() != nil {
		return
	}
	st := &proofState{done: make(chan struct{})}
	m.peers[p] = st
	m.wg.Go(func() { m.prove(p, st) })
}

// disconnected forgets the verdict on p once its last connection is gone: a reconnect proves again.
func (m *membership) disconnected(p peer.ID) {
	if m.h.Network().Connectedness(p) == network.Connected {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if st, ok := m.peers[p]; ok {
		select {
		case <-st.done:
			delete(m.peers, p)
		default: // the running proof decides, then forgets
		}
	}
}

// prove reads p's certificate once, within the timeout, and records the verdict.
func (m *membership) prove(p peer.ID, st *proofState) {
	ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
	defer cancel()
	c, seq, err := m.readProof(ctx, p)
	m.mu.Lock()
	if err == nil {
		c, err = VerifyCert(c.Raw, m.authority, p, time.Now(), m.rl)
	}
	st.ok, st.notAfter = err == nil, c.NotAfter.Add(certSkew)
	held := uint64(0)
	if m.rl != nil {
		held = m.rl.Seq
	}
	if st.ok {
		m.rememberProven(p)
	}
	close(st.done)
	gone := m.h.Network().Connectedness(p) != network.Connected
	if gone {
		delete(m.peers, p)
	}
	onProven := m.onProven
	m.mu.Unlock()
	if !st.ok {
		if m.ctx.Err() == nil && !gone { // a connection lost while proving is no offence
			m.reject(p, err)
		}
		return
	}
	m.log.Debug("peer proved membership", "peer", p, "not_after", c.NotAfter)
	onProven(p)
	if seq > held {
		m.wg.Go(func() { m.pullRevocations(p) })
	}
}

func (m *membership) readProof(ctx context.Context, p peer.ID) (MemberCert, uint64, error) {
	s, err := m.h.NewStream(ctx, p, ProofProtocol)
	if err != nil {
		return MemberCert{}, 0, fmt.Errorf("no proof: %w", err)
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		s.SetDeadline(d)
	}
	s.CloseWrite()
	b, err := io.ReadAll(io.LimitReader(s, maxProofResponse+1))
	if err != nil {
		s.Reset()
		return MemberCert{}, 0, fmt.Errorf("proof: %w", err)
	}
	if len(b) < 10 || len(b) > maxProofResponse || int(binary.LittleEndian.Uint16(b[8:10])) != len(b)-10 {
		s.Reset()
		return MemberCert{}, 0, fmt.Errorf("%w: proof of %d bytes", ErrBadCert, len(b))
	}
	return MemberCert{Raw: b[10:]}, binary.LittleEndian.Uint64(b), nil
}

// reject closes every connection to p and has the gater refuse it for proofPenalty.
func (m *membership) reject(p peer.ID, why error) {
	m.log.Warn("peer refused: no valid membership proof", "peer", p, "err", why)
	m.refused.Add(1)
	m.mu.Lock()
	stamp(m.penalised, p, time.Now().Add(proofPenalty), maxPenalised)
	m.mu.Unlock()
	m.h.Network().ClosePeer(p)
}

func (m *membership) rememberProven(p peer.ID) { stamp(m.everProven, p, time.Now(), maxEverProven) }

// stamp sets set[p] = t; a new p in a set of limit entries first evicts the entry with the earliest time.
func stamp(set map[peer.ID]time.Time, p peer.ID, t time.Time, limit int) {
	if _, ok := set[p]; !ok && len(set) >= limit {
		var oldest peer.ID
		for q, tq := range set {
			if oldest == "" || tq.Before(set[oldest]) {
				oldest = q
			}
		}
		delete(set, oldest)
	}
	set[p] = t
}

// wait blocks until p's verdict is known (dialling p first if not connected) and reports whether p is a proven,
// unexpired, unrevoked member.
func (m *membership) wait(ctx context.Context, p peer.ID) bool {
	m.mu.Lock()
	st := m.peers[p]
	m.mu.Unlock()
	if st == nil {
		if m.h.Network().Connectedness(p) != network.Connected {
			if err := m.h.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
				return false
			}
		}
		m.connected(p) // normally done by the connection notification already
		m.mu.Lock()
		st = m.peers[p]
		m.mu.Unlock()
		if st == nil {
			return false
		}
	}
	t := time.NewTimer(m.timeout + time.Second)
	defer t.Stop()
	select {
	case <-st.done:
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	}
	return m.valid(p, st)
}

func (m *membership) valid(p peer.ID, st *proofState) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return st.ok && time.Now().Before(st.notAfter) && !m.rl.Revoked(p)
}

// proven reports, without waiting, whether p is a proven member now (gossipsub's peer filter).
func (m *membership) proven(p peer.ID) bool {
	m.mu.Lock()
	st := m.peers[p]
	m.mu.Unlock()
	if st == nil {
		return false
	}
	select {
	case <-st.done:
		return m.valid(p, st)
	default:
		return false
	}
}

// member reports whether p is proven now, or was proven since start and is not revoked since (Node.Member).
func (m *membership) member(p peer.ID) bool {
	if m.proven(p) {
		return true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.everProven[p]
	return ok && !m.rl.Revoked(p)
}

// guard wraps a stream handler: the stream is served only once its peer is proven.
func (m *membership) guard(h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		ctx, cancel := context.WithTimeout(m.ctx, m.timeout+time.Second)
		ok := m.wait(ctx, s.Conn().RemotePeer())
		cancel()
		if !ok {
			s.Reset()
			return
		}
		h(s)
	}
}

// adopt makes l the list held if its seq is higher: it is stored, every revoked peer is disconnected and the list
// is gossiped. It reports whether l was adopted.
func (m *membership) adopt(l *RevocationList, from string) bool {
	m.mu.Lock()
	if m.rl != nil && l.Seq <= m.rl.Seq {
		m.mu.Unlock()
		return false
	}
	m.rl = l
	topic := m.topic
	m.mu.Unlock()
	m.log.Info("revocation list adopted", "seq", l.Seq, "revoked", len(l.Peers), "from", from)
	if m.h == nil {
		return true // adopted at start: start stores it once the data directory exists
	}
	if l.Revoked(m.h.ID()) {
		m.log.Error("this host is revoked: members will refuse it", "peer", m.h.ID(), "seq", l.Seq)
	}
	m.store()
	for _, p := range m.h.Network().Peers() {
		if l.Revoked(p) {
			m.log.Warn("revoked member disconnected", "peer", p, "seq", l.Seq)
			m.h.Network().ClosePeer(p)
		}
	}
	if topic != nil {
		if err := topic.Publish(m.ctx, l.Raw); err != nil && m.ctx.Err() == nil {
			m.log.Debug("revocation list not gossiped", "err", err)
		}
	}
	return true
}

// store writes the list held to the data directory; writes are serialised so a slower one never leaves an older
// list behind.
func (m *membership) store() {
	m.storeMu.Lock()
	defer m.storeMu.Unlock()
	m.mu.Lock()
	l := m.rl
	m.mu.Unlock()
	if err := atomicfile.WriteFile(m.stored, EncodePEM(l.Raw, false), 0o644); err != nil {
		m.log.Warn("revocation list not stored", "path", m.stored, "err", err)
	}
}

// readOpFile adopts the operator's revocation file if it changed since last read; a missing file revokes nobody.
func (m *membership) readOpFile() error {
	m.fileMu.Lock()
	defer m.fileMu.Unlock()
	fi, err := os.Stat(m.opFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil // nobody revoked yet
	}
	if err != nil {
		return err
	}
	if m.opStat != nil && fi.ModTime().Equal(m.opStat.ModTime()) && fi.Size() == m.opStat.Size() {
		return nil
	}
	m.opStat = fi
	b, err := ReadPEMFile(m.opFile, false)
	if err != nil {
		return err
	}
	l, err := DecodeRevocations(b, m.authority)
	if err != nil {
		return fmt.Errorf("%s: %w", m.opFile, err)
	}
	m.adopt(l, m.opFile)
	return nil
}

// watch polls the operator's revocation file and closes connections of members whose certificate expired.
func (m *membership) watch() {
	t := time.NewTicker(membershipCheck)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		if m.opFile != "" {
			if err := m.readOpFile(); err != nil {
				m.log.Warn("revocations file not read", "path", m.opFile, "err", err)
			}
		}
		now := time.Now()
		if left := m.ownNotAfter.Sub(now); left < certRenewWarning && now.Sub(m.warnedAt) > 24*time.Hour {
			m.warnedAt = now
			m.log.Warn("this host's member certificate expires soon: issue a new one (fleet-key issue)",
				"not_after", m.ownNotAfter, "left", left.Round(time.Minute))
		}
		var expired []peer.ID
		m.mu.Lock()
		for p, st := range m.peers {
			select {
			case <-st.done:
				if st.ok && !now.Before(st.notAfter) {
					st.ok = false
					expired = append(expired, p)
				}
			default:
			}
		}
		m.mu.Unlock()
		for _, p := range expired {
			m.log.Warn("member certificate expired: disconnected", "peer", p)
			m.h.Network().ClosePeer(p)
		}
	}
}

// startGossip joins the revocation topic on ps (the gated host's pubsub) and serves the list held to members.
func (m *membership) startGossip(ps *pubsub.PubSub, gated host.Host) error {
	err := ps.RegisterTopicValidator(RevocationsTopic, func(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
		l, err := DecodeRevocations(msg.Data, m.authority)
		if err != nil {
			m.log.Warn("rejected gossiped revocation list", "from", from, "err", err)
			return pubsub.ValidationReject
		}
		if from == m.h.ID() {
			return pubsub.ValidationAccept // adopt publishes what it just adopted
		}
		if !m.adopt(l, from.String()) {
			return pubsub.ValidationIgnore // old or already held: not forwarded again
		}
		return pubsub.ValidationAccept
	})
	if err != nil {
		return fmt.Errorf("p2p: revocation validator: %w", err)
	}
	topic, err := ps.Join(RevocationsTopic)
	if err != nil {
		return fmt.Errorf("p2p: join %s: %w", RevocationsTopic, err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		return fmt.Errorf("p2p: subscribe %s: %w", RevocationsTopic, err)
	}
	m.mu.Lock()
	m.topic = topic
	m.mu.Unlock()
	m.wg.Go(func() {
		for { // the validator did the work; drain
			if _, err := sub.Next(m.ctx); err != nil {
				return
			}
		}
	})
	gated.SetStreamHandler(RevocationsProtocol, func(s network.Stream) {
		defer s.Close()
		s.SetWriteDeadline(time.Now().Add(syncTimeout))
		m.mu.Lock()
		l := m.rl
		m.mu.Unlock()
		if l != nil {
			s.Write(l.Raw)
		}
	})
	return nil
}

// pullRevocations asks proven member p for the list it holds (it announced a higher seq in its proof).
func (m *membership) pullRevocations(p peer.ID) {
	ctx, cancel := context.WithTimeout(m.ctx, syncTimeout)
	defer cancel()
	s, err := m.h.NewStream(ctx, p, RevocationsProtocol)
	if err != nil {
		m.log.Debug("revocation pull: no stream", "peer", p, "err", err)
		return
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(syncTimeout))
	s.CloseWrite()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(s, MaxRevocationListSize+1)); err != nil {
		s.Reset()
		return
	}
	l, err := DecodeRevocations(buf.Bytes(), m.authority)
	if err != nil {
		m.log.Warn("revocation list from member rejected", "peer", p, "err", err)
		return
	}
	m.adopt(l, p.String())
}

// gatedHost is the host the node and the components on it see: every handler and every stream it opens wait for
// the remote peer's membership proof.
type gatedHost struct {
	host.Host
	m *membership
}

func (g gatedHost) SetStreamHandler(pid protocol.ID, h network.StreamHandler) {
	g.Host.SetStreamHandler(pid, g.m.guard(h))
}

func (g gatedHost) SetStreamHandlerMatch(pid protocol.ID, match func(protocol.ID) bool, h network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, match, g.m.guard(h))
}

func (g gatedHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	if !g.m.wait(ctx, p) {
		return nil, fmt.Errorf("stream to %s: %w", p, ErrNotMember)
	}
	return g.Host.NewStream(ctx, p, pids...)
}
