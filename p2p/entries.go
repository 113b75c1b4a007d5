package p2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// Length-prefixed entries: the framing of the record log on disk and of every pull-sync stream (records and
// channels). Each entry is a u32 little-endian length, never 0, then that many bytes.
const entryLenPrefix = 4

func appendEntry(b, doc []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(doc)))
	return append(b, doc...)
}

// readEntries calls fn for each entry of at most max bytes until EOF or fn returns false; a zero or oversized
// length or a cut entry is an error. The slice fn gets is reused for the next entry.
func readEntries(r io.Reader, max int, fn func([]byte) bool) error {
	var n [entryLenPrefix]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, n[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("truncated length: %w", err)
		}
		l := binary.LittleEndian.Uint32(n[:])
		if l == 0 || l > uint32(max) {
			return fmt.Errorf("entry of %d bytes, limit %d", l, max)
		}
		buf = slices.Grow(buf[:0], int(l))[:l]
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("truncated entry: %w", noEOF(err))
		}
		if !fn(buf) {
			return nil
		}
	}
}

// serveEntries answers a pull: docs as entries, then the stream closes.
func serveEntries(st network.Stream, docs [][]byte) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(syncTimeout))
	w := bufio.NewWriter(st)
	for _, d := range docs {
		if _, err := w.Write(appendEntry(nil, d)); err != nil {
			st.Reset()
			return
		}
	}
	if err := w.Flush(); err != nil {
		st.Reset()
	}
}

// pullEntries reads a peer's answer to a pull (at most maxCount entries of maxSize bytes), calling fn for each;
// fn reports whether the entry was new. what names the entries in errors.
func pullEntries(ctx context.Context, st network.Stream, maxSize, maxCount int, what string, fn func(doc []byte) bool) (added int, err error) {
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	st.SetDeadline(time.Now().Add(syncTimeout))
	if err := st.CloseWrite(); err != nil {
		return 0, err
	}
	n := 0
	err = readEntries(bufio.NewReader(st), maxSize, func(doc []byte) bool {
		if n++; n > maxCount {
			return false
		}
		if fn(doc) {
			added++
		}
		return true
	})
	if n > maxCount {
		return added, fmt.Errorf("peer %s sent more than %d %s", st.Conn().RemotePeer(), maxCount, what)
	}
	return added, err
}
