package fleetsim

import (
	"crypto/sha256"
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/crypto"
	pb "github.com/libp2p/go-libp2p/core/crypto/pb"
)

// One process simulating N members would check every signature N times (gossipsub's message signature and the
// record envelope's, at every member): O(N²) Ed25519 checks that real members spread over N machines. Every
// Ed25519 check in this process therefore goes through one cache keyed by the exact (key, data, signature)
// bytes: a member still checks everything it receives, and the first check of those exact bytes is a real
// one, so a forgery is never taken for a good signature. verifyCalls counts the checks the members asked for
// (what N real members would compute), verifyDone those computed.
var (
	verifyCalls, verifyDone atomic.Int64
	verifyMu                sync.Mutex
	verified                = map[[32]byte]bool{}
)

// maxVerified bounds the cache: past it the cache starts over (a memory bound, not a correctness one).
const maxVerified = 1 << 20

func init() {
	orig := crypto.PubKeyUnmarshallers[pb.KeyType_Ed25519]
	crypto.PubKeyUnmarshallers[pb.KeyType_Ed25519] = func(b []byte) (crypto.PubKey, error) {
		k, err := orig(b)
		if err != nil {
			return nil, err
		}
		return cachedKey{k}, nil
	}
}

// cachedKey is an Ed25519 public key whose Verify goes through the process's cache.
type cachedKey struct{ crypto.PubKey }

func (k cachedKey) Verify(data, sig []byte) (bool, error) {
	verifyCalls.Add(1)
	raw, err := k.Raw()
	if err != nil {
		return false, err
	}
	h := sha256.New()
	for _, b := range [][]byte{raw, data, sig} {
		var n [8]byte
		for i := range n {
			n[i] = byte(len(b) >> (8 * i))
		}
		h.Write(n[:]) // lengths first: no two splits of the same bytes share a key
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	verifyMu.Lock()
	ok, hit := verified[sum]
	verifyMu.Unlock()
	if hit {
		return ok, nil
	}
	verifyDone.Add(1)
	ok, err = k.PubKey.Verify(data, sig)
	if err != nil {
		return ok, err
	}
	verifyMu.Lock()
	if len(verified) >= maxVerified {
		clear(verified)
	}
	verified[sum] = ok
	verifyMu.Unlock()
	return ok, nil
}

func (k cachedKey) Equals(o crypto.Key) bool { return crypto.KeyEqual(k.PubKey, o) }
