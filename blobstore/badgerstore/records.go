package badgerstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/npu-agent/npu-agent/blobstore"
)

// recordPrefix is r, uvarint length and bytes of the model ID, then, if profileID is given, those of the profile.
func recordPrefix(modelID, profileID string) []byte {
	k := []byte{prefixRecord}
	k = binary.AppendUvarint(k, uint64(len(modelID)))
	k = append(k, modelID...)
	if profileID != "" {
		k = binary.AppendUvarint(k, uint64(len(profileID)))
		k = append(k, profileID...)
	}
	return k
}

// recordKey is the prefix of (model, profile), then the blob digest and the sha256 of the fingerprint: one record
// per (model, profile, blob, fingerprint); adding it again replaces it.
func recordKey(r *blobstore.Record, blob [32]byte) []byte {
	k := recordPrefix(r.ModelID, r.ProfileID)
	k = append(k, blob[:]...)
	fp := sha256.Sum256(r.Fingerprint)
	return append(k, fp[:]...)
}

// recordKeyBlob extracts the blob digest of a record key; ok is false for a malformed key.
func recordKeyBlob(k []byte) (d [32]byte, ok bool) {
	rest := k[1:]
	for range 2 {
		n, l := binary.Uvarint(rest)
		if l <= 0 || n > maxIDLen || uint64(len(rest)-l) < n {
			return d, false
		}
		rest = rest[l+int(n):]
	}
	if len(rest) != 64 {
		return d, false
	}
	return [32]byte(rest[:32]), true
}

// recordKeysOf lists the record keys that name blob d.
func recordKeysOf(txn *badger.Txn, d [32]byte) [][]byte {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixRecord}})
	defer it.Close()
	var keys [][]byte
	for it.Rewind(); it.Valid(); it.Next() {
		if b, ok := recordKeyBlob(it.Item().Key()); ok && b == d {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
	}
	return keys
}

func validateID(what, id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("record: %s must be 1 to %d bytes, is %d", what, maxIDLen, len(id))
	}
	return nil
}

// AddRecord indexes a complete blob under (model, profile). A zero Size is filled in from the manifest; another
// size than the blob's is an error.
func (s *Store) AddRecord(ctx context.Context, r blobstore.Record) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := validateID("model ID", r.ModelID); err != nil {
		return err
	}
	if err := validateID("profile ID", r.ProfileID); err != nil {
		return err
	}
	// Stored compact, as json.Marshal writes it, so that the key's fingerprint digest matches what is read back.
	var fp bytes.Buffer
	if err := json.Compact(&fp, r.Fingerprint); err != nil {
		return fmt.Errorf("record for %s: fingerprint is not valid JSON: %w", r.Blob, err)
	}
	r.Fingerprint = fp.Bytes()
	d, err := digestOf(r.Blob)
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update(func(txn *badger.Txn) error {
		m, st, err := s.manifest(txn, d)
		if err != nil {
			return fmt.Errorf("record for %s: %w", r.Blob, err)
		}
		if st != stateComplete {
			return fmt.Errorf("record for %s: %w", r.Blob, blobstore.ErrIncomplete)
		}
		if r.Size == 0 {
			r.Size = m.Size
		}
		if r.Size != m.Size {
			return fmt.Errorf("record for %s: size %d, the blob has %d", r.Blob, r.Size, m.Size)
		}
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("record for %s: %w", r.Blob, err)
		}
		if len(v) > maxRecordSize {
			return fmt.Errorf("record for %s: %d bytes encoded, limit %d", r.Blob, len(v), maxRecordSize)
		}
		return txn.Set(recordKey(&r, d), v)
	})
}

// Records lists the records of (model, profile); an empty model or profile matches any. Records come in key
// order: by model, profile, blob, fingerprint digest.
func (s *Store) Records(ctx context.Context, modelID, profileID string) ([]blobstore.Record, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	prefix := []byte{prefixRecord}
	if modelID != "" {
		prefix = recordPrefix(modelID, profileID)
	}
	recs := []blobstore.Record{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			if _, ok := recordKeyBlob(item.Key()); !ok {
				continue // not a record key of this version; cleanup removes it at Open
			}
			if item.ValueSize() > maxRecordSize {
				return fmt.Errorf("%w: record of %d bytes", blobstore.ErrInvalidData, item.ValueSize())
			}
			var r blobstore.Record
			err := item.Value(func(v []byte) error { return json.Unmarshal(v, &r) })
			if err != nil {
				return fmt.Errorf("%w: record %x: %w", blobstore.ErrInvalidData, item.Key(), err)
			}
			d, _ := blobstore.Digest(r.Blob) // zero for a foreign CID: then the key cannot match
			if !bytes.Equal(recordKey(&r, d), item.Key()) {
				return fmt.Errorf("%w: record %x does not match its key", blobstore.ErrInvalidData, item.Key())
			}
			if profileID != "" && r.ProfileID != profileID {
				continue
			}
			recs = append(recs, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return recs, nil
}
