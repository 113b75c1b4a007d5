//go:build unix

package share_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
	"github.com/npu-agent/npu-agent/ovcache/share"
)

func lnl() compat.Fingerprint {
	return compat.Fingerprint{
		OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64",
	}
}

// peers is an in-process fleet: every member sees the records in the other members' stores (plus forged ones)
// and fetches a blob by copying it out of the store that holds it.
type peers struct {
	stores []blobstore.Store
	forged []blobstore.Record
}

type member struct {
	p    *peers
	self blobstore.Store
}

func (m member) Records(modelID, profileID string) []blobstore.Record {
	var out []blobstore.Record
	for _, s := range m.p.stores {
		if s == m.self {
			continue
		}
		recs, _ := s.Records(context.Background(), modelID, profileID)
		out = append(out, recs...)
	}
	for _, r := range m.p.forged {
		if (modelID == "" || r.ModelID == modelID) && (profileID == "" || r.ProfileID == profileID) {
			out = append(out, r)
		}
	}
	return out
}

func (m member) Fetch(ctx context.Context, c cid.Cid, _ func(done, total int64)) error {
	for _, s := range m.p.stores {
		if ok, _ := s.Has(ctx, c); !ok || s == m.self {
			continue
		}
		rd, err := s.Open(ctx, c)
		if err != nil {
			return err
		}
		defer rd.Close()
		_, err = m.self.Put(ctx, rd)
		return err
	}
	return blobstore.ErrNotFound
}

// Publish indexes the record locally, as the p2p node does.
func (m member) Publish(ctx context.Context, r blobstore.Record) error {
	return m.self.AddRecord(ctx, r)
}

func (member) Coordinate(context.Context, compile.FlightKey, func(context.Context) (cid.Cid, error), func() (cid.Cid, bool)) (string, error) {
	return "", errors.New("no single flight here")
}

type host struct {
	ag    *agent.Agent
	store blobstore.Store
	dir   string
	state string
}

func newHost(t *testing.T, p *peers, fp compat.Fingerprint, name string) *host {
	t.Helper()
	s, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	p.stores = append(p.stores, s)
	ag, err := agent.New(agent.Options{Store: s, Host: fp, Producer: name, WorkDir: t.TempDir(), Fleet: member{p: p, self: s}})
	if err != nil {
		t.Fatal(err)
	}
	return &host{ag: ag, store: s, dir: t.TempDir(), state: t.TempDir()}
}

func (h *host) sharer(t *testing.T, build string, maxSize int64) *share.Sharer {
	t.Helper()
	s, err := share.New(share.Options{
		Dirs:  []share.Dir{{Path: h.dir, Mode: 0o440, Build: build}},
		Agent: h.ag, StateDir: h.state, MaxEntrySize: maxSize, Settle: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// passes runs n passes a settle time apart (a stable entry needs two looks).
func passes(ctx context.Context, n int, ss ...*share.Sharer) {
	for i := 0; i < n; i++ {
		for _, s := range ss {
			s.PassAll(ctx)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func entry(build string, seed byte) []byte {
	return ovcachetest.Entry(ovcache.Header{Build: build, FileInfo: "42", RuntimeInfo: "<rt_info/>", Alignment: 4096}, false,
		ovcachetest.Blob(ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4), 3<<20+17, seed))
}

func TestHarvestPopulateReject(t *testing.T) {
	ctx := context.Background()
	p := &peers{}
	a, b, c := newHost(t, p, lnl(), "A"), newHost(t, p, lnl(), "B"), newHost(t, p, lnl(), "C")
	other := lnl()
	other.Arch = "3720"
	d := newHost(t, p, other, "D")
	sa, sb, sc, sd := a.sharer(t, "", 0), b.sharer(t, ovcachetest.Build, 0), c.sharer(t, ovcachetest.Build, 0), d.sharer(t, ovcachetest.Build, 0)
	se := newHost(t, p, lnl(), "E").sharer(t, "2026.1.0-other-build", 0)

	// C's application already wrote its own entry under the name: it is never overwritten.
	data := entry(ovcachetest.Build, 1)
	own := entry(ovcachetest.Build, 2)
	if err := os.WriteFile(filepath.Join(c.dir, "1234.blob"), own, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "1234.blob"), data, 0o400); err != nil {
		t.Fatal(err)
	}
	passes(ctx, 3, sa, sb, sc, sd, se)

	recs, err := a.store.Records(ctx, "1234.blob", "")
	if err != nil || len(recs) != 1 || recs[0].Kind != ovcache.RecordKind {
		t.Fatalf("A's records: %v %v", recs, err)
	}
	key, _ := b.ag.CacheKey(ovcachetest.Build)
	if recs[0].ProfileID != key {
		t.Errorf("record key %s, B's key %s", recs[0].ProfileID, key)
	}
	got, err := os.ReadFile(filepath.Join(b.dir, "1234.blob"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B's entry: %d bytes, %v", len(got), err)
	}
	if fi, _ := os.Stat(filepath.Join(b.dir, "1234.blob")); fi.Mode().Perm() != 0o440 {
		t.Errorf("B's entry mode %v", fi.Mode())
	}
	if hit, err := ovcachetest.Load(filepath.Join(b.dir, "1234.blob"), ovcachetest.Build); !hit || err != nil {
		t.Errorf("B's application: hit %v, %v", hit, err)
	}
	if got, _ := os.ReadFile(filepath.Join(c.dir, "1234.blob")); !bytes.Equal(got, own) {
		t.Error("C's own entry was overwritten")
	}
	for _, h := range []*host{d} {
		if _, err := os.Lstat(filepath.Join(h.dir, "1234.blob")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("host of another NPU got the entry: %v", err)
		}
	}
	if names, _ := os.ReadDir(b.dir); len(names) != 1 {
		t.Errorf("B's dir holds %d files (temporary files left?)", len(names))
	}

	// B's application cannot use it (another build, say): it removes the entry; B never writes it again, even
	// after a restart of the sharer.
	if hit, _ := ovcachetest.Load(filepath.Join(b.dir, "1234.blob"), "another build"); hit {
		t.Fatal("stand-in loaded an entry of another build")
	}
	passes(ctx, 3, sb)
	sb2 := b.sharer(t, ovcachetest.Build, 0)
	passes(ctx, 3, sb, sb2)
	if _, err := os.Lstat(filepath.Join(b.dir, "1234.blob")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rejected entry was written again: %v", err)
	}
	neg, _ := b.store.Records(ctx, "1234.blob", key)
	if !hasKind(neg, ovcache.RejectedKind) {
		t.Errorf("no negative record on B: %v", neg)
	}
}

func hasKind(recs []blobstore.Record, kind string) bool {
	for _, r := range recs {
		if r.Kind == kind {
			return true
		}
	}
	return false
}

func TestHostileDirectory(t *testing.T) {
	ctx := context.Background()
	p := &peers{}
	a, b := newHost(t, p, lnl(), "A"), newHost(t, p, lnl(), "B")
	sa := a.sharer(t, ovcachetest.Build, 8<<20)
	sb := b.sharer(t, ovcachetest.Build, 8<<20)
	outside := filepath.Join(t.TempDir(), "secret.blob")
	if err := os.WriteFile(outside, entry(ovcachetest.Build, 3), 0o600); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(outside, filepath.Join(a.dir, "1.blob")))
	must(syscall.Mkfifo(filepath.Join(a.dir, "2.blob"), 0o600))
	must(os.WriteFile(filepath.Join(a.dir, "3.blob"), []byte("<compiled_blob ie_version=\"x\"/>\nnot a blob"), 0o600))
	big := append(entry(ovcachetest.Build, 4), make([]byte, 8<<20)...)
	must(os.WriteFile(filepath.Join(a.dir, "4.blob"), big, 0o600))
	must(os.WriteFile(filepath.Join(a.dir, "5.blob.tmp"), entry(ovcachetest.Build, 5), 0o600))
	must(os.WriteFile(filepath.Join(a.dir, "6.blob"), entry("2025.4.0-1-other", 6), 0o600))
	must(os.Mkdir(filepath.Join(a.dir, "7.blob"), 0o700))
	// Weightless (CACHE_MODE=OPTIMIZE_SIZE): never shared, whoever offers it (design 10.2).
	wl := ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4)
	wl.Metadata.Minor, wl.InitSizes = 4, []uint64{4096}
	weightless := ovcachetest.Entry(ovcache.Header{Build: ovcachetest.Build, FileInfo: "0", Alignment: 4096}, false, ovcachetest.Blob(wl, 5000, 7))
	must(os.WriteFile(filepath.Join(a.dir, "8.blob"), weightless, 0o600))
	done := make(chan struct{})
	go func() { passes(ctx, 4, sa); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("a pass hangs (FIFO opened blocking?)")
	}
	if recs, _ := a.store.Records(ctx, "", ""); len(recs) != 0 {
		t.Errorf("harvested from a hostile directory: %+v", recs)
	}
	if list, _ := a.store.List(ctx); len(list) != 0 {
		t.Errorf("the store keeps %d blobs of rejected entries", len(list))
	}

	// Peers announce entries under hostile names, and an entry for a key it does not match.
	key, _ := b.ag.CacheKey(ovcachetest.Build)
	good := entry(ovcachetest.Build, 8)
	m, err := a.store.Put(ctx, bytes.NewReader(entry("2026.1.0-not-this-build", 9)))
	must(err)
	mg, err := a.store.Put(ctx, bytes.NewReader(good))
	must(err)
	fp, _ := lnl().Canonical()
	now := time.Now()
	for _, name := range []string{"../escape.blob", "/tmp/x.blob", "a/1.blob", ".hidden.blob"} {
		p.forged = append(p.forged, blobstore.Record{ModelID: name, ProfileID: key, Blob: mg.CID(), Fingerprint: fp,
			Size: uint64(len(good)), Created: now, Producer: "X", Kind: ovcache.RecordKind})
	}
	p.forged = append(p.forged, blobstore.Record{ModelID: "77.blob", ProfileID: key, Blob: m.CID(), Fingerprint: fp,
		Created: now, Producer: "X", Kind: ovcache.RecordKind})
	mw, err := a.store.Put(ctx, bytes.NewReader(weightless))
	must(err)
	p.forged = append(p.forged, blobstore.Record{ModelID: "78.blob", ProfileID: key, Blob: mw.CID(), Fingerprint: fp,
		Created: now, Producer: "X", Kind: ovcache.RecordKind})
	passes(ctx, 3, sb)
	names, _ := os.ReadDir(b.dir)
	if len(names) != 0 {
		t.Errorf("B wrote %v", names)
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(b.dir), "escape.blob")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a name escaped the cache directory")
	}
	if ok, _ := b.store.Has(ctx, m.CID()); ok {
		t.Error("B keeps the blob of an entry that failed its checks")
	}
}
