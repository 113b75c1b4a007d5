package rollout

import "testing"

// Verify runs on every gossiped manifest: one ed25519 verification, a strict decode and a re-encode.
func BenchmarkVerify(b *testing.B) {
	signed := mustSign(b, testManifest(b, "detector", 1, "<net/>", "w"), testKey(1))
	trust := trustOf(b, 1, testKey(1))
	b.SetBytes(int64(len(signed)))
	for b.Loop() {
		if _, err := Verify(signed, trust, now); err != nil {
			b.Fatal(err)
		}
	}
}

// DecodeState runs on every Accept (load before check) and every States listing.
func BenchmarkDecodeState(b *testing.B) {
	trust := trustOf(b, 1, testKey(1))
	st := mustAccept(b, State{}, mustSign(b, testManifest(b, "detector", 1, "<net/>", "a"), testKey(1)), trust)
	st = mustAccept(b, st, mustSign(b, testManifest(b, "detector", 2, "<net/>", "b"), testKey(1)), trust)
	enc := mustEncode(b, st)
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if _, err := DecodeState(enc); err != nil {
			b.Fatal(err)
		}
	}
}
