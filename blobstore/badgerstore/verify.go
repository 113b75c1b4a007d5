package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Verify re-hashes every stored chunk of every complete and partial blob, read from its file. A complete blob's
// missing chunk (or file) is corrupt; a partial blob's missing chunk is expected. A corrupt manifest is reported
// with Index -1 and no chunk CID. Verify reports; it quarantines nothing.
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
		}
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return report, fmt.Errorf("verify: %w", err)
	}
	if failErr != nil {
		return report, fmt.Errorf("verify: %w", failErr)
	}
	return report, nil
}
