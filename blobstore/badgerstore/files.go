package badgerstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
)

// castagnoli is CRC32C: the stored checksum of every chunk (hardware-assisted, ~0.06 ns/B), computed when the
// chunk arrives (after its sha256 check) and checked by ServeChunk, Open and CheckBlob instead of a re-hash.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func chunkCRC(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

func (s *Store) blobPath(d [32]byte) string {
	return filepath.Join(s.blobDir, blobstore.DigestCID(d).String())
}

func (s *Store) partialPath(d [32]byte) string {
	return filepath.Join(s.partDir, blobstore.DigestCID(d).String())
}

// haveKey is k + blob digest + chunk index: chunk i of the blob is stored in its file and verified; the value is
// the chunk's CRC32C, 4 bytes big-endian.
func haveKey(d [32]byte, i int) []byte {
	k := make([]byte, 37)
	k[0] = prefixHave
	copy(k[1:], d[:])
	binary.BigEndian.PutUint32(k[33:], uint32(i))
	return k
}

func encodeCRC(c uint32) []byte { return binary.BigEndian.AppendUint32(nil, c) }

// chunkCRCs reads the have keys of blob d: which chunks are stored, and their CRC32C.
func chunkCRCs(txn *badger.Txn, d [32]byte, m *blobstore.Manifest) (have []bool, crcs []uint32, err error) {
	have = make([]bool, len(m.Chunks))
	crcs = make([]uint32, len(m.Chunks))
	it := txn.NewIterator(badger.IteratorOptions{Prefix: key(prefixHave, d), PrefetchValues: true, PrefetchSize: 256})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) != 37 {
			continue
		}
		i := int(binary.BigEndian.Uint32(k[33:]))
		if i >= len(m.Chunks) {
			continue
		}
		err := it.Item().Value(func(v []byte) error {
			if len(v) != 4 {
				return fmt.Errorf("%w: checksum of chunk %d of %s is %d bytes", blobstore.ErrInvalidData, i, blobstore.DigestCID(d), len(v))
			}
			crcs[i] = binary.BigEndian.Uint32(v)
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
		have[i] = true
	}
	return have, crcs, nil
}

func haveChunks(txn *badger.Txn, d [32]byte, m *blobstore.Manifest) ([]bool, error) {
	have, _, err := chunkCRCs(txn, d, m)
	return have, err
}

// storedCRC returns the CRC32C of chunk i of blob d, and false if the chunk is not stored.
func storedCRC(txn *badger.Txn, d [32]byte, i int) (uint32, bool, error) {
	item, err := txn.Get(haveKey(d, i))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	var c uint32
	err = item.Value(func(v []byte) error {
		if len(v) != 4 {
			return fmt.Errorf("%w: checksum of chunk %d of %s is %d bytes", blobstore.ErrInvalidData, i, blobstore.DigestCID(d), len(v))
		}
		c = binary.BigEndian.Uint32(v)
		return nil
	})
	return c, err == nil, err
}

// deletePrefix deletes every key with this prefix, in batches (not atomically: callers delete the keys that
// decide first, and cleanup at Open removes what a crash left).
func (s *Store) deletePrefix(prefix []byte) error {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return err
	}
	return s.deleteKeys(keys)
}

func (s *Store) deleteKeys(keys [][]byte) error {
	s.gate.RLock()
	defer s.gate.RUnlock()
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// setKeys writes keys and values in batches (not atomically; see deletePrefix).
func (s *Store) setKeys(keys, values [][]byte) error {
	s.gate.RLock()
	defer s.gate.RUnlock()
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for i, k := range keys {
		if err := wb.Set(k, values[i]); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// errFileMissing: a blob's file is not where its state says; for a complete blob that is damage.
var errFileMissing = errors.New("blob file missing")

// openBlob opens the file of a complete or partial blob for reading, with its manifest and state, taken together
// (no commit or quarantine moves the file meanwhile).
func (s *Store) openBlob(d [32]byte) (*os.File, *blobstore.Manifest, blobState, error) {
	s.filesMu.RLock()
	defer s.filesMu.RUnlock()
	m, st, err := s.viewManifest(d)
	if err != nil {
		return nil, nil, stateAbsent, err
	}
	path := s.blobPath(d)
	if st == statePartial {
		path = s.partialPath(d)
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, m, st, fmt.Errorf("%w: %s: %w", blobstore.ErrInvalidData, path, errFileMissing)
	}
	if err != nil {
		return nil, m, st, err
	}
	return f, m, st, nil
}

// preadChunk appends chunk i of m, read from f, to dst. A short file is ErrInvalidData.
func preadChunk(f *os.File, m *blobstore.Manifest, i int, dst []byte) ([]byte, error) {
	start := len(dst)
	n := m.ChunkLen(i)
	dst = growTo(dst, start+n)
	k, err := f.ReadAt(dst[start:start+n], int64(m.ChunkOffset(i)))
	if k < n {
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: chunk %d of %s: file ends after %d of its %d bytes", blobstore.ErrInvalidData, i, f.Name(), k, n)
		}
		return dst[:start], err
	}
	return dst[:start+n], nil
}

func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n)
	copy(nb, b)
	return nb
}
