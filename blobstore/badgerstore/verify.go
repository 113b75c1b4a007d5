package badgerstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Verify re-hashes every stored chunk of every complete and partial blob, read from its file. A complete blob's
// missing chunk (or file) is corrupt; a partial blob's missing chunk is expected. A corrupt manifest is reported
// with Index -1 and no chunk CID. A complete blob whose chunks are intact but whose bytes do not have the
// whole-blob sha256 its manifest claims is reported in WrongSHA256: nothing checks that claim on receipt
// (docs/design.md 3.2), so this is where a false one shows. Verify reports; it quarantines nothing.
func (s *Store) Verify(ctx context.Context) (blobstore.VerifyReport, error) {
	if err := s.enter(); err != nil {
		return blobstore.VerifyReport{}, err
	}
	defer s.leave()
	type blob struct {
		d        [32]byte
		m        *blobstore.Manifest
		complete bool
	}
	var blobs []blob
	var badManifests []blobstore.CorruptChunk
	err := s.db.View(func(txn *badger.Txn) error {
		for _, prefix := range []byte{prefixManifest, prefixPartial} {
			for _, d := range digestKeys(txn, prefix) {
				m, st, err := s.manifest(txn, d)
				if isCorrupt(err) {
					badManifests = append(badManifests, blobstore.CorruptChunk{Blob: blobstore.DigestCID(d), Index: -1})
					continue
				}
				if err != nil {
					return err
				}
				blobs = append(blobs, blob{d: d, m: m, complete: st == stateComplete})
			}
		}
		return nil
	})
	if err != nil {
		return blobstore.VerifyReport{}, fmt.Errorf("verify: %w", err)
	}

	var (
		mu      sync.Mutex
		report  = blobstore.VerifyReport{Blobs: len(blobs) + len(badManifests), Corrupt: append([]blobstore.CorruptChunk{}, badManifests...)}
		failErr error
	)
	fail := func(err error) {
		mu.Lock()
		if failErr == nil {
			failErr = err
		}
		mu.Unlock()
	}
	type job struct {
		b    blob
		f    *os.File
		have []bool
		i    int
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	check := func(j job, buf []byte) {
		bad := !j.have[j.i] && j.b.complete
		if j.have[j.i] && j.f != nil {
			_, err := readHashed(j.f, j.b.d, j.b.m, j.i, buf[:0])
			switch {
			case err == nil:
			case errors.Is(err, blobstore.ErrInvalidData):
				bad = true
			default:
				fail(err)
				return
			}
		} else if j.have[j.i] {
			bad = true // no file
		}
		mu.Lock()
		defer mu.Unlock()
		if j.have[j.i] {
			report.Chunks++
			report.Bytes += uint64(j.b.m.ChunkLen(j.i))
		}
		if bad {
			report.Corrupt = append(report.Corrupt, blobstore.CorruptChunk{
				Blob: blobstore.DigestCID(j.b.d), Index: j.i, Chunk: blobstore.ChunkCID(j.b.m.Chunks[j.i]),
			})
		}
	}
	for range 2 {
		wg.Go(func() {
			buf := s.getBuf()
			defer s.putBuf(buf)
			for j := range jobs {
				check(j, *buf)
			}
		})
	}
	// The whole-blob hash is sequential: one goroutine reads each complete blob's file once more, in order,
	// beside the chunk workers.
	type whole struct {
		b blob
		f *os.File
	}
	wholes := make(chan whole)
	wrong := map[[32]byte]bool{}
	wg.Go(func() {
		buf := s.getBuf()
		defer s.putBuf(buf)
		for w := range wholes {
			ok, err := wholeMatches(ctx, w.f, w.b.m, *buf)
			if err != nil && !errors.Is(err, blobstore.ErrInvalidData) {
				fail(err)
				continue
			}
			if !ok {
				mu.Lock()
				wrong[w.b.d] = true
				mu.Unlock()
			}
		}
	})
feed:
	for _, b := range blobs {
		f, _, _, err := s.openBlob(b.d)
		if err != nil && !errors.Is(err, errFileMissing) {
			if errors.Is(err, blobstore.ErrNotFound) {
				continue // deleted meanwhile
			}
			fail(err)
			break
		}
		var have []bool
		if err := s.db.View(func(txn *badger.Txn) error {
			var err error
			have, err = haveChunks(txn, b.d, b.m)
			return err
		}); err != nil {
			fail(err)
			break
		}
		for i := range b.m.Chunks {
			select {
			case jobs <- job{b: b, f: f, have: have, i: i}:
			case <-ctx.Done():
				if f != nil {
					f.Close()
				}
				break feed
			}
		}
		if f != nil {
			defer f.Close()
			if b.complete {
				select {
				case wholes <- whole{b: b, f: f}:
				case <-ctx.Done():
					break feed
				}
			}
		}
	}
	close(jobs)
	close(wholes)
	wg.Wait()
	// A damaged chunk also breaks the whole-blob hash: only a blob with intact chunks has a false claim.
	for _, c := range report.Corrupt {
		d, _ := blobstore.Digest(c.Blob)
		delete(wrong, d)
	}
	for _, b := range blobs {
		if wrong[b.d] {
			report.WrongSHA256 = append(report.WrongSHA256, blobstore.DigestCID(b.d))
		}
	}
	if err := ctx.Err(); err != nil {
		return report, fmt.Errorf("verify: %w", err)
	}
	if failErr != nil {
		return report, fmt.Errorf("verify: %w", failErr)
	}
	return report, nil
}

// wholeMatches reads a complete blob's file in order and reports whether its sha256 is the one m claims; a short
// file is ErrInvalidData.
func wholeMatches(ctx context.Context, f *os.File, m *blobstore.Manifest, buf []byte) (bool, error) {
	h := sha256.New()
	for i := range m.Chunks {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		b, err := preadChunk(f, m, i, buf[:0])
		if err != nil {
			return false, err
		}
		h.Write(b)
	}
	var sum [32]byte
	return [32]byte(h.Sum(sum[:0])) == m.SHA256, nil
}
