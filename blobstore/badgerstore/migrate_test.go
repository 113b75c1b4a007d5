package badgerstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/storetest"
)

// writeV1 writes a store of layout 1 (chunk bytes in badger) the way the old code did, key by key: a complete
// blob (pinned, with a record and an access time) and a partial one holding chunk 1 of 3.
func writeV1(t *testing.T, dir string, data, partData []byte, part *blobstore.Manifest) *blobstore.Manifest {
	t.Helper()
	m := &blobstore.Manifest{Size: uint64(len(data)), ChunkSize: cs, SHA256: sha256.Sum256(data)}
	for off := 0; off < len(data); off += cs {
		m.Chunks = append(m.Chunks, sha256.Sum256(data[off:min(off+cs, len(data))]))
	}
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(valueThreshold))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d, pd := [32]byte(sha256.Sum256(m.Encode())), [32]byte(sha256.Sum256(part.Encode()))
	rec := blobstore.Record{ModelID: "m", ProfileID: "p", Blob: m.CID(), Fingerprint: []byte(`{"a":1}`), Size: m.Size,
		Created: time.Unix(1700000000, 0).UTC(), Producer: "old"}
	recJSON, _ := json.Marshal(rec)
	err = db.Update(func(txn *badger.Txn) error {
		set := func(k, v []byte) {
			if err == nil {
				err = txn.Set(k, v)
			}
		}
		set(keyVersion, []byte(layoutVersionV1))
		for i := range m.Chunks {
			set(key(prefixChunkV1, m.Chunks[i]), chunkOf(data, m, i))
		}
		set(key(prefixManifest, d), m.Encode())
		set(key(prefixAccess, d), encodeTime(time.Now()))
		set(key(prefixPin, d), nil)
		set(recordKey(&rec, d), recJSON)
		set(key(prefixPartial, pd), part.Encode())
		set(key(prefixChunkV1, part.Chunks[1]), chunkOf(partData, part, 1))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMigrateV1: a store written by the layout that kept chunks in badger opens, is converted to one file per
// blob without losing a blob, a partial chunk, a pin, a record or an access time, and drops the old chunk keys.
func TestMigrateV1(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	data := storetest.Data(70, 3*cs+77)
	partData := storetest.Data(71, 3*cs)
	part := manifestOf(t, partData)
	m := writeV1(t, dir, data, partData, part)

	s := open(t, dir, testOptions(t))
	if got, err := readAll(s, m); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("migrated blob: %v", err)
	}
	info, err := s.Stat(ctx, m.CID())
	if err != nil || !info.Complete || !info.Pinned || info.LastAccess.IsZero() {
		t.Fatalf("Stat of the migrated blob = %+v, %v", info, err)
	}
	if recs, err := s.Records(ctx, "m", "p"); err != nil || len(recs) != 1 || recs[0].Producer != "old" {
		t.Fatalf("records after migration = %+v, %v", recs, err)
	}
	path, err := s.BlobFile(ctx, m.CID())
	if st, serr := os.Stat(path); err != nil || serr != nil || st.Mode().Perm() != 0o444 || st.Size() != int64(len(data)) {
		t.Fatalf("migrated blob file %s: %v %v", path, err, serr)
	}
	have, err := s.HaveChunks(ctx, part.CID())
	if err != nil || !slices.Equal(have, []bool{false, true, false}) {
		t.Fatalf("HaveChunks of the migrated partial = %v, %v", have, err)
	}
	if n := leftoverChunks(t, s); n != 0 {
		t.Fatalf("%d layout-1 chunk keys or stray files left after migration", n)
	}
	closeStore(t, s)

	// Reopened: layout 2, nothing migrated again; the partial completes.
	s = open(t, dir, testOptions(t))
	defer closeStore(t, s)
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyVersion)
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if string(v) != layoutVersion {
				t.Errorf("layout after migration %q", v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		if err := s.PutChunk(ctx, part.CID(), i, chunkOf(partData, part, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(ctx, part.CID()); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Verify(ctx); err != nil || len(rep.Corrupt) != 0 || rep.Blobs != 2 || rep.Chunks != 7 {
		t.Fatalf("Verify after migration = %+v, %v", rep, err)
	}
}
