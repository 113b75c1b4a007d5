package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

// blockingFleet advertises one record and holds its fetch until the fetch's context ends.
type blockingFleet struct {
	rec      blobstore.Record
	fetching chan struct{} // closed when Fetch starts
}

func (f *blockingFleet) Records(modelID, profileID string) []blobstore.Record {
	if modelID != f.rec.ModelID || profileID != f.rec.ProfileID {
		return nil
	}
	return []blobstore.Record{f.rec}
}

func (f *blockingFleet) Fetch(ctx context.Context, _ cid.Cid, progress func(done, total int64)) error {
	progress(1<<20, 8<<20)
	close(f.fetching)
	<-ctx.Done()
	return ctx.Err()
}

func (f *blockingFleet) Publish(context.Context, blobstore.Record) error { return nil }

func (f *blockingFleet) Coordinate(ctx context.Context, _ compile.FlightKey, compile func(context.Context) (cid.Cid, error), _ func() (cid.Cid, bool)) (string, error) {
	_, err := compile(ctx)
	return "", err
}

func testHost() compat.Fingerprint {
	return compat.Fingerprint{
		OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64",
	}
}

// newService is a Service of a real agent with the simulated compiler and a badger store.
func newService(t *testing.T, fleet agent.Fleet) (*Service, string) {
	t.Helper()
	store, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	sim, err := compile.NewSim(testHost(), compile.SimOptions{PayloadSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{Store: store, Backend: sim, Host: testHost(), Producer: "test", WorkDir: t.TempDir(), Fleet: fleet})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	xml := filepath.Join(dir, "m.xml")
	if err := os.WriteFile(xml, []byte("<net name='m'/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "m.bin"), bytes.Repeat([]byte{7}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	return &Service{Agent: a, Version: "test"}, xml
}

// peerRecord is a peer's record of blob for the model at xml and testProfile, compiled on testHost.
func peerRecord(t *testing.T, xml string, blob cid.Cid, producer string) blobstore.Record {
	t.Helper()
	m, err := compile.LoadModel(xml)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := testProfile().ID()
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := testHost().Canonical()
	return blobstore.Record{ModelID: m.ID, ProfileID: pid, Blob: blob, Fingerprint: fp, Producer: producer, Created: time.Now()}
}

func TestServiceStatusShowsFetch(t *testing.T) {
	t.Parallel()
	fleet := &blockingFleet{fetching: make(chan struct{})}
	svc, xml := newService(t, fleet)
	blob := testCID([]byte("a blob a peer has"))
	fleet.rec = peerRecord(t, xml, blob, "peer")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := svc.Ensure(ctx, api.EnsureRequest{Model: xml, Profile: testProfile()})
		done <- err
	}()
	<-fleet.fetching
	st, err := svc.Status(context.Background())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Jobs) != 1 || st.Jobs[0].Kind != agent.PhaseFetch || st.Jobs[0].CID != blob ||
		st.Jobs[0].ModelID != fleet.rec.ModelID || st.Jobs[0].ProfileID != fleet.rec.ProfileID || st.Jobs[0].Done != 1<<20 || st.Jobs[0].Total != 8<<20 ||
		st.Jobs[0].Chunks != 8 || st.Jobs[0].ChunksDone != 1 || st.Jobs[0].From != "peer" || st.Jobs[0].Rate == 0 {
		t.Errorf("jobs %+v, want the fetch of %s", st.Jobs, blob)
	}
	if st.Class == "" || st.Compiler != "sim" || len(st.Fingerprint) == 0 {
		t.Errorf("status %+v lacks the host's class, compiler or fingerprint", st)
	}
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ensure: %v", err)
	}
}

func TestJobChunks(t *testing.T) {
	t.Parallel()
	start := time.Unix(1000, 0)
	for _, c := range []struct {
		done, total        int64
		chunks, chunksDone uint64
		rate               uint64
	}{
		{0, 0, 0, 0, 0},                         // a compile: no bytes
		{0, 8 << 20, 8, 0, 0},                   // nothing yet
		{1, 8 << 20, 8, 1, 0},                   // part of the first chunk
		{3 << 20, 3<<20 + 5, 4, 3, 1 << 20},     // the short last chunk still to come
		{3<<20 + 5, 3<<20 + 5, 4, 4, 1<<20 + 1}, // all of it
	} {
		j := job(agent.Activity{Phase: agent.PhaseFetch, Started: start, Done: c.done, Total: c.total}, start.Add(3*time.Second))
		if j.Chunks != c.chunks || j.ChunksDone != c.chunksDone || j.Rate != c.rate {
			t.Errorf("%d/%d bytes: chunks %d/%d rate %d, want %d/%d rate %d", c.done, c.total, j.ChunksDone, j.Chunks, j.Rate,
				c.chunksDone, c.chunks, c.rate)
		}
	}
}

func TestServiceOpenBlobKeepsBlobFromGC(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	svc, xml := newService(t, nil)
	res, err := svc.Ensure(ctx, api.EnsureRequest{Model: xml, Profile: testProfile()})
	if err != nil {
		t.Fatal(err)
	}
	streaming, err := svc.OpenBlob(ctx, res.CID)
	if err != nil {
		t.Fatal(err)
	}
	if gc, err := svc.Agent.GC(ctx, 0); err != nil || len(gc.Removed) != 0 {
		t.Fatalf("gc during a stream removed %v, %v", gc.Removed, err)
	}
	if n, err := io.Copy(io.Discard, streaming); err != nil || uint64(n) != res.Size {
		t.Fatalf("streamed %d bytes, %v; want %d", n, err, res.Size)
	}
	streaming.Close()
	if gc, err := svc.Agent.GC(ctx, 0); err != nil || len(gc.Removed) != 1 || gc.Removed[0] != res.CID {
		t.Fatalf("gc after the stream removed %v, %v; want %s", gc.Removed, err, res.CID)
	}
}
