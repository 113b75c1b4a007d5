package badgerstore

// Process-level fault tests: a child process (this test binary, re-executed) writes into a store and is
// SIGKILLed at random points, or fills a small tmpfs; the test then reopens the store and checks that nothing
// committed is lost or corrupted and nothing uncommitted is visible or left behind. Short versions run in
// `make test`; NPU_TEST_FAULTS=long (`make test-faults`) runs more kill points with bigger blobs.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/ipfs/go-cid"
	"math/rand/v2"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/internal/faults"
)

// childTimeout bounds every wait for a child's output.
var childTimeout = faults.Pick(2*time.Minute, 10*time.Minute)

func childStore(dir string, minFree uint64) (*Store, error) {
	return Open(dir, Options{
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		MinFreeSpace: minFree,
	})
}

func parseUints(args []string, n int) ([]uint64, error) {
	if len(args) != n {
		return nil, fmt.Errorf("%d arguments, want %d", len(args), n)
	}
	v := make([]uint64, n)
	for i, a := range args {
		var err error
		if v[i], err = strconv.ParseUint(a, 10, 64); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// childPut: DIR SMALL_SEED SMALL_SIZE BIG_SEED BIG_SIZE. It puts the small blob ("committed CID"), then streams
// the big one, printing "progress BYTES" after each chunk it hands to Put, and "committed CID" when Put returns.
func childPut(args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("put: %d arguments, want 5", len(args))
	}
	v, err := parseUints(args[1:], 4)
	if err != nil {
		return err
	}
	s, err := childStore(args[0], 0)
	if err != nil {
		return err
	}
	ctx := context.Background()
	for _, d := range []faults.Data{{Seed: v[0], Size: int64(v[1])}, {Seed: v[2], Size: int64(v[3])}} {
		m, err := s.Put(ctx, d.Reader(func(n int64) { faults.Say("progress %d", n) }))
		if err != nil {
			return errors.Join(err, s.Close())
		}
		faults.Say("committed %s", m.CID())
	}
	return s.Close()
}

// childFetch: DIR SEED SIZE ORDER_SEED. It resumes a partial fetch of the blob, storing its missing chunks in a
// random order ("stored I" after each), then commits it ("committed CID").
func childFetch(args []string) error {
	v, err := parseUints(args[1:], 3)
	if err != nil {
		return err
	}
	d := faults.Data{Seed: v[0], Size: int64(v[1])}
	m := d.Manifest()
	s, err := childStore(args[0], 0)
	if err != nil {
		return err
	}
	ctx := context.Background()
	err = s.BeginPartial(ctx, m)
	var have []bool
	if err == nil {
		have, err = s.HaveChunks(ctx, m.CID())
	}
	if err != nil {
		return errors.Join(err, s.Close())
	}
	n := 0
	for _, h := range have {
		if h {
			n++
		}
	}
	faults.Say("have %d", n)
	buf := make([]byte, blobstore.ChunkSize)
	for _, i := range rand.New(rand.NewPCG(v[2], 0)).Perm(len(m.Chunks)) {
		if have[i] {
			continue
		}
		if err := s.PutChunk(ctx, m.CID(), i, d.Chunk(i, buf)); err != nil {
			return errors.Join(err, s.Close())
		}
		faults.Say("stored %d", i)
	}
	if err := s.Commit(ctx, m.CID()); err != nil {
		return errors.Join(err, s.Close())
	}
	faults.Say("committed %s", m.CID())
	return s.Close()
}

// checkStore checks a reopened store: exactly the blobs of want (complete) and partial (incomplete) are listed,
// every complete one reads back byte for byte, Verify finds nothing corrupt and no chunk outside a manifest is
// left over.
func checkStore(t *testing.T, s *Store, want []faults.Data, partial []*blobstore.Manifest) {
	t.Helper()
	ctx := context.Background()
	listed := map[cid.Cid]blobstore.Info{}
	infos, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, info := range infos {
		listed[info.CID] = info
	}
	if len(infos) != len(want)+len(partial) {
		t.Errorf("List shows %d blobs, want %d complete and %d partial: %+v", len(infos), len(want), len(partial), infos)
	}
	for _, d := range want {
		c := d.Manifest().CID()
		if info, ok := listed[c]; !ok || !info.Complete || info.Size != uint64(d.Size) {
			t.Errorf("blob %s (seed %d): listed %v as %+v, want complete", c, d.Seed, ok, info)
			continue
		}
		r, err := s.Open(ctx, c)
		if err != nil {
			t.Errorf("Open committed blob %s: %v", c, err)
			continue
		}
		if err := d.Check(r); err != nil {
			t.Errorf("committed blob %s (seed %d): %v", c, d.Seed, err)
		}
		r.Close()
	}
	for _, m := range partial {
		if info, ok := listed[m.CID()]; !ok || info.Complete {
			t.Errorf("partial blob %s: listed %v as %+v, want incomplete", m.CID(), ok, info)
		}
		if ok, err := s.Has(ctx, m.CID()); ok || err != nil {
			t.Errorf("Has(partial %s) = %v, %v", m.CID(), ok, err)
		}
	}
	rep, err := s.Verify(ctx)
	if err != nil || len(rep.Corrupt) != 0 {
		t.Errorf("Verify = %+v, %v", rep, err)
	}
	if n := leftoverChunks(t, s); n != 0 {
		t.Errorf("%d chunks that no manifest references survived Open", n)
	}
}

// leftoverChunks counts what no blob accounts for: files in tmp/, files in blobs/ or partial/ without their
// blob's key, chunk keys of blobs that do not exist, and layout-1 chunk keys.
func leftoverChunks(t *testing.T, s *Store) int {
	t.Helper()
	n := 0
	if tmp, err := os.ReadDir(s.tmpDir); err == nil {
		n += len(tmp)
	}
	err := s.db.View(func(txn *badger.Txn) error {
		exists := func(d [32]byte, prefix byte) bool {
			_, err := txn.Get(key(prefix, d))
			return err == nil
		}
		for _, dir := range []struct {
			path   string
			prefix byte
		}{{s.blobDir, prefixManifest}, {s.partDir, prefixPartial}} {
			entries, err := os.ReadDir(dir.path)
			if err != nil {
				return err
			}
			for _, e := range entries {
				c, err := blobstore.ParseCID(e.Name())
				if err != nil {
					n++
					continue
				}
				if d, _ := blobstore.Digest(c); !exists(d, dir.prefix) {
					n++
				}
			}
		}
		for _, prefix := range []byte{prefixHave, prefixChunkV1} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
			for it.Rewind(); it.Valid(); it.Next() {
				k := it.Item().Key()
				if prefix == prefixChunkV1 || len(k) != 37 ||
					(!exists([32]byte(k[1:33]), prefixManifest) && !exists([32]byte(k[1:33]), prefixPartial)) {
					n++
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFaultCrashPut(t *testing.T) {
	t.Parallel()
	rng := faults.Rand(t)
	dir := t.TempDir()
	bigSize := faults.Pick[int64](32<<20, 256<<20)
	var committed []faults.Data
	for it := range faults.Pick(1, 6) {
		small := faults.Data{Seed: uint64(2 * it), Size: 3<<20 + rng.Int64N(cs)}
		big := faults.Data{Seed: uint64(2*it + 1), Size: bigSize}
		killAt := rng.Int64N(bigSize + 1) // bigSize: after the last read, while Put syncs and writes the manifest
		p := faults.Child(t, childTimeout, "put", dir, fmt.Sprint(small.Seed), fmt.Sprint(small.Size),
			fmt.Sprint(big.Seed), fmt.Sprint(big.Size))
		p.Await("committed")
		committed = append(committed, small)
		bigCommitted := false
	read:
		for {
			line, ok := p.Next()
			if !ok {
				t.Fatalf("put child ended (%v) before the kill point", p.Wait())
			}
			if strings.HasPrefix(line, "committed") {
				bigCommitted = true
				break read
			}
			if n, ok := strings.CutPrefix(line, "progress "); ok {
				if n, _ := strconv.ParseInt(n, 10, 64); n >= killAt {
					break read
				}
			}
		}
		killed := p.Kill()
		s := open(t, dir, testOptions(t))
		ok, err := s.Has(context.Background(), big.Manifest().CID())
		if err != nil {
			t.Fatal(err)
		}
		if bigCommitted && !ok {
			t.Errorf("kill %d: the big blob's Put returned, the reopened store does not have it", it)
		}
		t.Logf("kill %d at %d of %d bytes read: killed %v, put returned %v, blob visible after reopen %v",
			it, killAt, bigSize, killed, bigCommitted, ok)
		if ok { // the Put finished before the kill: then it must be whole
			committed = append(committed, big)
		}
		checkStore(t, s, committed, nil)
		closeStore(t, s)
		if t.Failed() {
			return
		}
	}
	s := open(t, dir, testOptions(t))
	defer closeStore(t, s)
	last := faults.Data{Seed: 99, Size: bigSize}
	if _, err := s.Put(context.Background(), last.Reader(nil)); err != nil {
		t.Fatalf("Put after the kills: %v", err)
	}
	committed = append(committed, last)
	checkStore(t, s, committed, nil)
	var live int64
	for _, d := range committed {
		live += d.Size
	}
	t.Logf("after the kills: the value log takes %d MiB of disk for %d MiB of blobs", allocated(t, dir)>>20, live>>20)
}

func TestFaultCrashFetch(t *testing.T) {
	t.Parallel()
	rng := faults.Rand(t)
	ctx := context.Background()
	dir := t.TempDir()
	kept := faults.Data{Seed: 1, Size: 5<<20 + 7}
	d := faults.Data{Seed: 2, Size: faults.Pick[int64](24<<20, 256<<20) + 12345}
	m := d.Manifest()
	s := open(t, dir, testOptions(t))
	if _, err := s.Put(ctx, kept.Reader(nil)); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)

	stored := map[int]bool{} // chunks a child reported stored
	for it := range faults.Pick(1, 6) {
		left := len(m.Chunks) - len(stored)
		killAfter := rng.IntN(left + 1) // left: during Commit
		p := faults.Child(t, childTimeout, "fetch", dir, fmt.Sprint(d.Seed), fmt.Sprint(d.Size), fmt.Sprint(rng.Uint64()))
		p.Await("have ")
		for n := 0; n < killAfter; {
			line, ok := p.Next()
			if !ok {
				t.Fatalf("fetch child ended (%v) before the kill point", p.Wait())
			}
			if i, ok := strings.CutPrefix(line, "stored "); ok {
				idx, err := strconv.Atoi(i)
				if err != nil {
					t.Fatalf("child printed %q", line)
				}
				stored[idx] = true
				n++
			}
		}
		killed := p.Kill()

		s := open(t, dir, testOptions(t))
		complete, err := s.Has(ctx, m.CID())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kill %d after %d of %d missing chunks: killed %v, complete after reopen %v",
			it, killAfter, left, killed, complete)
		if complete {
			checkStore(t, s, []faults.Data{kept, d}, nil)
			closeStore(t, s)
			return
		}
		have, err := s.HaveChunks(ctx, m.CID())
		if err != nil {
			t.Fatalf("HaveChunks after the kill: %v", err)
		}
		for i := range stored {
			if !have[i] {
				t.Errorf("kill %d: chunk %d was stored before the kill, HaveChunks lost it", it, i)
			}
		}
		// A chunk can be durable before its "stored" line was read: what the store holds is what is left.
		for i, h := range have {
			if h {
				stored[i] = true
			}
		}
		checkStore(t, s, []faults.Data{kept}, []*blobstore.Manifest{m})
		closeStore(t, s)
		if t.Failed() {
			return
		}
	}

	// Resume in this process and finish.
	s = open(t, dir, testOptions(t))
	defer closeStore(t, s)
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	have, err := s.HaveChunks(ctx, m.CID())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, cs)
	for i, h := range have {
		if !h {
			if err := s.PutChunk(ctx, m.CID(), i, d.Chunk(i, buf)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Commit(ctx, m.CID()); err != nil {
		t.Fatalf("Commit of the resumed fetch: %v", err)
	}
	checkStore(t, s, []faults.Data{kept, d}, nil)
}

// childFill: DIR MIN_FREE BLOB_SIZE. It begins a partial fetch of the blob of seed 0 and stores half its chunks,
// then puts blobs of seeds 1, 2, ... until a Put fails ("committed SEED" after each, "full ERROR" at the end),
// then stores the fetch's remaining chunks until that fails too ("partial ERROR"), and closes the store.
func childFill(args []string) error {
	v, err := parseUints(args[1:], 2)
	if err != nil {
		return err
	}
	s, err := childStore(args[0], v[0])
	if err != nil {
		return err
	}
	ctx := context.Background()
	fetch := faults.Data{Seed: 0, Size: int64(v[1])}
	m := fetch.Manifest()
	buf := make([]byte, blobstore.ChunkSize)
	err = s.BeginPartial(ctx, m)
	i := 0
	for ; err == nil && i < len(m.Chunks)/2; i++ {
		err = s.PutChunk(ctx, m.CID(), i, fetch.Chunk(i, buf))
	}
	if err != nil {
		return errors.Join(err, s.Close())
	}
	for seed := uint64(1); seed < 1000; seed++ {
		if _, err := s.Put(ctx, faults.Data{Seed: seed, Size: int64(v[1])}.Reader(nil)); err != nil {
			faults.Say("full %v", err)
			break
		}
		faults.Say("committed %d", seed)
	}
	for ; err == nil && i < len(m.Chunks); i++ {
		err = s.PutChunk(ctx, m.CID(), i, fetch.Chunk(i, buf))
	}
	faults.Say("partial %v", err)
	return s.Close()
}

func TestFaultFullDisk(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		tmpfs    int64
		minFree  uint64 // 0: the default guard
		blobSize int64
	}{
		{"default guard", faults.Pick[int64](320<<20, 600<<20), 0, faults.Pick[int64](16<<20, 48<<20)},
		{"smallest guard", faults.Pick[int64](224<<20, 400<<20), 128 << 20, faults.Pick[int64](16<<20, 48<<20)},
	}
	if !faults.Long() {
		tests = tests[:1]
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := faults.Tmpfs(t, tt.tmpfs)
			p := faults.Child(t, childTimeout, "fill", dir, fmt.Sprint(tt.minFree), fmt.Sprint(tt.blobSize))
			var committed []faults.Data
			var full, partial string
			for {
				line, ok := p.Next()
				if !ok {
					break
				}
				if s, ok := strings.CutPrefix(line, "committed "); ok {
					seed, _ := strconv.ParseUint(s, 10, 64)
					committed = append(committed, faults.Data{Seed: seed, Size: tt.blobSize})
				} else if s, ok := strings.CutPrefix(line, "full "); ok {
					full = s
				} else if s, ok := strings.CutPrefix(line, "partial "); ok {
					partial = s
				}
			}
			if err := p.Wait(); err != nil {
				t.Fatalf("fill child: %v (a signal means a crash: badger writes through mmap)", err)
			}
			t.Logf("%d blobs of %d MiB fit; then Put: %s; partial fetch: %s", len(committed), tt.blobSize>>20, full, partial)
			for what, msg := range map[string]string{"Put": full, "partial fetch": partial} {
				if what == "partial fetch" && msg == "<nil>" {
					continue // the failed Put's file gave its space back at once: the fetch's last chunks fit
				}
				if !strings.Contains(msg, ErrNoSpace.Error()) && !strings.Contains(msg, syscall.ENOSPC.Error()) {
					t.Errorf("%s on a full disk failed with %q, want a no-space error", what, msg)
				}
			}
			if len(committed) == 0 {
				t.Fatal("not one blob fit: the tmpfs is too small for the test")
			}

			ctx := context.Background()
			opts := testOptions(t)
			opts.MinFreeSpace = tt.minFree
			s := open(t, dir, opts)
			defer closeStore(t, s)
			fetching := faults.Data{Seed: 0, Size: tt.blobSize}.Manifest()
			checkStore(t, s, committed, []*blobstore.Manifest{fetching})
			before := faults.Free(t, dir)
			if err := s.Delete(ctx, fetching.CID()); err != nil {
				t.Fatalf("Delete the partial blob on a full disk: %v", err)
			}
			res, err := s.GC(ctx, uint64(tt.blobSize), nil) // keeps at most one blob
			if err != nil {
				t.Fatalf("GC on a full disk: %v", err)
			}
			after := faults.Free(t, dir)
			t.Logf("gc removed %d blobs, %d MiB; free space %d → %d MiB", len(res.Removed), res.FreedBytes>>20, before>>20, after>>20)
			if after-before < int64(res.FreedBytes)/2 {
				t.Errorf("gc freed %d bytes of blobs, the disk only %d", res.FreedBytes, after-before)
			}
			next := faults.Data{Seed: 5000, Size: tt.blobSize}
			if _, err := s.Put(ctx, next.Reader(nil)); err != nil {
				t.Fatalf("Put after gc: %v", err)
			}
			var kept []faults.Data
			for _, d := range committed {
				if ok, _ := s.Has(ctx, d.Manifest().CID()); ok {
					kept = append(kept, d)
				}
			}
			checkStore(t, s, append(kept, next), nil)
		})
	}
}
