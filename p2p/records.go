package p2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Record propagation (docs/design.md 6.5): new records are gossiped on RecordTopic; on every new connection each
// side pulls the other's whole record set over RecordSyncProtocol, so a late joiner learns existing records.
const (
	RecordTopic                    = "/npu-agent/records/1"
	RecordSyncProtocol protocol.ID = "/npu-agent/records/sync/1.0.0"
	RecordsFile                    = "records.log"

	// MaxRecords bounds the records kept (in memory and on disk); past it the oldest by Created are dropped.
	MaxRecords  = 10000
	syncTimeout = 30 * time.Second
)

// recordBook holds verified, trusted records in memory and in an append-only file in the data directory.
type recordBook struct {
	log   *slog.Logger
	trust trustPolicy
	path  string

	mu      sync.Mutex
	byID    map[[32]byte]SignedRecord
	file    *os.File
	entries int // records in file, including ones since evicted
	subs    map[int]func(SignedRecord)
	nextSub int
}

// openRecordBook loads path (verifying every entry: the disk is not trusted either) and rewrites it compacted.
func openRecordBook(path string, trust trustPolicy, log *slog.Logger) (*recordBook, error) {
	b := &recordBook{log: log, trust: trust, path: path, byID: map[[32]byte]SignedRecord{}, subs: map[int]func(SignedRecord){}}
	f, err := os.Open(path)
	switch {
	case err == nil:
		err = readEntries(bufio.NewReader(f), MaxRecordEnvelope, func(raw []byte) bool {
			sr, err := OpenRecord(raw, time.Now())
			if err != nil {
				log.Warn("dropping invalid stored record", "file", path, "err", err)
			} else if trust.allows(sr.Signer) {
				b.byID[sr.ID] = sr
			}
			return true
		})
		f.Close()
		if err != nil {
			log.Warn("record log damaged; keeping the records before the damage", "file", path, "err", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("open record log: %w", err)
	}
	b.evict()
	if err := b.rewrite(); err != nil {
		return nil, err
	}
	return b, nil
}

// rewrite replaces the file with the current set and reopens it for appending. Called with mu held or before use.
func (b *recordBook) rewrite() error {
	var buf []byte
	for _, sr := range b.sorted() {
		buf = appendEntry(buf, sr.Envelope)
	}
	if err := atomicfile.WriteFile(b.path, buf, 0o600); err != nil {
		return fmt.Errorf("write record log: %w", err)
	}
	if b.file != nil {
		b.file.Close()
	}
	f, err := os.OpenFile(b.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open record log: %w", err)
	}
	b.file, b.entries = f, len(b.byID)
	return nil
}

// sorted returns the records oldest first (then by ID), so files and sync answers are deterministic.
func (b *recordBook) sorted() []SignedRecord {
	out := make([]SignedRecord, 0, len(b.byID))
	for _, sr := range b.byID {
		out = append(out, sr)
	}
	slices.SortFunc(out, func(x, y SignedRecord) int {
		if c := x.Created.Compare(y.Created); c != 0 {
			return c
		}
		return slices.Compare(x.ID[:], y.ID[:])
	})
	return out
}

func (b *recordBook) evict() {
	if len(b.byID) <= MaxRecords {
		return
	}
	for _, sr := range b.sorted()[:len(b.byID)-MaxRecords] {
		delete(b.byID, sr.ID)
	}
}

// add keeps sr if it is trusted and new, persists it and tells subscribers. It reports whether sr was new.
func (b *recordBook) add(sr SignedRecord) (bool, error) {
	if !b.trust.allows(sr.Signer) {
		return false, fmt.Errorf("%w: %s", ErrUntrusted, sr.Signer)
	}
	b.mu.Lock()
	if _, ok := b.byID[sr.ID]; ok {
		b.mu.Unlock()
		return false, nil
	}
	b.byID[sr.ID] = sr
	var err error
	if len(b.byID) > MaxRecords || b.entries >= 2*MaxRecords {
		b.evict()
		err = b.rewrite()
	} else if b.file != nil {
		_, err = b.file.Write(appendEntry(nil, sr.Envelope))
		b.entries++
	}
	_, kept := b.byID[sr.ID]
	subs := make([]func(SignedRecord), 0, len(b.subs))
	for _, fn := range b.subs {
		subs = append(subs, fn)
	}
	b.mu.Unlock()
	if err != nil {
		// The record is kept in memory and will be re-learnt by sync after a restart.
		b.log.Warn("cannot persist record", "err", err)
	}
	if !kept {
		return false, nil
	}
	for _, fn := range subs {
		fn(sr)
	}
	return true, nil
}

// records lists the records for (model, profile), newest first; empty strings match all.
func (b *recordBook) records(modelID, profileID string) []SignedRecord {
	b.mu.Lock()
	all := b.sorted()
	b.mu.Unlock()
	out := make([]SignedRecord, 0, len(all))
	for i := len(all) - 1; i >= 0; i-- {
		sr := all[i]
		if (modelID == "" || sr.ModelID == modelID) && (profileID == "" || sr.ProfileID == profileID) {
			out = append(out, sr)
		}
	}
	return out
}

func (b *recordBook) subscribe(fn func(SignedRecord)) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := b.nextSub
	b.nextSub++
	b.subs[id] = fn
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs, id)
	}
}

func (b *recordBook) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file == nil {
		return nil
	}
	err := b.file.Close()
	b.file = nil
	return err
}

// serveSync answers a record pull with every record held.
func (b *recordBook) serveSync(st network.Stream) {
	b.mu.Lock()
	all := b.sorted()
	b.mu.Unlock()
	docs := make([][]byte, len(all))
	for i, sr := range all {
		docs[i] = sr.Envelope
	}
	serveEntries(st, docs)
}

// pull fetches p's records and adds the valid, trusted ones. Invalid ones are logged and skipped.
func (b *recordBook) pull(ctx context.Context, st network.Stream) (added int, err error) {
	from := st.Conn().RemotePeer()
	return pullEntries(ctx, st, MaxRecordEnvelope, MaxRecords, "records", func(raw []byte) bool {
		sr, err := OpenRecord(raw, time.Now())
		if err != nil {
			b.log.Warn("peer sent an invalid record", "peer", from, "err", err)
			return false
		}
		ok, err := b.add(sr)
		if err != nil {
			b.log.Debug("record ignored", "peer", from, "err", err)
		}
		return ok
	})
}
