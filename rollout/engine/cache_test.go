package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
	"github.com/npu-agent/npu-agent/rollout"
)

// seedCacheEntry stores an OpenVINO cache entry (compiler minor version minor) in the seed's store and
// describes it for a manifest.
func (rig *rolloutRig) seedCacheEntry(name string, minor uint16, seed byte) rollout.CacheEntry {
	rig.t.Helper()
	data := ovcachetest.Entry(ovcache.Header{Build: ovcachetest.Build, FileInfo: "0", Alignment: 4096}, false,
		ovcachetest.Blob(ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, minor), 20000, seed))
	m, err := rig.seed.opts.Store.Put(context.Background(), bytes.NewReader(data))
	if err != nil {
		rig.t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return rollout.CacheEntry{Name: name, Build: ovcachetest.Build, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]),
		Blob: m.CID().String()}
}

// TestRolloutCacheEntries: a rollout that names OpenVINO cache entries brings them to every selected host, pins
// them, and indexes as cache-entry records (for the sharer to write into CACHE_DIRs) only those that serve this
// host; an entry whose bytes are not what the signed manifest says fails the rollout and is never indexed.
func TestRolloutCacheEntries(t *testing.T) {
	t.Parallel()
	rig := newRolloutRig(t, lnl())
	rig.run()
	ctx := context.Background()
	store := rig.agent.Store()
	m := rig.manifest("kiosk", 1, rig.source("one"))
	good, other := rig.seedCacheEntry("100.blob", 4, 1), rig.seedCacheEntry("200.blob", 5, 2) // 7.5: not this host's compiler
	m.CacheEntries = []rollout.CacheEntry{good, other}
	if err := rig.r.HandleManifest("peer-a", rig.sign(m)); err != nil {
		t.Fatal(err)
	}
	rig.waitState("kiosk", 1, rollout.PhaseReady)
	key, err := rig.agent.CacheKey(ovcachetest.Build)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := store.Records(ctx, "", key)
	if err != nil || len(recs) != 1 || recs[0].ModelID != good.Name || recs[0].Blob.String() != good.Blob || recs[0].Kind != ovcache.RecordKind {
		t.Fatalf("cache-entry records %+v, %v; want one for %s", recs, err, good.Name)
	}
	for _, e := range []rollout.CacheEntry{good, other} {
		if !pinned(t, store, e.Blob) {
			t.Errorf("cache entry %s's blob is not pinned", e.Name)
		}
	}
	// Prepared again (a restart): indexed once.
	if _, err := rig.r.prepare(ctx, "kiosk"); err != nil {
		t.Fatal(err)
	}
	if recs, _ := store.Records(ctx, "", key); len(recs) != 1 {
		t.Errorf("%d records after a second preparation", len(recs))
	}

	// Version 2 claims another digest for the good entry's blob (a publisher bug or a swapped blob).
	bad := rig.seedCacheEntry("300.blob", 4, 3)
	bad.SHA256 = strings.Repeat("0", 64)
	m2 := rig.manifest("kiosk", 2, m.Model)
	m2.CacheEntries = []rollout.CacheEntry{bad}
	if err := rig.r.HandleManifest("peer-a", rig.sign(m2)); err != nil {
		t.Fatal(err)
	}
	s := rig.waitState("kiosk", 2, rollout.PhaseFailed)
	if !strings.Contains(s.Reason, "the manifest says") {
		t.Errorf("reason %q", s.Reason)
	}
	if recs, _ := store.Records(ctx, bad.Name, ""); len(recs) != 0 {
		t.Errorf("an entry that is not the manifest's was indexed: %+v", recs)
	}
}
