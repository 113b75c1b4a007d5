package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/faults"
)

// childUnsynced: DIR SEED SIZE. It fetches the blob into the store and commits it ("committed CID") with the
// background sync held back, then waits to be killed: the crash between Commit and its sync.
func childUnsynced(args []string) error {
	v, err := parseUints(args[1:], 2)
	if err != nil {
		return err
	}
	d := faults.Data{Seed: v[0], Size: int64(v[1])}
	m := d.Manifest()
	s, err := Open(args[0], Options{
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		syncHook: func([32]byte) { time.Sleep(childTimeout) },
	})
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := s.BeginPartial(ctx, m); err != nil {
		return err
	}
	buf := make([]byte, blobstore.ChunkSize)
	for i := range m.Chunks {
		if err := s.PutChunk(ctx, m.CID(), i, d.Chunk(i, buf)); err != nil {
			return err
		}
	}
	if err := s.Commit(ctx, m.CID()); err != nil {
		return err
	}
	faults.Say("committed %s", m.CID())
	time.Sleep(childTimeout)
	return errors.New("not killed")
}

// TestFaultCommitUnsynced kills a process after Commit returned and before the blob's background sync, then
// plays what a power loss may leave (the rename lost, the file's bytes lost) and reopens: a blob whose bytes are
// not all there is never served, goes back to partial with the chunks that still match, and a fetch of the lost
// chunks heals it; a blob that is whole stays complete.
func TestFaultCommitUnsynced(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		renameLost bool
		zeroChunk  int // -1: none
	}{
		{"file fine", false, -1},
		{"rename lost", true, -1},
		{"data lost", false, 1},
		{"rename and data lost", true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dir := t.TempDir()
			kept := faults.Data{Seed: 1, Size: 3<<20 + 5}
			d := faults.Data{Seed: 7, Size: faults.Pick[int64](5<<20, 64<<20) + 77}
			m := d.Manifest()
			s := open(t, dir, testOptions(t))
			if _, err := s.Put(ctx, kept.Reader(nil)); err != nil {
				t.Fatal(err)
			}
			closeStore(t, s)

			p := faults.Child(t, childTimeout, "unsynced", dir, fmt.Sprint(d.Seed), fmt.Sprint(d.Size))
			p.Await("committed ")
			p.Kill()

			id := m.CID().String()
			if !rawMarked(t, dir, m) {
				t.Fatal("no unsynced marker after the kill: the test does not test the crash it means to")
			}
			// What a power loss may leave behind of what the kill left in the page cache.
			if tc.renameLost {
				if err := os.Rename(dir+"/blobs/"+id, dir+"/partial/"+id); err != nil {
					t.Fatal(err)
				}
			}
			if tc.zeroChunk >= 0 {
				path := dir + "/blobs/" + id
				if tc.renameLost {
					path = dir + "/partial/" + id
				}
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt(make([]byte, m.ChunkLen(tc.zeroChunk)), int64(m.ChunkOffset(tc.zeroChunk))); err != nil {
					t.Fatal(err)
				}
				f.Close()
			}

			s = open(t, dir, testOptions(t))
			defer closeStore(t, s)
			if marked(t, s, m) {
				t.Error("the unsynced marker survived the re-check at Open")
			}
			has, err := s.Has(ctx, m.CID())
			if err != nil {
				t.Fatal(err)
			}
			if tc.zeroChunk < 0 {
				if !has {
					t.Fatal("a whole blob committed before the crash is not complete after reopening")
				}
				checkStore(t, s, []faults.Data{kept, d}, nil)
				return
			}
			if has {
				t.Fatal("a blob that lost a chunk before its sync is complete after reopening")
			}
			if _, err := s.ServeChunk(ctx, m.CID(), tc.zeroChunk, nil); !errors.Is(err, blobstore.ErrNotFound) {
				t.Errorf("ServeChunk of the lost chunk = %v, want ErrNotFound", err)
			}
			if _, err := s.BlobFile(ctx, m.CID()); err == nil {
				t.Error("BlobFile hands out a blob that lost a chunk")
			}
			have, err := s.HaveChunks(ctx, m.CID())
			if err != nil {
				t.Fatal(err)
			}
			for i, h := range have {
				if h != (i != tc.zeroChunk) {
					t.Errorf("chunk %d: have %v after the re-check, want only chunk %d missing", i, h, tc.zeroChunk)
				}
			}
			checkStore(t, s, []faults.Data{kept}, []*blobstore.Manifest{m})
			// The fetch resumes and brings the lost chunk only.
			if err := s.BeginPartial(ctx, m); err != nil {
				t.Fatal(err)
			}
			if err := s.PutChunk(ctx, m.CID(), tc.zeroChunk, d.Chunk(tc.zeroChunk, make([]byte, cs))); err != nil {
				t.Fatal(err)
			}
			if err := s.Commit(ctx, m.CID()); err != nil {
				t.Fatal(err)
			}
			checkStore(t, s, []faults.Data{kept, d}, nil)
		})
	}
}

// rawMarked reports whether m's blob has an unsynced marker in the store in dir, opening its badger database
// without the store (whose Open would re-check the blob).
func rawMarked(t *testing.T, dir string, m *blobstore.Manifest) bool {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueLogFileSize(defaultVlogSize))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return markedIn(t, db, m)
}

// marked reports whether m's blob has an unsynced marker.
func marked(t *testing.T, s *Store, m *blobstore.Manifest) bool {
	t.Helper()
	return markedIn(t, s.db, m)
}

func markedIn(t *testing.T, db *badger.DB, m *blobstore.Manifest) bool {
	t.Helper()
	dg, err := blobstore.Digest(m.CID())
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	err = db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key(prefixUnsynced, dg))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		ok = err == nil
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestCloseWaitsForSync: Close returns only after a committed blob's background sync finished, so a clean
// shutdown leaves no marker (and the next Open re-hashes nothing).
func TestCloseWaitsForSync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	d := faults.Data{Seed: 3, Size: 2<<20 + 3}
	m := d.Manifest()
	release := make(chan struct{})
	opts := testOptions(t)
	opts.syncHook = func([32]byte) { <-release }
	s := open(t, dir, opts)
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	for i := range m.Chunks {
		if err := s.PutChunk(ctx, m.CID(), i, d.Chunk(i, make([]byte, cs))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(ctx, m.CID()); err != nil {
		t.Fatal(err)
	}
	if !marked(t, s, m) {
		t.Fatal("no unsynced marker while the sync is held back")
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the sync finished", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if rawMarked(t, dir, m) {
		t.Error("the marker survived a clean Close")
	}
}
