package engine

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

// lyingBlob stores data on s under a manifest whose whole-blob sha256 is false (as a hostile producer could
// build it: chunk digests true, offset 20 not), through the fetch path, and returns its CID and the claim.
func lyingBlob(t *testing.T, s blobstore.Store, data []byte) (cid.Cid, [32]byte) {
	t.Helper()
	ctx := context.Background()
	honest, err := s.Put(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	m := *honest
	m.SHA256[0] ^= 0xff
	c := m.CID()
	if err := s.BeginPartial(ctx, &m); err != nil {
		t.Fatal(err)
	}
	for i := range m.Chunks {
		off := m.ChunkOffset(i)
		if err := s.PutChunk(ctx, c, i, data[off:off+uint64(m.ChunkLen(i))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(ctx, c); err != nil {
		t.Fatal(err)
	}
	return c, m.SHA256
}

// TestThreatRolloutSourceFalseSHA256 (docs/design.md 9.2): a signed rollout names a source blob whose manifest
// claims a false whole-blob sha256. The receiver does not re-hash the blob on arrival, so the claim reaches
// VerifySource through Stat. Whether the operator signed the true sha256 (the claim then disagrees with the
// manifest) or the claim itself (with a model ID computed from it), the rollout fails with a source mismatch and
// nothing is compiled: the exported files are re-hashed by compile.LoadModel.
func TestThreatRolloutSourceFalseSHA256(t *testing.T) {
	t.Parallel()
	for _, signsClaim := range []bool{false, true} {
		name := "operator signs the true sha256"
		if signsClaim {
			name = "operator signs the claim"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rig := newRolloutRig(t, lnl())
			rig.r.opts.RetryMin = 10 * time.Millisecond
			rig.run()
			src := rig.source("claim")
			i := slices.IndexFunc(src.Files, func(f rollout.SourceFile) bool { return f.Role == compile.RoleBin })
			bin, _ := blobstore.ParseCID(src.Files[i].Blob)
			r, err := rig.seedStore().Open(context.Background(), bin)
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				t.Fatal(err)
			}
			liar, claim := lyingBlob(t, rig.seedStore(), data)
			src.Files = slices.Clone(src.Files)
			src.Files[i].Blob = liar.String()
			if signsClaim {
				src.Files[i].SHA256 = hex.EncodeToString(claim[:])
				if src.ID, err = compile.ModelID(src.ModelFiles()); err != nil {
					t.Fatal(err)
				}
			}
			if err := rig.r.HandleManifest("peer-a", rig.sign(rig.manifest("kiosk", 1, src))); err != nil {
				t.Fatal(err)
			}
			s := rig.waitState("kiosk", 1, rollout.PhaseFailed)
			want := "bin file has sha256" // VerifySource: the claim is not what was signed
			if signsClaim {
				want = "hashes to model" // LoadModel re-hashed the exported files
			}
			if !strings.Contains(s.Reason, want) {
				t.Errorf("reason %q, want %q", s.Reason, want)
			}
			rig.clock.Advance(time.Second)
			time.Sleep(100 * time.Millisecond)
			if n := rig.backend.n.Load(); n != 0 {
				t.Errorf("%d compiles of a source whose sha256 claim is false", n)
			}
			if s, _ := rig.r.currentStatus("kiosk"); s.State != rollout.PhaseFailed {
				t.Errorf("state %s after retries, want failed", s.State)
			}
		})
	}
}

func (rig *rolloutRig) seedStore() blobstore.Store { return rig.seed.opts.Store.(blobstore.Store) }
