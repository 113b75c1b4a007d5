package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
)

// Verify re-hashes every stored chunk of every complete and partial blob. A chunk that several blobs share is
// hashed once and reported for each. A complete blob's missing chunk is corrupt; a partial blob's is expected. A
// corrupt manifest is reported with Index -1 and no chunk CID.
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

	type job struct {
		b blob
		i int
	}
	type outcome int
	const (
		good outcome = iota
		bad
		missing
	)
	var (
		mu      sync.Mutex
		seen    = map[[32]byte]outcome{}
		report  = blobstore.VerifyReport{Blobs: len(blobs) + len(badManifests), Corrupt: append([]blobstore.CorruptChunk{}, badManifests...)}
		jobs    = make(chan job)
		wg      sync.WaitGroup
		failErr error
	)
	check := func(j job, buf []byte) {
		c := j.b.m.Chunks[j.i]
		mu.Lock()
		o, done := seen[c]
		mu.Unlock()
		if !done {
			_, err := s.readChunk(j.b.d, j.b.m, j.i, buf[:0])
			switch {
			case err == nil:
				o = good
			case errors.Is(err, errChunkMissing):
				o = missing
			case errors.Is(err, blobstore.ErrInvalidData):
				o = bad
			default:
				mu.Lock()
				if failErr == nil {
					failErr = err
				}
				mu.Unlock()
				return
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if _, ok := seen[c]; !ok {
			seen[c] = o
			if o != missing {
				report.Chunks++
				report.Bytes += uint64(j.b.m.ChunkLen(j.i))
			}
		}
		if o == bad || (o == missing && j.b.complete) {
			report.Corrupt = append(report.Corrupt, blobstore.CorruptChunk{
				Blob: blobstore.DigestCID(j.b.d), Index: j.i, Chunk: blobstore.ChunkCID(c),
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
		for i := range b.m.Chunks {
			select {
			case jobs <- job{b, i}:
			case <-ctx.Done():
				break feed
			}
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
