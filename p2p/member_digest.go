package p2p

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Digest-first member pull (docs/design.md 6.2): the puller first sends what it holds, one (key, seq) pair per
// member, and the answer carries only the records it lacks or holds older. A pull between members in sync then
// costs 16 bytes per member instead of a whole table of signed records (about 300 bytes each), so members can
// pull often and repair lost gossip within a few rounds.
const (
	MemberDigestProtocol protocol.ID = "/npu-agent/members/sync/2.0.0"
	memberDigestMagic                = "NPMD"
	memberDigestVersion              = 1
	memberDigestHeader               = len(memberDigestMagic) + 1 + 2 // magic, version, u16 count
	memberDigestEntry                = 16                             // key u64, seq u64
	// maxMemberDigest is the largest digest: the table and our own record.
	maxMemberDigest = memberDigestHeader + (MaxMembers+1)*memberDigestEntry
)

var errBadDigest = errors.New("invalid member digest")

// digestKey names a member in a digest: the first 8 bytes of the SHA-256 of its peer ID, big-endian. Two
// members sharing a key would each hide the other's newer record from the puller's answers (gossip still carries
// it); such a pair costs about 2^32 key generations and both must be members.
func digestKey(id peer.ID) uint64 {
	s := sha256.Sum256([]byte(id))
	return binary.BigEndian.Uint64(s[:8])
}

// encodeMemberDigest encodes key → seq as a digest, entries in increasing key order.
func encodeMemberDigest(d map[uint64]uint64) []byte {
	keys := make([]uint64, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := make([]byte, 0, memberDigestHeader+len(keys)*memberDigestEntry)
	b = append(b, memberDigestMagic...)
	b = append(b, memberDigestVersion)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(keys)))
	for _, k := range keys {
		b = binary.LittleEndian.AppendUint64(b, k)
		b = binary.LittleEndian.AppendUint64(b, d[k])
	}
	return b
}

// decodeMemberDigest accepts exactly what encodeMemberDigest produces for at most MaxMembers+1 entries: keys
// strictly increasing, no trailing byte. The count is checked against the length before anything is allocated.
func decodeMemberDigest(b []byte) (map[uint64]uint64, error) {
	if len(b) < memberDigestHeader || len(b) > maxMemberDigest {
		return nil, fmt.Errorf("%w: %d bytes", errBadDigest, len(b))
	}
	if string(b[:4]) != memberDigestMagic || b[4] != memberDigestVersion {
		return nil, fmt.Errorf("%w: bad magic or version", errBadDigest)
	}
	n := int(binary.LittleEndian.Uint16(b[5:7]))
	if n > MaxMembers+1 || len(b) != memberDigestHeader+n*memberDigestEntry {
		return nil, fmt.Errorf("%w: %d entries in %d bytes", errBadDigest, n, len(b))
	}
	d := make(map[uint64]uint64, n)
	var last uint64
	for i := range n {
		e := b[memberDigestHeader+i*memberDigestEntry:]
		k := binary.LittleEndian.Uint64(e)
		if i > 0 && k <= last {
			return nil, fmt.Errorf("%w: keys not increasing", errBadDigest)
		}
		last = k
		d[k] = binary.LittleEndian.Uint64(e[8:])
	}
	return d, nil
}

// readMemberDigest reads one digest, then the end of the puller's side of the stream: the header first, then
// exactly the entries its count announces (at most maxMemberDigest bytes in all).
func readMemberDigest(r io.Reader) (map[uint64]uint64, error) {
	b := make([]byte, memberDigestHeader, memberDigestHeader+memberDigestEntry)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: header: %w", errBadDigest, noEOF(err))
	}
	n := int(binary.LittleEndian.Uint16(b[5:7]))
	if n > MaxMembers+1 {
		return nil, fmt.Errorf("%w: %d entries", errBadDigest, n)
	}
	b = slices.Grow(b, n*memberDigestEntry)[:memberDigestHeader+n*memberDigestEntry]
	if _, err := io.ReadFull(r, b[memberDigestHeader:]); err != nil {
		return nil, fmt.Errorf("%w: entries: %w", errBadDigest, noEOF(err))
	}
	var one [1]byte
	if _, err := io.ReadFull(r, one[:]); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing bytes", errBadDigest)
	}
	return decodeMemberDigest(b)
}

// Hash-first member pull (docs/design.md 6.2): the puller first sends a hash of the set of members it holds
// (itself included), and the answerer replies "same" when its own set hashes alike; only otherwise does the
// digest exchange above follow on the same stream. A pull between members in sync then costs a few dozen bytes
// whatever the fleet's size, instead of 16 bytes per member.
const (
	MemberHashProtocol protocol.ID = "/npu-agent/members/sync/3.0.0"
	memberHashMagic                = "NPMH"
	memberHashVersion              = 1
	memberHashLen                  = 16
	memberHashMsg                  = len(memberHashMagic) + 1 + memberHashLen
	memberHashDomain               = "npu-agent/members/hash/1\x00"
	// The answerer's one-byte verdict on the puller's hash.
	memberHashSame   byte = 0
	memberHashDiffer byte = 1
)

var errBadHash = errors.New("invalid member table hash")

type memberHash [memberHashLen]byte

// hashMemberKeys hashes a set of digest keys, in any order: SHA-256 of the domain and the keys sorted, each
// u64 little-endian, cut to 16 bytes. It sorts keys in place.
func hashMemberKeys(keys []uint64) memberHash {
	slices.Sort(keys)
	h := sha256.New()
	h.Write([]byte(memberHashDomain))
	b := make([]byte, 0, 8*len(keys))
	for _, k := range keys {
		b = binary.LittleEndian.AppendUint64(b, k)
	}
	h.Write(b)
	var out memberHash
	copy(out[:], h.Sum(nil))
	return out
}

func encodeMemberHash(h memberHash) []byte {
	return append(append([]byte(memberHashMagic), memberHashVersion), h[:]...)
}

// decodeMemberHash accepts exactly what encodeMemberHash produces.
func decodeMemberHash(b []byte) (memberHash, error) {
	var h memberHash
	if len(b) != memberHashMsg || string(b[:4]) != memberHashMagic || b[4] != memberHashVersion {
		return h, fmt.Errorf("%w: %d bytes", errBadHash, len(b))
	}
	copy(h[:], b[5:])
	return h, nil
}

// readMemberHash reads the puller's hash message: exactly memberHashMsg bytes.
func readMemberHash(r io.Reader) (memberHash, error) {
	b := make([]byte, memberHashMsg)
	if _, err := io.ReadFull(r, b); err != nil {
		return memberHash{}, fmt.Errorf("%w: %w", errBadHash, noEOF(err))
	}
	return decodeMemberHash(b)
}
