package p2p

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Member certificates and revocation lists of a fleet authority (docs/design.md 6.2, "Member certificates").

const (
	certMagic    = "NPMC"
	revokeMagic  = "NPRL"
	certDomain   = "npu-agent/member-cert/1\x00"
	revokeDomain = "npu-agent/revocations/1\x00"
	// MaxCertSize and MaxRevocationListSize bound the binary forms, checked before anything is decoded.
	MaxCertSize           = 512
	MaxRevocationListSize = 192 << 10
	// MaxRevoked bounds the peers one list names.
	MaxRevoked = 4096
	// certSkew is the clock difference between the authority and a member tolerated at either end of a
	// certificate's validity.
	certSkew = 5 * time.Minute

	certPEMType   = "NPU-AGENT MEMBER CERTIFICATE"
	revokePEMType = "NPU-AGENT REVOCATION LIST"
)

// Certificate errors.
var (
	ErrBadCert        = errors.New("invalid member certificate")
	ErrCertAuthority  = errors.New("member certificate of another authority")
	ErrCertPeer       = errors.New("member certificate of another peer")
	ErrCertExpired    = errors.New("member certificate expired or not yet valid")
	ErrCertRevoked    = errors.New("member revoked")
	ErrBadRevocations = errors.New("invalid revocation list")
)

// authorityID names an authority key in certificates and lists: the first 8 bytes of sha256 of the key (the
// operator key ID of 8.2, in binary).
func authorityID(pub ed25519.PublicKey) [8]byte {
	sum := sha256.Sum256(pub)
	return [8]byte(sum[:8])
}

// MemberCert is a decoded member certificate: the authority vouches that Peer is a member from NotBefore until
// NotAfter.
type MemberCert struct {
	Authority [8]byte
	Peer      peer.ID
	NotBefore time.Time // whole seconds
	NotAfter  time.Time
	Raw       []byte // the encoding, signature included
}

// IssueCert signs a certificate for p valid over [notBefore, notAfter) with the authority key.
func IssueCert(authority ed25519.PrivateKey, p peer.ID, notBefore, notAfter time.Time) ([]byte, error) {
	if len(authority) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: authority key has %d bytes", ErrBadCert, len(authority))
	}
	id := []byte(p)
	if len(id) == 0 || len(id) > 64 || p.Validate() != nil {
		return nil, fmt.Errorf("%w: peer ID %q", ErrBadCert, p)
	}
	nb, na := notBefore.Unix(), notAfter.Unix()
	if nb < 0 || na <= nb {
		return nil, fmt.Errorf("%w: validity %v .. %v", ErrBadCert, notBefore, notAfter)
	}
	aid := authorityID(authority.Public().(ed25519.PublicKey))
	b := append([]byte(certMagic), 1)
	b = append(b, aid[:]...)
	b = append(b, byte(len(id)))
	b = append(b, id...)
	b = binary.LittleEndian.AppendUint64(b, uint64(nb))
	b = binary.LittleEndian.AppendUint64(b, uint64(na))
	return append(b, ed25519.Sign(authority, append([]byte(certDomain), b...))...), nil
}

// DecodeCert parses a certificate and checks its signature against authority; the validity window and the
// peer are VerifyCert's.
func DecodeCert(b []byte, authority ed25519.PublicKey) (MemberCert, error) {
	var c MemberCert
	if len(b) > MaxCertSize {
		return c, fmt.Errorf("%w: %d bytes, at most %d", ErrBadCert, len(b), MaxCertSize)
	}
	r := recordReader{b: b}
	if string(r.take(4)) != certMagic || r.u8() != 1 {
		return c, fmt.Errorf("%w: not a version 1 certificate", ErrBadCert)
	}
	copy(c.Authority[:], r.take(8))
	id := r.take(r.u8())
	nb, na := r.u64(), r.u64()
	body := len(b) - len(r.b)
	sig := r.take(ed25519.SignatureSize)
	if r.err != nil || len(r.b) != 0 {
		return c, fmt.Errorf("%w: truncated or trailing bytes", ErrBadCert)
	}
	var err error
	if c.Peer, err = peer.IDFromBytes(id); err != nil || len(id) > 64 {
		return c, fmt.Errorf("%w: peer ID: %v", ErrBadCert, err)
	}
	if nb >= na || na > 1<<40 {
		return c, fmt.Errorf("%w: validity %d .. %d", ErrBadCert, nb, na)
	}
	c.NotBefore, c.NotAfter = time.Unix(int64(nb), 0), time.Unix(int64(na), 0)
	if c.Authority != authorityID(authority) {
		return c, fmt.Errorf("%w (key %x)", ErrCertAuthority, c.Authority)
	}
	if !ed25519.Verify(authority, append([]byte(certDomain), b[:body]...), sig) {
		return c, fmt.Errorf("%w: bad signature", ErrBadCert)
	}
	c.Raw = b
	return c, nil
}

// VerifyCert decodes b and checks that it names p, is valid at now (with certSkew either side) and that p is not
// revoked by rl (nil: no list).
func VerifyCert(b []byte, authority ed25519.PublicKey, p peer.ID, now time.Time, rl *RevocationList) (MemberCert, error) {
	c, err := DecodeCert(b, authority)
	if err != nil {
		return c, err
	}
	if c.Peer != p {
		return c, fmt.Errorf("%w: names %s", ErrCertPeer, c.Peer)
	}
	if now.Before(c.NotBefore.Add(-certSkew)) || !now.Before(c.NotAfter.Add(certSkew)) {
		return c, fmt.Errorf("%w: valid %s .. %s", ErrCertExpired, c.NotBefore.UTC().Format(time.RFC3339),
			c.NotAfter.UTC().Format(time.RFC3339))
	}
	if rl.Revoked(p) {
		return c, fmt.Errorf("%w by list %d", ErrCertRevoked, rl.Seq)
	}
	return c, nil
}

// RevocationList is a decoded, verified revocation list.
type RevocationList struct {
	Seq    uint64
	Issued time.Time
	Peers  []peer.ID // sorted by their bytes
	Raw    []byte
}

// Revoked reports whether l names p; a nil list revokes nobody.
func (l *RevocationList) Revoked(p peer.ID) bool {
	if l == nil {
		return false
	}
	_, ok := slices.BinarySearch(l.Peers, p)
	return ok
}

// IssueRevocations signs a list with sequence number seq naming peers (sorted and deduplicated here).
func IssueRevocations(authority ed25519.PrivateKey, seq uint64, issued time.Time, peers []peer.ID) ([]byte, error) {
	ps := slices.Clone(peers)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	if seq == 0 || len(ps) > MaxRevoked || len(authority) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: seq %d, %d peers (at most %d)", ErrBadRevocations, seq, len(ps), MaxRevoked)
	}
	aid := authorityID(authority.Public().(ed25519.PublicKey))
	b := append([]byte(revokeMagic), 1)
	b = append(b, aid[:]...)
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.LittleEndian.AppendUint64(b, uint64(max(issued.Unix(), 0)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(ps)))
	for _, p := range ps {
		if len(p) == 0 || len(p) > 64 || p.Validate() != nil {
			return nil, fmt.Errorf("%w: peer ID %q", ErrBadRevocations, p)
		}
		b = append(b, byte(len(p)))
		b = append(b, p...)
	}
	return append(b, ed25519.Sign(authority, append([]byte(revokeDomain), b...))...), nil
}

// DecodeRevocations parses and verifies a list signed by authority.
func DecodeRevocations(b []byte, authority ed25519.PublicKey) (*RevocationList, error) {
	if len(b) > MaxRevocationListSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadRevocations, len(b), MaxRevocationListSize)
	}
	r := recordReader{b: b}
	if string(r.take(4)) != revokeMagic || r.u8() != 1 {
		return nil, fmt.Errorf("%w: not a version 1 list", ErrBadRevocations)
	}
	var aid [8]byte
	copy(aid[:], r.take(8))
	l := &RevocationList{Seq: r.u64()}
	issued := r.u64()
	n := r.u16()
	if n > MaxRevoked {
		return nil, fmt.Errorf("%w: %d peers, at most %d", ErrBadRevocations, n, MaxRevoked)
	}
	for range n {
		id := r.take(r.u8())
		if r.err != nil {
			break
		}
		p, err := peer.IDFromBytes(id)
		if err != nil || len(id) > 64 {
			return nil, fmt.Errorf("%w: peer ID: %v", ErrBadRevocations, err)
		}
		if len(l.Peers) > 0 && l.Peers[len(l.Peers)-1] >= p {
			return nil, fmt.Errorf("%w: peers not in strictly increasing order", ErrBadRevocations)
		}
		l.Peers = append(l.Peers, p)
	}
	body := len(b) - len(r.b)
	sig := r.take(ed25519.SignatureSize)
	if r.err != nil || len(r.b) != 0 {
		return nil, fmt.Errorf("%w: truncated or trailing bytes", ErrBadRevocations)
	}
	if l.Seq == 0 || issued > 1<<40 {
		return nil, fmt.Errorf("%w: seq %d, issued %d", ErrBadRevocations, l.Seq, issued)
	}
	if aid != authorityID(authority) {
		return nil, fmt.Errorf("%w: list of another authority (key %x)", ErrBadRevocations, aid)
	}
	if !ed25519.Verify(authority, append([]byte(revokeDomain), b[:body]...), sig) {
		return nil, fmt.Errorf("%w: bad signature", ErrBadRevocations)
	}
	l.Issued, l.Raw = time.Unix(int64(issued), 0), b
	return l, nil
}

// EncodePEM wraps a certificate (cert true) or a revocation list in its PEM block.
func EncodePEM(b []byte, cert bool) []byte {
	t := revokePEMType
	if cert {
		t = certPEMType
	}
	return pem.EncodeToMemory(&pem.Block{Type: t, Bytes: b})
}

// DecodePEM unwraps the one PEM block of a certificate (cert true) or revocation list file: the right type, no
// headers, nothing but white space around it, at most the binary form's bound.
func DecodePEM(b []byte, cert bool) ([]byte, error) {
	t, limit, errBad := revokePEMType, MaxRevocationListSize, ErrBadRevocations
	if cert {
		t, limit, errBad = certPEMType, MaxCertSize, ErrBadCert
	}
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != t || len(blk.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: want one PEM block %q and nothing else", errBad, t)
	}
	if len(blk.Bytes) > limit {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", errBad, len(blk.Bytes), limit)
	}
	return blk.Bytes, nil
}

// ReadPEMFile reads a certificate (cert true) or revocation list file, bounded before reading.
func ReadPEMFile(path string, cert bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	limit := int64(MaxRevocationListSize)
	if cert {
		limit = MaxCertSize
	}
	limit = limit*4/3 + 4096 // base64, line breaks and the PEM lines
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	if b, err = DecodePEM(b, cert); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}
