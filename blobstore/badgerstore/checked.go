package badgerstore

import (
	"encoding/binary"
	"errors"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// A check stamp (key s + blob digest, docs/design.md 3.14) says that a complete blob's file held exactly the bytes
// its chunk checksums name at a time, and what the file's identity was then. CheckBlob trusts it instead of
// reading the file while the file keeps that identity and the stamp is younger than checkValidFor: the hand-off
// of a blob verified on arrival, or checked since, reads nothing, across restarts too.
//
// checkValidFor bounds how long a stamp spares the read: damage that keeps a file's identity (bit rot on the
// medium, a raw write to the device) is found by the next check after it, by ServeChunk's checksum when a
// peer asks for the chunk, and by verify.
const checkValidFor = 7 * 24 * time.Hour

// fileID is what changes when a file is replaced or written through the filesystem: device, inode, size,
// modification and status-change times (ns). ctime changes on every write, chmod, link and rename, and cannot be
// set back by a user.
type fileID struct {
	dev, ino, size uint64
	mtime, ctime   int64
}

const stampLen = 8 + 5*8

// errNoFileID: this platform gives no fileID (statID); nothing is stamped and every check reads the file.
var errNoFileID = errors.New("no file identity on this platform")

func encodeStamp(at time.Time, id fileID) []byte {
	b := make([]byte, 0, stampLen)
	for _, v := range []uint64{uint64(at.UnixNano()), id.dev, id.ino, id.size, uint64(id.mtime), uint64(id.ctime)} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

// decodeStamp decodes a stamp; false for any other length (then the stamp counts as absent).
func decodeStamp(b []byte) (time.Time, fileID, bool) {
	if len(b) != stampLen {
		return time.Time{}, fileID{}, false
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(b[8*i:]) }
	return time.Unix(0, int64(u(0))), fileID{dev: u(1), ino: u(2), size: u(3), mtime: int64(u(4)), ctime: int64(u(5))}, true
}

// setStamp writes d's check stamp in txn for the file at path as it is now; nothing where the platform has no
// fileID. at is when the check that vouches for the bytes began.
func setStamp(txn *badger.Txn, d [32]byte, path string, at time.Time) error {
	id, err := statID(path)
	if errors.Is(err, errNoFileID) {
		return nil
	}
	if err != nil {
		return err
	}
	return txn.Set(key(prefixChecked, d), encodeStamp(at, id))
}

// stillChecked reports whether complete blob d has a check stamp younger than checkValidFor (and not from the
// future: the clock was set back) whose fileID its file still has.
func (s *Store) stillChecked(d [32]byte) bool {
	var v []byte
	err := s.db.View(func(txn *badger.Txn) error {
		if st, err := s.state(txn, d); err != nil || st != stateComplete {
			return errors.Join(err, errNoStamp)
		}
		item, err := txn.Get(key(prefixChecked, d))
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if err != nil {
		return false
	}
	at, id, ok := decodeStamp(v)
	if age := s.opts.now().Sub(at); !ok || age < 0 || age >= checkValidFor {
		return false
	}
	now, err := statID(s.blobPath(d))
	return err == nil && now == id
}

var errNoStamp = errors.New("no check stamp")
