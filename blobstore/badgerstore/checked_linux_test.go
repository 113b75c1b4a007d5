package badgerstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/storetest"
)

// TestCheckStamp: CheckBlob of a blob put or fetched (stamped on arrival) reads nothing while its file keeps its
// identity and the stamp is younger than checkValidFor; any change to the file through the filesystem, an old,
// future-dated or malformed stamp, makes it read the file and find the damage. Damage that keeps the file's
// identity is played by writing the damaged file's identity into the stamp: it is not read until the stamp
// expires.
func TestCheckStamp(t *testing.T) {
	t.Parallel()
	data := storetest.Data(12, 2*cs+100)
	// damage flips a byte of chunk 1 in the blob's file (changing its mtime and ctime).
	damage := func(t *testing.T, path string) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{^data[cs+10]}, cs+10); err != nil {
			t.Fatal(err)
		}
	}
	restamp := func(t *testing.T, s *Store, d [32]byte, at time.Time, v []byte) {
		if v == nil {
			id, err := statID(s.blobPath(d))
			if err != nil {
				t.Fatal(err)
			}
			v = encodeStamp(at, id)
		}
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(prefixChecked, d), v) }); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	tests := []struct {
		name    string
		fetched bool // the blob arrives by BeginPartial, PutChunk and Commit instead of Put
		later   time.Duration
		tamper  func(t *testing.T, s *Store, d [32]byte, path string)
		want    error // of CheckBlob after tamper, at now+later
	}{
		{"file written", false, 0, func(t *testing.T, s *Store, d [32]byte, path string) { damage(t, path) }, blobstore.ErrInvalidData},
		{"fetched, file written", true, 0, func(t *testing.T, s *Store, d [32]byte, path string) { damage(t, path) }, blobstore.ErrInvalidData},
		{"mtime set back", false, 0, func(t *testing.T, s *Store, d [32]byte, path string) {
			st, _ := os.Stat(path)
			damage(t, path)
			os.Chtimes(path, st.ModTime(), st.ModTime()) // ctime still moves
		}, blobstore.ErrInvalidData},
		{"damage keeping the identity", false, 0, func(t *testing.T, s *Store, d [32]byte, path string) {
			damage(t, path)
			restamp(t, s, d, now, nil)
		}, nil},
		{"damage keeping the identity, stamp expired", false, checkValidFor, func(t *testing.T, s *Store, d [32]byte, path string) {
			damage(t, path)
			restamp(t, s, d, now, nil)
		}, blobstore.ErrInvalidData},
		{"stamp from the future", false, 0, func(t *testing.T, s *Store, d [32]byte, path string) {
			damage(t, path)
			restamp(t, s, d, now.Add(time.Hour), nil)
		}, blobstore.ErrInvalidData},
		{"malformed stamp", false, 0, func(t *testing.T, s *Store, d [32]byte, path string) {
			damage(t, path)
			id, _ := statID(path)
			restamp(t, s, d, now, encodeStamp(now, id)[:stampLen-1])
		}, blobstore.ErrInvalidData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			clock := now
			opts := testOptions(t)
			opts.now = func() time.Time { return clock }
			s := open(t, t.TempDir(), opts)
			defer closeStore(t, s)
			m := manifestOf(t, data)
			d := sha256.Sum256(m.Encode())
			if tt.fetched {
				if err := s.BeginPartial(ctx, m); err != nil {
					t.Fatal(err)
				}
				for i := range m.Chunks {
					if err := s.PutChunk(ctx, m.CID(), i, chunkOf(data, m, i)); err != nil {
						t.Fatal(err)
					}
				}
				if err := s.Commit(ctx, m.CID()); err != nil {
					t.Fatal(err)
				}
			} else {
				putData(t, s, data)
			}
			path := s.blobPath(d)
			if err := os.Chmod(path, 0o600); err != nil { // writable, for damage
				t.Fatal(err)
			}
			tt.tamper(t, s, d, path)
			clock = now.Add(tt.later)
			if err := s.CheckBlob(ctx, m.CID()); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("CheckBlob = %v, want %v", err, tt.want)
			}
			_, err := s.db.NewTransaction(false).Get(key(prefixChecked, d))
			if stamped := err == nil; stamped != (tt.want == nil) {
				t.Fatalf("stamp present %v after CheckBlob (%v); want it kept only for a blob that passed", stamped, err)
			}
		})
	}
}

// TestCheckStampWritten: Put and Commit stamp the blob they publish, a ctime change makes the stamp stale, a check
// that read the file stamps it again, Delete removes the stamp; a partial blob has none.
func TestCheckStampWritten(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	data := storetest.Data(13, cs+7)
	s := open(t, t.TempDir(), testOptions(t))
	defer closeStore(t, s)
	m := manifestOf(t, data)
	d := sha256.Sum256(m.Encode())
	steps := []struct {
		name    string
		do      func() error
		stamped bool
	}{
		{"partial", func() error {
			if err := s.BeginPartial(ctx, m); err != nil {
				return err
			}
			for i := range m.Chunks {
				if err := s.PutChunk(ctx, m.CID(), i, chunkOf(data, m, i)); err != nil {
					return err
				}
			}
			return nil
		}, false},
		{"committed", func() error { return s.Commit(ctx, m.CID()) }, true},
		{"deleted", func() error { return s.Delete(ctx, m.CID()) }, false},
		{"put", func() error { _, err := s.Put(ctx, bytes.NewReader(data)); return err }, true},
		{"chmod to the same mode", func() error { return os.Chmod(s.blobPath(d), 0o444) }, false},
		{"checked", func() error { return s.CheckBlob(ctx, m.CID()) }, true},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := s.stillChecked(d); got != st.stamped {
			t.Fatalf("%s: stamp vouches %v, want %v", st.name, got, st.stamped)
		}
	}
	if err := s.Delete(ctx, m.CID()); err != nil {
		t.Fatal(err)
	}
	err := s.db.View(func(txn *badger.Txn) error { _, err := txn.Get(key(prefixChecked, d)); return err })
	if !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatalf("stamp after Delete: %v, want none", err)
	}
}
