package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

// lyingFleet offers one record whose claim is compatible with the host; Fetch stores the bytes it holds for the
// record's blob, as a peer serving them would (the bytes match the CID: the lie is in the record).
type lyingFleet struct {
	rec     blobstore.Record
	path    string // the blob's bytes
	store   blobstore.Store
	fetches atomic.Int32
}

func (f *lyingFleet) Records(modelID, profileID string) []blobstore.Record {
	return []blobstore.Record{f.rec}
}

func (f *lyingFleet) Fetch(ctx context.Context, c cid.Cid, progress func(done, total int64)) error {
	f.fetches.Add(1)
	file, err := os.Open(f.path)
	if err != nil {
		return err
	}
	defer file.Close()
	m, err := f.store.Put(ctx, file)
	if err != nil {
		return err
	}
	if !m.CID().Equals(c) {
		return errors.New("test fleet: bytes do not hash to the requested CID")
	}
	return nil
}

func (f *lyingFleet) Publish(context.Context, blobstore.Record) error { return nil }

func (f *lyingFleet) Coordinate(ctx context.Context, _ compile.FlightKey, compileFn func(context.Context) (cid.Cid, error), _ func() (cid.Cid, bool)) (string, error) {
	_, err := compileFn(ctx)
	return "", err
}

// A peer's record is a claim: the agent serves the blob it names only once the blob itself passed the checks,
// and a record that fails them is neither kept nor served, from any path, nor fetched again.
func TestFleetRecordIsNotEnough(t *testing.T) {
	t.Parallel()
	otherArch := lnl()
	otherArch.Arch = "5010"
	tests := []struct {
		name    string
		compile compat.Fingerprint // the stack the blob was really compiled on
		size    func(real uint64) uint64
		want    error
	}{
		{"trailer incompatible with this host", otherArch, func(n uint64) uint64 { return n }, ErrIncompatible},
		{"size differs from the record", lnl(), func(n uint64) uint64 { return n + 1 }, ErrRecordMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			m := testModel(t)
			pid, err := testProfile.ID()
			if err != nil {
				t.Fatal(err)
			}
			// The blob, compiled apart and described by the peer's record as compiled on this very host.
			blobPath, c, size := peerBlob(t, m, tt.compile)
			claim, err := lnl().Canonical()
			if err != nil {
				t.Fatal(err)
			}
			s := openStore(t)
			fl := &lyingFleet{path: blobPath, store: s, rec: blobstore.Record{
				ModelID: m.ID, ProfileID: pid, Blob: c, Fingerprint: claim, Size: tt.size(size),
				Created: time.Now().UTC(), Producer: "12D3KooWliar",
			}}
			a, err := New(Options{Store: s, Host: lnl(), Producer: "test", WorkDir: t.TempDir(), Fleet: fl})
			if err != nil {
				t.Fatal(err)
			}

			if err := fl.Fetch(ctx, c, nil); err != nil {
				t.Fatal(err)
			}
			if err := a.checkStored(ctx, fl.rec, ""); !errors.Is(err, tt.want) {
				t.Fatalf("checkStored = %v, want %v", err, tt.want)
			}
			if err := s.Delete(ctx, c); err != nil {
				t.Fatal(err)
			}
			fl.fetches.Store(0)

			// No compiler here: the only way to succeed would be to serve the peer's blob.
			for i := range 2 {
				r, err := a.Ensure(ctx, m, testProfile, nil)
				if !errors.Is(err, compile.ErrNoCompiler) {
					t.Fatalf("ensure %d = %+v, %v; want ErrNoCompiler (the peer's blob must not be served)", i, r, err)
				}
			}
			if n := fl.fetches.Load(); n != 1 {
				t.Errorf("fetched %d times, want once (a rejected record is remembered)", n)
			}
			if err := a.checkStored(ctx, fl.rec, ""); err != nil && !errors.Is(err, blobstore.ErrNotFound) {
				t.Errorf("checkStored after rejection = %v, want the blob gone (ErrNotFound)", err)
			}
			recs, err := s.Records(ctx, "", "")
			if err != nil || len(recs) != 0 {
				t.Errorf("store records = %v, %v; want none", recs, err)
			}
			if ok, err := s.Has(ctx, c); ok || err != nil {
				t.Errorf("store still holds the rejected blob (%v)", err)
			}
			if _, err := a.Materialize(ctx, c); !errors.Is(err, blobstore.ErrNotFound) {
				t.Errorf("Materialize of the rejected blob = %v, want ErrNotFound", err)
			}

			// With a compiler, the host compiles its own instead.
			a2, b := newAgent(t, s, lnl(), 0)
			a2.opts.Fleet = fl
			r, err := a2.Ensure(ctx, m, testProfile, nil)
			if err != nil || r.Source != SourceCompiled || r.CID.Equals(c) || b.n.Load() != 1 {
				t.Fatalf("ensure with a compiler = %+v, %v, %d compiles; want its own compile", r, err, b.n.Load())
			}
			recs, err = s.Records(ctx, "", "")
			if err != nil || len(recs) != 1 || !recs[0].Blob.Equals(r.CID) {
				t.Errorf("store records = %v, %v; want only this host's compile", recs, err)
			}
		})
	}
}

// peerBlob compiles m for testProfile on the stack fp, apart from any agent, as a peer would: the file, its CID
// and size.
func peerBlob(t *testing.T, m compile.Model, fp compat.Fingerprint) (string, cid.Cid, uint64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "peer.blob")
	sim, err := compile.NewSim(fp, compile.SimOptions{PayloadSize: 1<<20 + 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.Compile(context.Background(), compile.Request{Model: m, Profile: testProfile, OutPath: path}); err != nil {
		t.Fatal(err)
	}
	c, size := fileCID(t, path)
	return path, c, size
}

// fileCID is the CID and size the store gives the file's bytes.
func fileCID(t *testing.T, path string) (cid.Cid, uint64) {
	t.Helper()
	s := openStore(t)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := s.Put(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return m.CID(), m.Size
}

// flakyFleet: a peer compiled the blob while this agent waited (Coordinate names it); its first failures fetches
// fail as a busy holder's would, then it serves the blob.
type flakyFleet struct {
	lyingFleet
	failures int32
}

func (f *flakyFleet) Fetch(ctx context.Context, c cid.Cid, progress func(done, total int64)) error {
	if f.fetches.Load() < f.failures {
		f.fetches.Add(1)
		return errors.New("test fleet: holder busy")
	}
	return f.lyingFleet.Fetch(ctx, c, progress)
}

func (f *flakyFleet) Coordinate(context.Context, compile.FlightKey, func(context.Context) (cid.Cid, error), func() (cid.Cid, bool)) (string, error) {
	return "12D3KooWpeer", nil
}

// A blob the fleet compiled while this agent waited is fetched again after a failed fetch, rather than compiled
// here at once (TestScaleLoopback at 100 daemons: holders too busy to serve within a fetch's deadline); a holder
// that never serves still ends in a local compile.
func TestFleetFetchRetriedBeforeCompile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		failures      int32
		wantFetches   int32
		wantCompiles  int32
		wantSourceOut Source
	}{
		// A fetch before the flight, one after it, then one per retry.
		{"holder serves on the third try", 2, 3, 0, SourcePeer},
		{"holder never serves", 100, 5, 1, SourceCompiled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			m := testModel(t)
			pid, err := testProfile.ID()
			if err != nil {
				t.Fatal(err)
			}
			blobPath, c, size := peerBlob(t, m, lnl())
			fp, err := lnl().Canonical()
			if err != nil {
				t.Fatal(err)
			}
			s := openStore(t)
			fl := &flakyFleet{failures: tt.failures, lyingFleet: lyingFleet{path: blobPath, store: s, rec: blobstore.Record{
				ModelID: m.ID, ProfileID: pid, Blob: c, Fingerprint: fp, Size: size,
				Created: time.Now().UTC(), Producer: "12D3KooWpeer",
			}}}
			a, b := newAgent(t, s, lnl(), 0)
			a.opts.Fleet = fl
			a.retries = []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
			r, err := a.Ensure(ctx, m, testProfile, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.Source != tt.wantSourceOut || fl.fetches.Load() != tt.wantFetches || b.n.Load() != tt.wantCompiles {
				t.Errorf("ensure: source %s, %d fetches, %d compiles; want %s, %d, %d",
					r.Source, fl.fetches.Load(), b.n.Load(), tt.wantSourceOut, tt.wantFetches, tt.wantCompiles)
			}
		})
	}
}
