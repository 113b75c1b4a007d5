package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

// lnl is a Lunar Lake host with the compiler in the OpenVINO plugin (driver may differ within the MI rule).
func lnl() compat.Fingerprint {
	return compat.Fingerprint{
		OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64",
	}
}

// countingBackend counts compiles of a real backend.
type countingBackend struct {
	compile.Backend
	n atomic.Int32
}

func (c *countingBackend) Compile(ctx context.Context, req compile.Request) (*compile.Result, error) {
	c.n.Add(1)
	return c.Backend.Compile(ctx, req)
}

func openStore(t *testing.T) blobstore.Store {
	t.Helper()
	s, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newAgent(t *testing.T, s blobstore.Store, fp compat.Fingerprint, compileTime time.Duration) (*Agent, *countingBackend) {
	t.Helper()
	sim, err := compile.NewSim(fp, compile.SimOptions{CompileTime: compileTime, PayloadSize: 3<<20 + 5})
	if err != nil {
		t.Fatal(err)
	}
	b := &countingBackend{Backend: sim}
	a, err := New(Options{Store: s, Backend: b, Host: fp, Producer: "test", WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

func testModel(t *testing.T) compile.Model {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "m.xml"), []byte("<net name='m'/>"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "m.bin"), bytes.Repeat([]byte{7}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := compile.LoadModel(filepath.Join(dir, "m.xml"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var testProfile = compile.Profile{Device: "NPU", Shapes: map[string][]int64{"input": {1, 3, 224, 224}}}

func TestEnsureCompilesOnceThenServesFromStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := newAgent(t, openStore(t), lnl(), 0)
	m := testModel(t)

	first, err := a.Ensure(ctx, m, testProfile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if first.Source != SourceCompiled || b.n.Load() != 1 {
		t.Fatalf("first: source %s after %d compiles, want compiled after 1", first.Source, b.n.Load())
	}
	second, err := a.Ensure(ctx, m, testProfile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.Source != SourceStore || second.CID != first.CID || b.n.Load() != 1 {
		t.Fatalf("second: %s %s after %d compiles; want store %s after 1", second.Source, second.CID, b.n.Load(), first.CID)
	}
	p1, err := a.Materialize(ctx, first.CID)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p1)
	if err != nil || st.Mode().Perm() != 0o444 {
		t.Fatalf("materialised file %s: %v, mode %v; want read-only", p1, err, st.Mode())
	}
	// The blob is what the simulator writes for this model, profile and host, byte for byte.
	want := filepath.Join(t.TempDir(), "want.blob")
	if _, err := b.Backend.Compile(ctx, compile.Request{Model: m, Profile: testProfile, OutPath: want}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p1)
	wantBytes, _ := os.ReadFile(want)
	if !bytes.Equal(got, wantBytes) {
		t.Fatalf("materialised blob (%d bytes) differs from the compiler's output (%d bytes)", len(got), len(wantBytes))
	}
}

func TestEnsureConcurrentCallersShareOneCompile(t *testing.T) {
	t.Parallel()
	a, b := newAgent(t, openStore(t), lnl(), 100*time.Millisecond)
	m := testModel(t)
	var wg sync.WaitGroup
	results := make([]Result, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = a.Ensure(context.Background(), m, testProfile, nil)
		}()
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if results[i].CID != results[0].CID {
			t.Fatalf("caller %d got %s, caller 0 %s", i, results[i].CID, results[0].CID)
		}
	}
	if n := b.n.Load(); n != 1 {
		t.Fatalf("%d compiles, want 1", n)
	}
}

// Two hosts share one store: whether the second reuses the first's blob is the rules' decision.
func TestEnsureReuseFollowsRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*compat.Fingerprint)
		reuse  bool
	}{
		{"identical host", func(*compat.Fingerprint) {}, true},
		{"other OS (ignored)", func(f *compat.Fingerprint) { f.OS = "windows" }, true},
		{"newer firmware MI minor", func(f *compat.Fingerprint) { f.FirmwareMI = "11.6" }, true},
		{"other driver, plugin compiler", func(f *compat.Fingerprint) { f.DriverVersion = "1750000000" }, true},
		{"older firmware MI minor", func(f *compat.Fingerprint) { f.FirmwareMI = "11.3" }, false},
		{"other firmware MI major", func(f *compat.Fingerprint) { f.FirmwareMI = "12.4" }, false},
		{"other architecture", func(f *compat.Fingerprint) { f.Arch = "5010" }, false},
		{"other compiler version", func(f *compat.Fingerprint) { f.CompilerVersion = "7.5" }, false},
		{"older OpenVINO", func(f *compat.Fingerprint) { f.OpenVINO = "2026.0.0" }, false},
		{"fewer tiles", func(f *compat.Fingerprint) { f.MaxTiles = 4 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := openStore(t)
			m := testModel(t)
			a1, _ := newAgent(t, s, lnl(), 0)
			r1, err := a1.Ensure(ctx, m, testProfile, nil)
			if err != nil {
				t.Fatal(err)
			}
			host := lnl()
			tt.change(&host)
			a2, b2 := newAgent(t, s, host, 0)
			r2, err := a2.Ensure(ctx, m, testProfile, nil)
			if err != nil {
				t.Fatal(err)
			}
			reused := r2.Source == SourceStore && r2.CID == r1.CID && b2.n.Load() == 0
			if reused != tt.reuse {
				t.Fatalf("second host: source %s, same blob %v, %d compiles; want reuse=%v", r2.Source, r2.CID == r1.CID, b2.n.Load(), tt.reuse)
			}
			if !tt.reuse && r2.CID == r1.CID {
				t.Fatal("recompiled blob is byte-identical to the first host's: the simulator ignores the fingerprint")
			}
		})
	}
}

func TestEnsureWithoutCompiler(t *testing.T) {
	t.Parallel()
	a, err := New(Options{Store: openStore(t), Host: lnl(), WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Ensure(context.Background(), testModel(t), testProfile, nil)
	if !errors.Is(err, compile.ErrNoCompiler) {
		t.Fatalf("err = %v, want ErrNoCompiler", err)
	}
}

func TestPutChecksBlob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	m := testModel(t)
	a, _ := newAgent(t, openStore(t), lnl(), 0)

	// A blob compiled elsewhere for this stack is accepted and then served from the store.
	good := filepath.Join(dir, "good.blob")
	sim, _ := compile.NewSim(lnl(), compile.SimOptions{PayloadSize: 1 << 20})
	if _, err := sim.Compile(ctx, compile.Request{Model: m, Profile: testProfile, OutPath: good}); err != nil {
		t.Fatal(err)
	}
	put, err := a.Put(ctx, good, m, testProfile, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Ensure(ctx, m, testProfile, nil)
	if err != nil || got.CID != put.CID || got.Source != SourceStore {
		t.Fatalf("Ensure after Put = %+v, %v", got, err)
	}

	newer := lnl()
	newer.OpenVINO = "2026.2.0"
	fromNewer := filepath.Join(dir, "newer.blob")
	simNewer, _ := compile.NewSim(newer, compile.SimOptions{PayloadSize: 1 << 10})
	if _, err := simNewer.Compile(ctx, compile.Request{Model: m, Profile: testProfile, OutPath: fromNewer}); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.blob")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("x"), 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, path string
		want       error
	}{
		{"no trailer", garbage, compat.ErrNoMetadata},
		{"blob from a newer OpenVINO", fromNewer, ErrIncompatible},
	} {
		if _, err := a.Put(ctx, tt.path, m, testProfile, nil); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
	list, err := a.Store().List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("store holds %d blobs (%v), want only the good one", len(list), err)
	}
}

func TestGCKeepsPinnedAndInUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, _ := newAgent(t, openStore(t), lnl(), 0)
	m := testModel(t)
	var cids []Result
	for _, shape := range []int64{1, 2, 3} {
		p := compile.Profile{Device: "NPU", Shapes: map[string][]int64{"input": {shape, 8}}}
		r, err := a.Ensure(ctx, m, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		cids = append(cids, r)
	}
	release := a.Use(cids[0].CID) // as the API server does while it streams a blob
	streaming, err := a.Store().Open(ctx, cids[0].CID)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Store().Pin(ctx, cids[1].CID, true); err != nil {
		t.Fatal(err)
	}
	path, err := a.Materialize(ctx, cids[2].CID)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.GC(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 1 || res.Removed[0] != cids[2].CID {
		t.Fatalf("gc removed %v, want only the unpinned blob nobody uses (%s)", res.Removed, cids[2].CID)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("materialised file of a removed blob: %v", err)
	}
	if _, err := io.Copy(io.Discard, streaming); err != nil {
		t.Fatalf("stream of a blob in use: %v", err)
	}
	streaming.Close()
	release()
	res, err = a.GC(ctx, 0)
	if err != nil || len(res.Removed) != 1 || res.Removed[0] != cids[0].CID {
		t.Fatalf("after the stream closed gc removed %v, %v; want %s", res.Removed, err, cids[0].CID)
	}
}

// flipStoredByte flips one byte of needle where the store under dir keeps it on disk (the store is closed).
func flipStoredByte(t *testing.T, dir string, needle []byte) {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || found || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if i := bytes.Index(b, needle); i >= 0 {
			found = true
			_ = os.Chmod(path, 0o644)
			b[i+len(needle)/2] ^= 0x40
			return os.WriteFile(path, b, 0o644)
		}
		return nil
	})
	if err != nil || !found {
		t.Fatalf("stored bytes to corrupt not found under %s: %v", dir, err)
	}
}

// TestCorruptStoredBlobFallsBack: a byte flipped on disk in a stored blob makes the next Ensure quarantine it and
// fall back to compiling, which heals the store; the request succeeds (issue 10 item 11).
func TestCorruptStoredBlobFallsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	s, err := badgerstore.Open(dir, badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := newAgent(t, s, lnl(), 0)
	m := testModel(t)
	first, err := a.Ensure(ctx, m, testProfile, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Materialize(ctx, first.CID)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // seal badger's value log, so the flip is bit rot rather than a torn write
		s, err := badgerstore.Open(dir, badgerstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	flipStoredByte(t, dir, blob[blobstore.ChunkSize+4096:blobstore.ChunkSize+4160])

	s, err = badgerstore.Open(dir, badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ = newAgent(t, s, lnl(), 0)
	a.opts.Backend = b
	got, err := a.Ensure(ctx, m, testProfile, nil)
	if err != nil {
		t.Fatalf("Ensure with a corrupt stored blob: %v", err)
	}
	if got.CID != first.CID || got.Source != SourceCompiled || b.n.Load() != 2 {
		t.Fatalf("Ensure = %s from %s after %d compiles; want %s compiled again", got.CID, got.Source, b.n.Load(), first.CID)
	}
	rep, err := s.Verify(ctx)
	if err != nil || len(rep.Corrupt) != 0 {
		t.Fatalf("Verify after healing = %+v, %v", rep, err)
	}
	p, err = a.Materialize(ctx, got.CID)
	if err != nil {
		t.Fatal(err)
	}
	if healed, err := os.ReadFile(p); err != nil || !bytes.Equal(healed, blob) {
		t.Fatalf("healed blob differs: %v", err)
	}
}
