package badgerstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"
	"go.uber.org/goleak"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/storetest"
	"github.com/npu-agent/npu-agent/internal/faults"
)

const cs = blobstore.ChunkSize

func TestMain(m *testing.M) {
	faults.RunChild(map[string]faults.Helper{"put": childPut, "fetch": childFetch, "fill": childFill, "unsynced": childUnsynced})
	goleak.VerifyTestMain(m)
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

func testOptions(t testing.TB) Options {
	return Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
}

func open(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open %s: %v", dir, err)
	}
	return s
}

func closeStore(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) blobstore.Store { return open(t, t.TempDir(), testOptions(t)) })
}

func putData(t *testing.T, s *Store, data []byte) *blobstore.Manifest {
	t.Helper()
	m, err := s.Put(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return m
}

func readAll(s *Store, m *blobstore.Manifest) ([]byte, error) {
	r, err := s.Open(context.Background(), m.CID())
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func chunkOf(data []byte, m *blobstore.Manifest, i int) []byte {
	return data[m.ChunkOffset(i) : m.ChunkOffset(i)+uint64(m.ChunkLen(i))]
}

// manifestOf computes a manifest without a store.
func manifestOf(t *testing.T, data []byte) *blobstore.Manifest {
	t.Helper()
	s := open(t, t.TempDir(), testOptions(t))
	defer closeStore(t, s)
	return putData(t, s, data)
}

func TestReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	data := storetest.Data(1, 2*cs+9)
	partData := storetest.Data(2, 3*cs)
	part := manifestOf(t, partData)

	s := open(t, dir, testOptions(t))
	m := putData(t, s, data)
	if err := s.Pin(ctx, m.CID(), true); err != nil {
		t.Fatal(err)
	}
	rec := blobstore.Record{ModelID: "m", ProfileID: "p", Blob: m.CID(), Fingerprint: []byte(`{"a":1}`)}
	if err := s.AddRecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginPartial(ctx, part); err != nil {
		t.Fatal(err)
	}
	if err := s.PutChunk(ctx, part.CID(), 1, chunkOf(partData, part, 1)); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)

	s = open(t, dir, testOptions(t))
	defer closeStore(t, s)
	if got, err := readAll(s, m); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob after reopen: %v", err)
	}
	if info, err := s.Stat(ctx, m.CID()); err != nil || !info.Pinned || info.LastAccess.IsZero() {
		t.Fatalf("Stat after reopen = %+v, %v", info, err)
	}
	if recs, err := s.Records(ctx, "m", "p"); err != nil || len(recs) != 1 || !recs[0].Blob.Equals(m.CID()) {
		t.Fatalf("Records after reopen = %+v, %v", recs, err)
	}
	// Resume the fetch: BeginPartial again keeps chunk 1.
	if err := s.BeginPartial(ctx, part); err != nil {
		t.Fatal(err)
	}
	have, err := s.HaveChunks(ctx, part.CID())
	if err != nil || !slices.Equal(have, []bool{false, true, false}) {
		t.Fatalf("HaveChunks after reopen = %v, %v", have, err)
	}
	for _, i := range []int{0, 2} {
		if err := s.PutChunk(ctx, part.CID(), i, chunkOf(partData, part, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(ctx, part.CID()); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(s, part); err != nil || !bytes.Equal(got, partData) {
		t.Fatalf("resumed blob: %v", err)
	}
}

func TestLeftoverCleanup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir, testOptions(t))
	kept := putData(t, s, storetest.Data(3, cs+1))
	// What a crash leaves: a layout-1 chunk, a temporary file of an unfinished put, a blob file and chunk keys,
	// access, pin and record keys of a blob whose delete did not finish.
	orphan := [32]byte{1, 2, 3}
	gone := [32]byte{9}
	for _, f := range []string{filepath.Join(s.tmpDir, "put-123"), s.blobPath(gone), s.partialPath(gone)} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	recKey := recordKey(&blobstore.Record{ModelID: "m", ProfileID: "p", Fingerprint: []byte("{}")}, gone)
	err := s.db.Update(func(txn *badger.Txn) error {
		return errors.Join(
			txn.Set(key(prefixChunkV1, orphan), bytes.Repeat([]byte{1}, 4096)),
			txn.Set(haveKey(gone, 3), encodeCRC(7)),
			txn.Set(key(prefixAccess, gone), encodeTime(time.Now())),
			txn.Set(key(prefixPin, gone), nil),
			txn.Set(recKey, []byte("{}")),
		)
	})
	if err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)

	s = open(t, dir, testOptions(t))
	defer closeStore(t, s)
	err = s.db.View(func(txn *badger.Txn) error {
		for _, k := range [][]byte{key(prefixChunkV1, orphan), haveKey(gone, 3), key(prefixAccess, gone), key(prefixPin, gone), recKey} {
			if _, err := txn.Get(k); !errors.Is(err, badger.ErrKeyNotFound) {
				t.Errorf("leftover key %x survived Open: %v", k, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Verify(ctx)
	if err != nil || len(rep.Corrupt) != 0 || rep.Chunks != len(kept.Chunks) {
		t.Fatalf("Verify after cleanup = %+v, %v", rep, err)
	}
	if n := leftoverChunks(t, s); n != 0 {
		t.Fatalf("%d leftovers survived Open", n)
	}
}

// corrupt flips one byte of needle where it occurs in a file of the store in dir (the store must be closed):
// a blob's file, or badger's value log for a store of layout 1. It opens and closes the store first so that a
// value-log file is sealed: badger checks the last file at Open and truncates it at a bad entry (a torn write),
// while bit rot in a sealed file is left for the store to find.
func corrupt(t *testing.T, dir string, needle []byte) {
	t.Helper()
	closeStore(t, open(t, dir, testOptions(t)))
	found := false
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || found || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if i := bytes.Index(b, needle); i >= 0 {
			found = true
			b[i+len(needle)/2] ^= 0x40
			if err := os.Chmod(path, 0o600); err != nil {
				return err
			}
			return os.WriteFile(path, b, 0o600)
		}
		return nil
	})
	if err != nil || !found {
		t.Fatalf("bytes to corrupt not found: %v", err)
	}
}

// TestCorruptChunkDetected flips a byte of a stored chunk on disk; every read path finds it (ServeChunk by the
// store's checksum, the others by it or a re-hash) and quarantines the blob: no longer served or complete, its
// records kept, its damaged chunk dropped so that a fetch heals it (issue 10 item 11).
func TestCorruptChunkDetected(t *testing.T) {
	t.Parallel()
	data := storetest.Data(4, 3*cs)
	detectors := map[string]func(s *Store, m *blobstore.Manifest) error{
		"Open": func(s *Store, m *blobstore.Manifest) error { _, err := readAll(s, m); return err },
		"ReadChunk": func(s *Store, m *blobstore.Manifest) error {
			_, err := s.ReadChunk(context.Background(), m.CID(), 1, nil)
			return err
		},
		"ServeChunk": func(s *Store, m *blobstore.Manifest) error {
			_, err := s.ServeChunk(context.Background(), m.CID(), 1, nil)
			return err
		},
		"CheckBlob": func(s *Store, m *blobstore.Manifest) error { return s.CheckBlob(context.Background(), m.CID()) },
	}
	for name, detect := range detectors {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dir := t.TempDir()
			s := open(t, dir, testOptions(t))
			m := putData(t, s, data)
			rec := blobstore.Record{ModelID: "m", ProfileID: "p", Blob: m.CID(), Fingerprint: []byte("{}")}
			if err := s.AddRecord(ctx, rec); err != nil {
				t.Fatal(err)
			}
			closeStore(t, s)
			corrupt(t, dir, data[cs+1000:cs+1064]) // inside chunk 1

			s = open(t, dir, testOptions(t))
			defer closeStore(t, s)
			// A damaged chunk also breaks the whole-blob hash; that is damage, not a false claim.
			if rep, err := s.Verify(ctx); err != nil || len(rep.Corrupt) != 1 || rep.Corrupt[0].Index != 1 ||
				!rep.Corrupt[0].Chunk.Equals(blobstore.ChunkCID(m.Chunks[1])) || rep.Chunks != 3 || len(rep.WrongSHA256) != 0 {
				t.Fatalf("Verify = %+v, %v; want chunk 1 corrupt and no wrong sha256", rep, err)
			}
			if err := detect(s, m); !errors.Is(err, blobstore.ErrInvalidData) {
				t.Fatalf("%s of a corrupt blob = %v, want ErrInvalidData", name, err)
			}
			// Quarantined: not served, not complete, the damaged chunk dropped, the records kept.
			if ok, err := s.Has(ctx, m.CID()); ok || err != nil {
				t.Fatalf("Has after quarantine = %v, %v", ok, err)
			}
			if info, err := s.Stat(ctx, m.CID()); err != nil || info.Complete || info.HaveChunks != 2 {
				t.Fatalf("Stat after quarantine = %+v, %v", info, err)
			}
			if _, err := s.ServeChunk(ctx, m.CID(), 1, nil); !errors.Is(err, blobstore.ErrNotFound) {
				t.Fatalf("ServeChunk of the dropped chunk = %v, want ErrNotFound", err)
			}
			if got, err := s.ServeChunk(ctx, m.CID(), 2, nil); err != nil || !bytes.Equal(got, chunkOf(data, m, 2)) {
				t.Fatalf("ServeChunk of a good chunk = %v", err)
			}
			if _, err := s.Open(ctx, m.CID()); !errors.Is(err, blobstore.ErrIncomplete) {
				t.Fatalf("Open after quarantine = %v, want ErrIncomplete", err)
			}
			if recs, err := s.Records(ctx, "m", "p"); err != nil || len(recs) != 1 {
				t.Fatalf("records after quarantine = %v, %v; want kept", recs, err)
			}
			if rep, err := s.Verify(ctx); err != nil || len(rep.Corrupt) != 0 {
				t.Fatalf("Verify after quarantine = %+v, %v", rep, err)
			}
			// A fetch heals it: BeginPartial (resume), the missing chunk, Commit.
			if err := s.BeginPartial(ctx, m); err != nil {
				t.Fatal(err)
			}
			have, err := s.HaveChunks(ctx, m.CID())
			if err != nil || !slices.Equal(have, []bool{true, false, true}) {
				t.Fatalf("HaveChunks after quarantine = %v, %v", have, err)
			}
			if err := s.PutChunk(ctx, m.CID(), 1, chunkOf(data, m, 1)); err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(ctx, m.CID()); err != nil {
				t.Fatal(err)
			}
			if got, err := readAll(s, m); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("healed blob reads back wrong: %v", err)
			}
			if rep, err := s.Verify(ctx); err != nil || len(rep.Corrupt) != 0 {
				t.Fatalf("Verify after healing = %+v, %v", rep, err)
			}
		})
	}
}

// TestFetchOrders stores a partial blob's chunks in the orders a fetch may deliver them (repeated, concurrent):
// Commit must publish exactly the blob's bytes whatever the order.
func TestFetchOrders(t *testing.T) {
	t.Parallel()
	data := storetest.Data(7, 6*cs+100)
	m := manifestOf(t, data)
	tests := []struct {
		name    string
		order   []int
		workers int
	}{
		{"in order", []int{0, 1, 2, 3, 4, 5, 6}, 1},
		{"reverse", []int{6, 5, 4, 3, 2, 1, 0}, 1},
		{"first last", []int{1, 2, 3, 4, 5, 6, 0}, 1},
		{"gaps", []int{0, 2, 4, 6, 1, 3, 5}, 1},
		{"duplicates", []int{0, 0, 3, 1, 3, 2, 4, 5, 6, 6}, 1},
		{"concurrent", []int{3, 0, 5, 1, 6, 2, 4, 0, 1, 2, 3, 4, 5, 6}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := open(t, t.TempDir(), testOptions(t))
			defer closeStore(t, s)
			if err := s.BeginPartial(ctx, m); err != nil {
				t.Fatal(err)
			}
			next := make(chan int, len(tt.order))
			for _, i := range tt.order {
				next <- i
			}
			close(next)
			var wg sync.WaitGroup
			for range tt.workers {
				wg.Go(func() {
					for i := range next {
						if err := s.PutChunk(ctx, m.CID(), i, chunkOf(data, m, i)); err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			if err := s.Commit(ctx, m.CID()); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			if got, err := readAll(s, m); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, data))
			}
		})
	}
}

func TestPutChunkAfterDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	data := storetest.Data(8, 2*cs)
	m := manifestOf(t, data)
	s := open(t, t.TempDir(), testOptions(t))
	defer closeStore(t, s)
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := s.PutChunk(ctx, m.CID(), 0, chunkOf(data, m, 0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, m.CID()); err != nil {
		t.Fatal(err)
	}
	// The manifest is still cached; the chunk must not be written for a blob that is gone.
	if err := s.PutChunk(ctx, m.CID(), 1, chunkOf(data, m, 1)); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("PutChunk after Delete = %v, want ErrNotFound", err)
	}
	if n := leftoverChunks(t, s); n != 0 {
		t.Fatalf("%d chunk keys or files left after Delete, want none", n)
	}
}

// TestPutChunkSum: the digest a caller computed as the bytes arrived is checked against the manifest like
// PutChunk's own: another chunk's digest, or the right digest with other bytes' length, stores nothing.
func TestPutChunkSum(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	data := storetest.Data(9, 2*cs+5)
	m := manifestOf(t, data)
	s := open(t, t.TempDir(), testOptions(t))
	defer closeStore(t, s)
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		i    int
		data []byte
		sum  [32]byte
		want error
	}{
		{"another chunk's digest", 0, chunkOf(data, m, 0), m.Chunks[1], blobstore.ErrInvalidData},
		{"short bytes", 2, chunkOf(data, m, 2)[:4], m.Chunks[2], blobstore.ErrInvalidData},
		{"good", 1, chunkOf(data, m, 1), m.Chunks[1], nil},
	}
	for _, tt := range tests {
		if err := s.PutChunkSum(ctx, m.CID(), tt.i, tt.data, tt.sum); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
			t.Errorf("%s: PutChunkSum = %v, want %v", tt.name, err, tt.want)
		}
	}
	if have, err := s.HaveChunks(ctx, m.CID()); err != nil || !slices.Equal(have, []bool{false, true, false}) {
		t.Fatalf("HaveChunks = %v, %v; want only chunk 1", have, err)
	}
}

func TestCommitDropsCorruptChunk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	data := storetest.Data(5, 2*cs)
	m := manifestOf(t, data)
	s := open(t, dir, testOptions(t))
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	for i := range m.Chunks {
		if err := s.PutChunk(ctx, m.CID(), i, chunkOf(data, m, i)); err != nil {
			t.Fatal(err)
		}
	}
	closeStore(t, s)
	corrupt(t, dir, data[100:164])

	s = open(t, dir, testOptions(t))
	defer closeStore(t, s)
	if err := s.Commit(ctx, m.CID()); !errors.Is(err, blobstore.ErrInvalidData) {
		t.Fatalf("Commit with a corrupt chunk = %v", err)
	}
	have, err := s.HaveChunks(ctx, m.CID())
	if err != nil || !slices.Equal(have, []bool{false, true}) {
		t.Fatalf("HaveChunks after a failed commit = %v, %v; the corrupt chunk should be gone", have, err)
	}
	if err := s.PutChunk(ctx, m.CID(), 0, chunkOf(data, m, 0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, m.CID()); err != nil {
		t.Fatal(err)
	}
}

func TestNoSpace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	var mu sync.Mutex
	free := uint64(1 << 40)
	const guard = 70 << 20
	opts := testOptions(t)
	opts.ValueLogFileSize = 4 << 20
	opts.MinFreeSpace = guard
	opts.freeSpace = func(string) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		return free, nil
	}
	setFree := func(n uint64) { mu.Lock(); free = n; mu.Unlock() }
	s := open(t, dir, opts)
	kept := putData(t, s, storetest.Data(6, cs))
	setFree(guard + 512<<10) // not even one chunk fits

	data := storetest.Data(7, 8*cs)
	if _, err := s.Put(ctx, bytes.NewReader(data)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put on a full disk = %v, want ErrNoSpace", err)
	}
	m := manifestOf(t, data)
	if err := s.BeginPartial(ctx, m); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("BeginPartial of a blob that does not fit = %v", err)
	}
	small := storetest.Data(8, cs)
	sm := manifestOf(t, small)
	setFree(guard + 2<<20)
	if err := s.BeginPartial(ctx, sm); err != nil {
		t.Fatal(err)
	}
	setFree(guard)
	if err := s.PutChunk(ctx, sm.CID(), 0, small); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("PutChunk on a full disk = %v", err)
	}
	if list, err := s.List(ctx); err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v; want the kept blob and the partial", list, err)
	}
	closeStore(t, s)

	setFree(1 << 40)
	s = open(t, dir, opts)
	defer closeStore(t, s)
	rep, err := s.Verify(ctx)
	if err != nil || len(rep.Corrupt) != 0 || rep.Chunks != 1 {
		t.Fatalf("Verify after a full disk = %+v, %v", rep, err)
	}
	if got, err := readAll(s, kept); err != nil || len(got) != cs {
		t.Fatalf("kept blob: %v", err)
	}
	if got := putData(t, s, data); !got.CID().Equals(m.CID()) {
		t.Fatal("put after freeing space gave another blob")
	}
}

func TestMinFreeSpaceTooSmall(t *testing.T) {
	t.Parallel()
	opts := testOptions(t)
	opts.MinFreeSpace = 96 << 20 // gc on a full disk needs 64 MiB (half a 128 MiB value-log file) plus 64 MiB
	if s, err := Open(t.TempDir(), opts); err == nil || !strings.Contains(err.Error(), "gc needs") {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open with a guard gc cannot work within = %v", err)
	}
}

func TestGCReclaimsDisk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	opts := testOptions(t)
	opts.ValueLogFileSize = 4 << 20
	s := open(t, dir, opts)
	defer closeStore(t, s)
	var ms []*blobstore.Manifest
	for i := range 3 {
		ms = append(ms, putData(t, s, storetest.Data(uint64(10+i), 8*cs)))
	}
	before := allocated(t, dir)
	res, err := s.GC(ctx, 8*cs, nil)
	if err != nil || len(res.Removed) != 2 {
		t.Fatalf("GC = %+v, %v", res, err)
	}
	after := allocated(t, dir)
	t.Logf("blob files and value log: %d MiB before gc, %d MiB after", before>>20, after>>20)
	if after > before-16*cs {
		t.Fatalf("gc of 16 MiB freed only %d bytes of disk", before-after)
	}
	if got, err := readAll(s, ms[2]); err != nil || len(got) != 8*cs {
		t.Fatalf("surviving blob after value-log gc: %v", err)
	}
}

func TestTouchCoalesced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	opts := testOptions(t)
	opts.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	onDisk := func(s *Store, d [32]byte) time.Time {
		var at time.Time
		err := s.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(key(prefixAccess, d))
			if err != nil {
				return err
			}
			return item.Value(func(v []byte) error { at, err = decodeTime(v); return err })
		})
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	s := open(t, dir, opts)
	m := putData(t, s, []byte("hot blob"))
	d, _ := blobstore.Digest(m.CID())
	t0 := opts.now()
	advance(10 * time.Second)
	if err := s.Touch(ctx, m.CID()); err != nil {
		t.Fatal(err)
	}
	if got := onDisk(s, d); !got.Equal(t0) {
		t.Fatalf("a touch within a minute was written: %v", got)
	}
	if info, _ := s.Stat(ctx, m.CID()); !info.LastAccess.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("Stat LastAccess = %v, want the touch time", info.LastAccess)
	}
	advance(time.Minute)
	if err := s.Touch(ctx, m.CID()); err != nil {
		t.Fatal(err)
	}
	if got := onDisk(s, d); !got.Equal(t0.Add(70 * time.Second)) {
		t.Fatalf("a touch after a minute was not written: %v", got)
	}
	advance(time.Second)
	if _, err := s.ReadChunk(ctx, m.CID(), 0, nil); err != nil { // an access too
		t.Fatal(err)
	}
	closeStore(t, s) // flushes
	s = open(t, dir, opts)
	defer closeStore(t, s)
	if got := onDisk(s, d); !got.Equal(t0.Add(71 * time.Second)) {
		t.Fatalf("Close did not flush the last access: %v", got)
	}
}

func TestClosed(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), testOptions(t))
	m := putData(t, s, []byte("x"))
	r, err := s.Open(context.Background(), m.CID())
	if err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	closeStore(t, s) // idempotent
	if _, err := s.Put(context.Background(), bytes.NewReader(nil)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close = %v", err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close = %v", err)
	}
	r.Close()
}

func TestLayoutVersion(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open(t, dir, testOptions(t))
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(keyVersion, []byte("future")) }); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	if s, err := Open(dir, testOptions(t)); err == nil {
		s.Close()
		t.Fatal("Open accepted an unknown layout")
	}
}

func TestCorruptManifest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	data := storetest.Data(60, 40*cs) // a 1336-byte manifest: stored in the value log
	other := storetest.Data(61, cs)
	s := open(t, dir, testOptions(t))
	m := putData(t, s, data)
	mo := putData(t, s, other)
	closeStore(t, s)
	corrupt(t, dir, m.Encode()[:52]) // header and whole-blob sha256: only the manifest holds these bytes

	s = open(t, dir, testOptions(t))
	defer closeStore(t, s)
	if _, err := readAll(s, m); !errors.Is(err, blobstore.ErrInvalidData) {
		t.Fatalf("Open with a corrupt manifest = %v", err)
	}
	if list, err := s.List(ctx); err != nil || len(list) != 1 || !list[0].CID.Equals(mo.CID()) {
		t.Fatalf("List = %+v, %v; want the intact blob only", list, err)
	}
	rep, err := s.Verify(ctx)
	if err != nil || rep.Blobs != 2 || len(rep.Corrupt) != 1 || rep.Corrupt[0].Index != -1 || !rep.Corrupt[0].Blob.Equals(m.CID()) {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	if err := s.Delete(ctx, m.CID()); err != nil {
		t.Fatalf("Delete of a blob with a corrupt manifest: %v", err)
	}
	rep, err = s.Verify(ctx)
	if err != nil || rep.Blobs != 1 || len(rep.Corrupt) != 0 || rep.Chunks != 1 {
		t.Fatalf("Verify after delete = %+v, %v; the 40 chunks should be swept", rep, err)
	}
}

func TestExportLeavesOnlyTheFile(t *testing.T) {
	t.Parallel()
	s := open(t, t.TempDir(), testOptions(t))
	defer closeStore(t, s)
	data := storetest.Data(11, 2*cs+5)
	m := putData(t, s, data)
	dir := t.TempDir()
	for range 2 { // the second export replaces the first
		if err := s.Export(context.Background(), m.CID(), filepath.Join(dir, "b.blob")); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "b.blob" {
		t.Fatalf("export left %v, want only b.blob", entries)
	}
	got, err := os.ReadFile(filepath.Join(dir, "b.blob"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("exported file: %d bytes, %v", len(got), err)
	}
	// On the store's filesystem the export is a hard link to the stored file: no byte copied, read-only.
	st, _ := os.Stat(filepath.Join(dir, "b.blob"))
	stored, _ := os.Stat(s.blobPath(must(blobstore.Digest(m.CID()))))
	if !os.SameFile(st, stored) || st.Mode().Perm() != 0o444 {
		t.Errorf("exported file mode %v, same file as the store's %v; want a read-only link", st.Mode().Perm(), os.SameFile(st, stored))
	}
}

// hugeManifest is the manifest of a blob of size bytes that nobody holds: a peer's claim.
func hugeManifest(size uint64) *blobstore.Manifest {
	m := &blobstore.Manifest{Size: size, ChunkSize: cs}
	m.Chunks = make([][32]byte, m.NumChunks())
	for i := range m.Chunks {
		m.Chunks[i][0], m.Chunks[i][1], m.Chunks[i][2] = byte(i), byte(i>>8), 0xee
	}
	return m
}

// TestGCPartialClaim: a record claiming a 4 GiB blob with a 100 MiB quota must not make gc delete real blobs
// (issue 10 item 7). A partial blob counts the bytes it holds, and complete blobs never go to make room for one.
func TestGCPartialClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const quota = 100 << 20
	opts := testOptions(t)
	opts.freeSpace = func(string) (uint64, error) { return 1 << 40, nil }
	opts.Quota = quota
	s := open(t, t.TempDir(), opts)
	defer closeStore(t, s)
	a := putData(t, s, storetest.Data(1, cs))
	b := putData(t, s, storetest.Data(2, cs+7))
	huge := hugeManifest(4 << 30)
	if err := s.BeginPartial(ctx, huge); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("BeginPartial of a 4 GiB blob with a 100 MiB quota = %v, want ErrNoSpace", err)
	}

	// A store that does not know the quota accepts the claim; gc must still keep the real blobs.
	s.opts.Quota = 0
	if err := s.BeginPartial(ctx, huge); err != nil {
		t.Fatal(err)
	}
	res, err := s.GC(ctx, quota, nil)
	if err != nil || len(res.Removed) != 0 || res.SizeAfter != 2*cs+7 {
		t.Fatalf("GC with a 4 GiB partial claim = %+v, %v; want nothing removed, %d bytes", res, err, 2*cs+7)
	}
	// Over quota through a partial that holds chunks: the partial goes, never a complete blob.
	data := storetest.Data(3, 3*cs)
	pm := manifestOf(t, data)
	if err := s.BeginPartial(ctx, pm); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := s.PutChunk(ctx, pm.CID(), i, chunkOf(data, pm, i)); err != nil {
			t.Fatal(err)
		}
	}
	res, err = s.GC(ctx, 3*cs, func(c cid.Cid) bool { return c.Equals(huge.CID()) })
	if err != nil || len(res.Removed) != 1 || !res.Removed[0].Equals(pm.CID()) || res.FreedBytes != 2*cs {
		t.Fatalf("GC over quota by a partial = %+v, %v; want only the partial %s (2 chunks) removed", res, err, pm.CID())
	}
	// A protected partial over quota costs no complete blob either.
	if err := s.BeginPartial(ctx, pm); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.PutChunk(ctx, pm.CID(), i, chunkOf(data, pm, i)); err != nil {
			t.Fatal(err)
		}
	}
	keepPartials := func(c cid.Cid) bool { return c.Equals(pm.CID()) || c.Equals(huge.CID()) }
	res, err = s.GC(ctx, 3*cs, keepPartials)
	if err != nil || len(res.Removed) != 0 {
		t.Fatalf("GC over quota by a protected partial = %+v, %v; want nothing removed", res, err)
	}
	for _, m := range []*blobstore.Manifest{a, b} {
		if ok, err := s.Has(ctx, m.CID()); !ok || err != nil {
			t.Fatalf("complete blob %s gone: %v", m.CID(), err)
		}
	}
	// Only when the complete blobs alone exceed the quota does one go, the oldest.
	res, err = s.GC(ctx, cs+7, keepPartials)
	if err != nil || len(res.Removed) != 1 || !res.Removed[0].Equals(a.CID()) {
		t.Fatalf("GC below the complete blobs = %+v, %v; want %s removed", res, err, a.CID())
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
