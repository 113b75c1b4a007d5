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
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Record propagation (docs/design.md 6.5): new records are gossiped on RecordTopic; on every new connection each
// side pulls the other's whole record set over RecordSyncProtocol, so a late joiner learns existing records.
const (
	RecordTopic                    = "/npu-agent/records/1"
	RecordSyncProtocol protocol.ID = "/npu-agent/records/sync/1.0.0"
	RecordsFile                    = "records.log"

	// MaxRecords bounds the records kept (in memory and on disk); past it the oldest record of the producer
	// holding the most is dropped.
	MaxRecords  = 10000
	syncTimeout = 30 * time.Second
)

// MaxRecordsPerProducer bounds the records kept of one producer: past it that producer's oldest are dropped, so
// a producer that floods evicts only its own records.
const MaxRecordsPerProducer = 1000

// recordBook holds verified, trusted records in memory and in an append-only file in the data directory.
type recordBook struct {
	log   *slog.Logger
	trust trustPolicy
	path  string
	// max and maxPerProducer are MaxRecords and MaxRecordsPerProducer (tests lower them).
	max, maxPerProducer int

	mu         sync.Mutex
	byID       map[[32]byte]bookEntry
	byProducer map[peer.ID]int // records kept per producer
	file       *os.File
	entries    int   // records in file, including ones since evicted
	written    int64 // bytes written to the file (appends and compactions), for tests
	subs       map[int]func(SignedRecord)
	nextSub    int
}

// bookEntry is a kept record and its order time: the claimed creation time, clamped to the time it was received
// (or loaded), so a record claiming a future time is not newer than any record received after it.
type bookEntry struct {
	sr SignedRecord
	at time.Time
}

func orderTime(sr SignedRecord, received time.Time) time.Time {
	if sr.Created.After(received) {
		return received
	}
	return sr.Created
}

// openRecordBook loads path (verifying every entry: the disk is not trusted either) and rewrites it compacted.
func openRecordBook(path string, trust trustPolicy, log *slog.Logger) (*recordBook, error) {
	return openRecordBookLimits(path, trust, log, MaxRecords, MaxRecordsPerProducer)
}

func openRecordBookLimits(path string, trust trustPolicy, log *slog.Logger, max, perProducer int) (*recordBook, error) {
	b := &recordBook{log: log, trust: trust, path: path, max: max, maxPerProducer: perProducer,
		byID: map[[32]byte]bookEntry{}, byProducer: map[peer.ID]int{}, subs: map[int]func(SignedRecord){}}
	f, err := os.Open(path)
	switch {
	case err == nil:
		now := time.Now()
		err = readEntries(bufio.NewReader(f), MaxRecordEnvelope, func(raw []byte) bool {
			sr, err := OpenRecord(raw, now)
			if err != nil {
				log.Warn("dropping invalid stored record", "file", path, "err", err)
			} else if trust.allows(sr.Signer) {
				b.insert(sr, now)
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
	if err := b.rewrite(); err != nil {
		return nil, err
	}
	return b, nil
}

// rewrite replaces the file with the current set (compaction) and reopens it for appending. Called with mu held
// or before use.
func (b *recordBook) rewrite() error {
	var buf []byte
	for _, sr := range b.sorted() {
		buf = appendEntry(buf, sr.Envelope)
	}
	if err := atomicfile.WriteFile(b.path, buf, 0o600); err != nil {
		return fmt.Errorf("write record log: %w", err)
	}
	b.written += int64(len(buf))
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

// sorted returns the records oldest first by order time (then by ID), so files and sync answers are
// deterministic.
func (b *recordBook) sorted() []SignedRecord {
	es := make([]bookEntry, 0, len(b.byID))
	for _, e := range b.byID {
		es = append(es, e)
	}
	slices.SortFunc(es, compareEntries)
	out := make([]SignedRecord, len(es))
	for i, e := range es {
		out[i] = e.sr
	}
	return out
}

func compareEntries(x, y bookEntry) int {
	if c := x.at.Compare(y.at); c != 0 {
		return c
	}
	return slices.Compare(x.sr.ID[:], y.sr.ID[:])
}

// insert keeps sr (new), then evicts: past the producer's cap, that producer's oldest record; past the total cap,
// the oldest record of the producer holding the most. So a producer's records are evicted only by its own, or
// when it holds more than any other. Called with mu held or before use.
func (b *recordBook) insert(sr SignedRecord, received time.Time) {
	if _, ok := b.byID[sr.ID]; ok {
		return
	}
	b.byID[sr.ID] = bookEntry{sr: sr, at: orderTime(sr, received)}
	b.byProducer[sr.Signer]++
	if b.byProducer[sr.Signer] > b.maxPerProducer {
		b.evictOldestOf(sr.Signer)
	}
	if len(b.byID) > b.max {
		var top peer.ID
		for p, n := range b.byProducer {
			if n > b.byProducer[top] || (n == b.byProducer[top] && p > top) {
				top = p
			}
		}
		b.evictOldestOf(top)
	}
}

func (b *recordBook) evictOldestOf(p peer.ID) {
	var oldest *bookEntry
	for _, e := range b.byID {
		if e.sr.Signer == p && (oldest == nil || compareEntries(e, *oldest) < 0) {
			oldest = &e
		}
	}
	if oldest == nil {
		return
	}
	delete(b.byID, oldest.sr.ID)
	if b.byProducer[p]--; b.byProducer[p] <= 0 {
		delete(b.byProducer, p)
	}
}

// add keeps sr if it is trusted and new, appends it to the file and tells subscribers. It reports whether sr was
// new and kept. The file is compacted (rewritten) only once it holds twice the records kept (and at least the
// cap), so a flood costs appends, not a rewrite per record.
func (b *recordBook) add(sr SignedRecord) (bool, error) {
	if !b.trust.allows(sr.Signer) {
		return false, fmt.Errorf("%w: %s", ErrUntrusted, sr.Signer)
	}
	b.mu.Lock()
	if _, ok := b.byID[sr.ID]; ok {
		b.mu.Unlock()
		return false, nil
	}
	b.insert(sr, time.Now())
	_, kept := b.byID[sr.ID]
	var err error
	if kept && b.file != nil {
		e := appendEntry(nil, sr.Envelope)
		_, err = b.file.Write(e)
		b.entries++
		b.written += int64(len(e))
		if b.entries >= 2*max(len(b.byID), b.max) {
			err = b.rewrite()
		}
	}
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
