// Package storetest is the conformance suite every blobstore.Store implementation passes.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

const cs = blobstore.ChunkSize

// Data returns n deterministic pseudo-random bytes; different seeds give different chunks.
func Data(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// Run runs the suite; open returns a new, empty store that the suite closes.
func Run(t *testing.T, open func(t *testing.T) blobstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s blobstore.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"NotFound", testNotFound},
		{"PutChunkWrongHash", testPutChunkWrongHash},
		{"ManifestTampering", testManifestTampering},
		{"InterruptedPut", testInterruptedPut},
		{"ConcurrentPutsSameBlob", testConcurrentPuts},
		{"PartialCommit", testPartialCommit},
		{"PutCompletesPartial", testPutCompletesPartial},
		{"Records", testRecords},
		{"Pins", testPins},
		{"GCOrder", testGCOrder},
		{"DeleteKeepsSharedChunks", testDeleteShared},
		{"Export", testExport},
		{"Verify", testVerify},
		{"ReaderPartialReads", testReaderPartialReads},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

func put(t *testing.T, s blobstore.Store, data []byte) *blobstore.Manifest {
	t.Helper()
	m, err := s.Put(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Put %d bytes: %v", len(data), err)
	}
	return m
}

// manifestOf computes the manifest of data independently of any store.
func manifestOf(data []byte) *blobstore.Manifest {
	m := &blobstore.Manifest{Size: uint64(len(data)), ChunkSize: cs, SHA256: sha256.Sum256(data)}
	for off := 0; off < len(data); off += cs {
		m.Chunks = append(m.Chunks, sha256.Sum256(data[off:min(off+cs, len(data))]))
	}
	return m
}

func readAll(t *testing.T, s blobstore.Store, c cid.Cid) []byte {
	t.Helper()
	r, err := s.Open(context.Background(), c)
	if err != nil {
		t.Fatalf("Open %s: %v", c, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", c, err)
	}
	return b
}

func testRoundTrip(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	for i, size := range []int{0, 1, cs - 1, cs, cs + 1, 5*cs + 3} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := Data(uint64(100+i), size)
			m := put(t, s, data)
			want := manifestOf(data)
			if !bytes.Equal(m.Encode(), want.Encode()) {
				t.Fatalf("manifest differs from an independent computation")
			}
			c := m.CID()
			if ok, err := s.Has(ctx, c); !ok || err != nil {
				t.Fatalf("Has = %v, %v", ok, err)
			}
			info, err := s.Stat(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if !info.CID.Equals(c) || info.Size != uint64(size) || !info.Complete || info.Chunks != len(m.Chunks) ||
				info.HaveChunks != len(m.Chunks) || info.SHA256 != fmt.Sprintf("%x", sha256.Sum256(data)) {
				t.Fatalf("Stat = %+v", info)
			}
			if got := readAll(t, s, c); !bytes.Equal(got, data) {
				t.Fatalf("Read returned %d bytes differing from the %d put", len(got), size)
			}
			r, err := s.Open(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if r.Size() != uint64(size) {
				t.Fatalf("Reader.Size = %d", r.Size())
			}
			var buf bytes.Buffer
			if n, err := r.WriteTo(&buf); err != nil || n != int64(size) || !bytes.Equal(buf.Bytes(), data) {
				t.Fatalf("WriteTo = %d, %v (equal %v)", n, err, bytes.Equal(buf.Bytes(), data))
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			for i := range m.Chunks {
				for name, read := range map[string]func(context.Context, cid.Cid, int, []byte) ([]byte, error){
					"ReadChunk": s.ReadChunk, "ServeChunk": s.ServeChunk,
				} {
					got, err := read(ctx, c, i, []byte("prefix"))
					if err != nil {
						t.Fatalf("%s %d: %v", name, i, err)
					}
					if !bytes.Equal(got[6:], data[m.ChunkOffset(i):m.ChunkOffset(i)+uint64(m.ChunkLen(i))]) || string(got[:6]) != "prefix" {
						t.Fatalf("%s %d returned wrong bytes", name, i)
					}
				}
			}
			have, err := s.HaveChunks(ctx, c)
			if err != nil || len(have) != len(m.Chunks) || slices.Contains(have, false) {
				t.Fatalf("HaveChunks = %v, %v", have, err)
			}
			got, err := s.Manifest(ctx, c)
			if err != nil || !bytes.Equal(got.Encode(), m.Encode()) {
				t.Fatalf("Manifest = %v, %v", got, err)
			}
			// Putting the same bytes again yields the same blob.
			if again := put(t, s, data); !again.CID().Equals(c) {
				t.Fatalf("second put gave %s, first %s", again.CID(), c)
			}
		})
	}
}

func testNotFound(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	absent := manifestOf([]byte("never stored")).CID()
	foreign := cid.NewCidV1(cid.DagProtobuf, absent.Hash())
	for _, c := range []cid.Cid{absent, foreign} {
		if ok, err := s.Has(ctx, c); ok || err != nil {
			t.Errorf("Has(%s) = %v, %v", c, ok, err)
		}
		checks := map[string]error{}
		_, checks["Open"] = s.Open(ctx, c)
		_, checks["Stat"] = s.Stat(ctx, c)
		_, checks["Manifest"] = s.Manifest(ctx, c)
		_, checks["HaveChunks"] = s.HaveChunks(ctx, c)
		_, checks["ReadChunk"] = s.ReadChunk(ctx, c, 0, nil)
		_, checks["ServeChunk"] = s.ServeChunk(ctx, c, 0, nil)
		checks["PutChunk"] = s.PutChunk(ctx, c, 0, []byte("x"))
		checks["Commit"] = s.Commit(ctx, c)
		checks["Delete"] = s.Delete(ctx, c)
		checks["Pin"] = s.Pin(ctx, c, true)
		checks["Touch"] = s.Touch(ctx, c)
		path := filepath.Join(t.TempDir(), "out.blob")
		checks["Export"] = s.Export(ctx, c, path)
		for name, err := range checks {
			if !errors.Is(err, blobstore.ErrNotFound) {
				t.Errorf("%s(%s) = %v, want ErrNotFound", name, c, err)
			}
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed Export left %s: %v", path, err)
		}
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("List of an empty store = %v, %v", list, err)
	}
}

func testPutChunkWrongHash(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	data := Data(1, 2*cs+10)
	m := manifestOf(data)
	c := m.CID()
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(data[:cs])
	bad[cs/2] ^= 1
	tests := []struct {
		name string
		i    int
		data []byte
	}{
		{"flipped bit", 0, bad},
		{"other chunk's bytes", 1, data[:cs]},
		{"short", 0, data[:cs-1]},
		{"long", 2, data[2*cs-1:]},
		{"empty", 2, nil},
		{"index past end", 3, data[2*cs:]},
		{"negative index", -1, data[:cs]},
	}
	for _, tt := range tests {
		if err := s.PutChunk(ctx, c, tt.i, tt.data); !errors.Is(err, blobstore.ErrInvalidData) {
			t.Errorf("%s: PutChunk = %v, want ErrInvalidData", tt.name, err)
		}
	}
	have, err := s.HaveChunks(ctx, c)
	if err != nil || slices.Contains(have, true) {
		t.Fatalf("after rejected chunks HaveChunks = %v, %v", have, err)
	}
	if _, err := s.ReadChunk(ctx, c, 0, nil); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("ReadChunk of an absent chunk of a partial blob = %v, want ErrNotFound", err)
	}
	if _, err := s.ServeChunk(ctx, c, 0, nil); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("ServeChunk of an absent chunk of a partial blob = %v, want ErrNotFound", err)
	}
}

func testManifestTampering(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	data := Data(2, cs+100)
	// The whole-blob sha256 is the producer's claim: the CID fixes the manifest and the manifest every chunk, so
	// a false claim lets no other bytes in. Commit does not re-hash the blob; Verify reports the claim, and a
	// Put of the true bytes is another blob (docs/design.md 9.2, 9.3).
	t.Run("wrong whole sha256", func(t *testing.T) {
		m := manifestOf(data)
		m.SHA256[0] ^= 1
		if err := s.BeginPartial(ctx, m); err != nil {
			t.Fatal(err)
		}
		c := m.CID()
		for i := range m.Chunks {
			if err := s.PutChunk(ctx, c, i, data[m.ChunkOffset(i):m.ChunkOffset(i)+uint64(m.ChunkLen(i))]); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Commit(ctx, c); err != nil {
			t.Fatalf("Commit = %v", err)
		}
		if got := readAll(t, s, c); !bytes.Equal(got, data) {
			t.Fatal("blob with a false whole-blob claim reads back other bytes than its chunks")
		}
		info, err := s.Stat(ctx, c)
		if err != nil || info.SHA256 != fmt.Sprintf("%x", m.SHA256) {
			t.Fatalf("Stat = %+v, %v; want the manifest's claim %x", info, err, m.SHA256)
		}
		honest := put(t, s, data)
		if honest.CID() == c || honest.SHA256 != sha256.Sum256(data) {
			t.Fatalf("Put of the same bytes = %s (sha256 %x), want another blob with the true sha256", honest.CID(), honest.SHA256)
		}
		rep, err := s.Verify(ctx)
		if err != nil || len(rep.Corrupt) != 0 || !slices.Equal(rep.WrongSHA256, []cid.Cid{c}) {
			t.Fatalf("Verify = %+v, %v; want only %s reported with a wrong sha256", rep, err, c)
		}
	})
	t.Run("wrong chunk digest", func(t *testing.T) {
		m := manifestOf(data)
		m.Chunks[1][5] ^= 1
		if err := s.BeginPartial(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := s.PutChunk(ctx, m.CID(), 1, data[cs:]); !errors.Is(err, blobstore.ErrInvalidData) {
			t.Fatalf("PutChunk of the true bytes against a tampered digest = %v", err)
		}
	})
	t.Run("invalid manifest", func(t *testing.T) {
		m := manifestOf(data)
		m.Chunks = m.Chunks[:1]
		if err := s.BeginPartial(ctx, m); !errors.Is(err, blobstore.ErrInvalidManifest) {
			t.Fatalf("BeginPartial of an invalid manifest = %v", err)
		}
	})
}

// failingReader returns data, then err instead of EOF, or calls hook once it has returned n bytes.
type failingReader struct {
	data []byte
	n    int
	err  error
	hook func()
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		if r.hook != nil {
			r.hook()
			r.hook = nil
		}
		if r.err != nil {
			return 0, r.err
		}
	} else if len(p) > r.n {
		p = p[:r.n]
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := copy(p, r.data)
	r.data, r.n = r.data[k:], r.n-k
	return k, nil
}

func testInterruptedPut(t *testing.T, s blobstore.Store) {
	data := Data(3, 4*cs+7)
	boom := errors.New("boom")
	tests := []struct {
		name string
		put  func() error
		want error
	}{
		{"reader error", func() error {
			_, err := s.Put(context.Background(), &failingReader{data: data, n: 2*cs + cs/2, err: boom})
			return err
		}, boom},
		{"cancelled context", func() error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := s.Put(ctx, &failingReader{data: data, n: 2*cs + cs/2, hook: cancel})
			return err
		}, context.Canceled},
		{"cancelled before", func() error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := s.Put(ctx, bytes.NewReader(data))
			return err
		}, context.Canceled},
	}
	for _, tt := range tests {
		if err := tt.put(); !errors.Is(err, tt.want) {
			t.Fatalf("%s: Put = %v, want %v", tt.name, err, tt.want)
		}
		list, err := s.List(context.Background())
		if err != nil || len(list) != 0 {
			t.Fatalf("%s: after an interrupted put List = %+v, %v", tt.name, list, err)
		}
		if ok, _ := s.Has(context.Background(), manifestOf(data).CID()); ok {
			t.Fatalf("%s: interrupted blob is visible", tt.name)
		}
	}
	m := put(t, s, data)
	if got := readAll(t, s, m.CID()); !bytes.Equal(got, data) {
		t.Fatal("put after interrupted puts reads back wrong")
	}
}

func testConcurrentPuts(t *testing.T, s blobstore.Store) {
	data := Data(4, 3*cs+1)
	want := manifestOf(data).CID()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			m, err := s.Put(context.Background(), bytes.NewReader(data))
			if err == nil && !m.CID().Equals(want) {
				err = fmt.Errorf("CID %s, want %s", m.CID(), want)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := readAll(t, s, want); !bytes.Equal(got, data) {
		t.Fatal("blob of concurrent puts reads back wrong")
	}
	rep, err := s.Verify(context.Background())
	if err != nil || len(rep.Corrupt) != 0 {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
}

func testPartialCommit(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	data := Data(5, 3*cs+5)
	m := manifestOf(data)
	c := m.CID()
	for range 2 { // idempotent
		if err := s.BeginPartial(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	info, err := s.Stat(ctx, c)
	if err != nil || info.Complete || info.HaveChunks != 0 || info.Chunks != 4 || info.Size != m.Size {
		t.Fatalf("Stat of a new partial = %+v, %v", info, err)
	}
	if ok, _ := s.Has(ctx, c); ok {
		t.Fatal("partial blob reported by Has")
	}
	if _, err := s.Open(ctx, c); !errors.Is(err, blobstore.ErrIncomplete) {
		t.Fatalf("Open of a partial = %v, want ErrIncomplete", err)
	}
	if err := s.AddRecord(ctx, blobstore.Record{ModelID: "m", ProfileID: "p", Blob: c, Fingerprint: []byte("{}")}); !errors.Is(err, blobstore.ErrIncomplete) {
		t.Fatalf("AddRecord of a partial = %v, want ErrIncomplete", err)
	}
	chunk := func(i int) []byte { return data[m.ChunkOffset(i) : m.ChunkOffset(i)+uint64(m.ChunkLen(i))] }
	for i := len(m.Chunks) - 1; i >= 1; i-- {
		if err := s.PutChunk(ctx, c, i, chunk(i)); err != nil {
			t.Fatalf("PutChunk %d: %v", i, err)
		}
	}
	if err := s.PutChunk(ctx, c, 2, chunk(2)); err != nil { // again: harmless
		t.Fatal(err)
	}
	have, err := s.HaveChunks(ctx, c)
	if err != nil || !slices.Equal(have, []bool{false, true, true, true}) {
		t.Fatalf("HaveChunks = %v, %v", have, err)
	}
	if got, err := s.ReadChunk(ctx, c, 3, nil); err != nil || !bytes.Equal(got, chunk(3)) {
		t.Fatalf("ReadChunk of a partial blob's chunk = %v", err)
	}
	if got, err := s.ServeChunk(ctx, c, 1, nil); err != nil || !bytes.Equal(got, chunk(1)) {
		t.Fatalf("ServeChunk of a partial blob's chunk = %v", err)
	}
	if err := s.Commit(ctx, c); !errors.Is(err, blobstore.ErrIncomplete) {
		t.Fatalf("Commit with a chunk missing = %v, want ErrIncomplete", err)
	}
	if err := s.PutChunk(ctx, c, 0, chunk(0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, c); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := s.Commit(ctx, c); err != nil {
		t.Fatalf("second Commit: %v", err)
	}
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatalf("BeginPartial of a complete blob: %v", err)
	}
	if ok, _ := s.Has(ctx, c); !ok {
		t.Fatal("committed blob not visible")
	}
	if got := readAll(t, s, c); !bytes.Equal(got, data) {
		t.Fatal("committed blob reads back wrong")
	}
	if info, err := s.Stat(ctx, c); err != nil || !info.Complete || info.HaveChunks != 4 {
		t.Fatalf("Stat after commit = %+v, %v", info, err)
	}
}

func testPutCompletesPartial(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	data := Data(6, 2*cs)
	m := manifestOf(data)
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	put(t, s, data)
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || !list[0].Complete {
		t.Fatalf("List after put over a partial = %+v, %v", list, err)
	}
}

func testRecords(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	a := put(t, s, Data(7, 10)).CID()
	b := put(t, s, Data(8, 20)).CID()
	rec := func(model, profile string, blob cid.Cid, fp string) blobstore.Record {
		return blobstore.Record{
			ModelID: model, ProfileID: profile, Blob: blob, Fingerprint: []byte(fp),
			CompileTime: time.Second, Created: time.Unix(1700000000, 0).UTC(), Producer: "peer", Kind: "npu",
		}
	}
	recs := []blobstore.Record{
		rec("m1", "p1", a, `{"driver":"1"}`),
		rec("m1", "p1", b, `{"driver":"2"}`),
		rec("m1", "p1", a, `{"driver":"3"}`), // same blob, another host
		rec("m1", "p2", a, "{ \"spaced\" : [1, 2] }\n"),
		rec("m2", "p1", b, `{}`),
	}
	for _, r := range recs {
		if err := s.AddRecord(ctx, r); err != nil {
			t.Fatalf("AddRecord %+v: %v", r, err)
		}
	}
	if err := s.AddRecord(ctx, recs[0]); err != nil { // again: replaces
		t.Fatal(err)
	}
	bad := []struct {
		name string
		r    blobstore.Record
		want error
	}{
		{"absent blob", rec("m1", "p1", manifestOf([]byte("absent")).CID(), `{}`), blobstore.ErrNotFound},
		{"empty model", rec("", "p1", a, `{}`), nil},
		{"empty profile", rec("m1", "", a, `{}`), nil},
		{"bad fingerprint", rec("m1", "p1", a, `{`), nil},
		{"wrong size", func() blobstore.Record { r := rec("m1", "p1", a, `{}`); r.Size = 11; return r }(), nil},
	}
	for _, tt := range bad {
		err := s.AddRecord(ctx, tt.r)
		if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
			t.Errorf("AddRecord %s = %v", tt.name, err)
		}
	}
	count := func(model, profile string) int {
		t.Helper()
		got, err := s.Records(ctx, model, profile)
		if err != nil {
			t.Fatalf("Records(%q, %q): %v", model, profile, err)
		}
		for _, r := range got {
			if (model != "" && r.ModelID != model) || (profile != "" && r.ProfileID != profile) {
				t.Fatalf("Records(%q, %q) returned %+v", model, profile, r)
			}
			if r.Size == 0 || r.Created.IsZero() || r.Producer != "peer" || r.CompileTime != time.Second {
				t.Fatalf("record fields lost: %+v", r)
			}
		}
		return len(got)
	}
	for _, q := range []struct {
		model, profile string
		want           int
	}{
		{"m1", "p1", 3}, {"m1", "p2", 1}, {"m1", "", 4}, {"", "p1", 4}, {"", "", 5}, {"m3", "", 0}, {"m1", "p3", 0},
	} {
		if got := count(q.model, q.profile); got != q.want {
			t.Errorf("Records(%q, %q): %d records, want %d", q.model, q.profile, got, q.want)
		}
	}
	if err := s.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := count("", ""); got != 2 {
		t.Errorf("after deleting a blob %d records remain, want 2", got)
	}
}

func testPins(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	m := put(t, s, Data(9, cs))
	c := m.CID()
	if err := s.Pin(ctx, c, true); err != nil {
		t.Fatal(err)
	}
	if info, _ := s.Stat(ctx, c); !info.Pinned {
		t.Fatal("Stat does not show the pin")
	}
	if err := s.Delete(ctx, c); !errors.Is(err, blobstore.ErrPinned) {
		t.Fatalf("Delete of a pinned blob = %v, want ErrPinned", err)
	}
	res, err := s.GC(ctx, 0, nil)
	if err != nil || len(res.Removed) != 0 || res.SizeAfter != uint64(cs) {
		t.Fatalf("GC(0) with a pinned blob = %+v, %v", res, err)
	}
	if err := s.Pin(ctx, c, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, c); err != nil {
		t.Fatalf("Delete after unpin: %v", err)
	}
	if ok, _ := s.Has(ctx, c); ok {
		t.Fatal("deleted blob still there")
	}
	if _, err := s.Open(ctx, c); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open of a deleted blob = %v", err)
	}
}

func testGCOrder(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	var ids []cid.Cid
	for i := range 4 {
		ids = append(ids, put(t, s, Data(uint64(20+i), cs)).CID())
	}
	// Access order, oldest first: 1, 2, 3, 0. 2 is pinned, 3 kept by the callback.
	for _, c := range []cid.Cid{ids[1], ids[2], ids[3], ids[0]} {
		time.Sleep(2 * time.Millisecond) // distinct access times on coarse clocks
		if err := s.Touch(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Pin(ctx, ids[2], true); err != nil {
		t.Fatal(err)
	}
	keep := func(c cid.Cid) bool {
		_, _ = s.Stat(ctx, c) // keep may use the store
		return c.Equals(ids[3])
	}

	res, err := s.GC(ctx, 4*cs, keep)
	if err != nil || len(res.Removed) != 0 || res.SizeAfter != 4*cs {
		t.Fatalf("GC under quota = %+v, %v", res, err)
	}
	res, err = s.GC(ctx, 3*cs, keep)
	if err != nil || len(res.Removed) != 1 || !res.Removed[0].Equals(ids[1]) || res.FreedBytes != cs || res.SizeAfter != 3*cs {
		t.Fatalf("GC to 3 chunks = %+v, %v; want %s removed", res, err, ids[1])
	}
	res, err = s.GC(ctx, 0, keep)
	if err != nil || len(res.Removed) != 1 || !res.Removed[0].Equals(ids[0]) || res.SizeAfter != 2*cs {
		t.Fatalf("GC to 0 = %+v, %v; want only %s removed", res, err, ids[0])
	}
	for _, c := range ids[2:] {
		if got := readAll(t, s, c); len(got) != cs {
			t.Fatalf("protected blob %s damaged", c)
		}
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("List after GC = %+v, %v", list, err)
	}
}

func testDeleteShared(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	shared := Data(30, cs)
	x := append(bytes.Clone(shared), Data(31, 100)...)
	y := append(bytes.Clone(shared), Data(32, 200)...)
	mx, my := put(t, s, x), put(t, s, y)
	if err := s.Delete(ctx, mx.CID()); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s, my.CID()); !bytes.Equal(got, y) {
		t.Fatal("deleting a blob damaged another sharing a chunk")
	}
	if _, err := s.GC(ctx, 1<<40, nil); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Verify(ctx)
	if err != nil || len(rep.Corrupt) != 0 || rep.Blobs != 1 {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
}

func testExport(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	data := Data(40, 2*cs+17)
	c := put(t, s, data).CID()
	dir := t.TempDir()
	path := filepath.Join(dir, "model.blob")
	if err := os.WriteFile(path, []byte("old contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // over an existing file, then over its own export
		if err := s.Export(ctx, c, path); err != nil {
			t.Fatalf("Export: %v", err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("exported file differs (%d bytes, %v)", len(got), err)
	}
	info, err := s.Stat(ctx, c)
	if err != nil || fmt.Sprintf("%x", sha256.Sum256(got)) != info.SHA256 {
		t.Fatalf("sha256 of the export does not match Stat: %v", err)
	}
	if err := s.Export(ctx, c, filepath.Join(dir, "missing", "x.blob")); err == nil {
		t.Fatal("Export into a missing directory succeeded")
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("export left files behind: %v, %v", entries, err)
	}
}

func testVerify(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	put(t, s, Data(50, 3*cs))
	data := Data(51, cs+1)
	m := manifestOf(data)
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := s.PutChunk(ctx, m.CID(), 1, data[cs:]); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Blobs != 2 || rep.Chunks != 4 || rep.Bytes != 3*cs+1 || len(rep.Corrupt) != 0 {
		t.Fatalf("Verify = %+v, want 2 blobs, 4 chunks, %d bytes, nothing corrupt", rep, 3*cs+1)
	}
}

func testReaderPartialReads(t *testing.T, s blobstore.Store) {
	data := Data(60, 3*cs+11)
	c := put(t, s, data).CID()
	r, err := s.Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Odd-sized reads across chunk boundaries, then WriteTo for the rest.
	head := make([]byte, cs+cs/3)
	if _, err := io.ReadFull(r, head[:777]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, head[777:]); err != nil {
		t.Fatal(err)
	}
	var rest bytes.Buffer
	if _, err := r.WriteTo(&rest); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(head, rest.Bytes()...), data) {
		t.Fatal("mixed Read and WriteTo returned wrong bytes")
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read at end = %d, %v", n, err)
	}
}
