package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
)

// OpenVINO cache entries (docs/design.md section 10). The agent stays the only writer of records: a cache entry
// harvested from a CACHE_DIR or fetched from a peer is indexed only after its stored bytes parsed as an entry and
// passed ovcache.CheckEntry for this host. Records of cache entries have Kind ovcache.RecordKind, the entry's name
// as model ID and its key as profile ID; Ensure never returns them (their kind is not a blob kind).

// CacheKey is this host's key for the cache entries that OpenVINO build `build` writes here.
func (a *Agent) CacheKey(build string) (string, error) {
	return ovcache.Key(a.opts.Rules, a.opts.Host, build)
}

// PutCacheEntry streams a cache entry read from r (size bytes) into the store, parses and checks the STORED bytes
// (a file that changed while it was read fails here), then indexes and announces the record "entry name for key
// K". An entry that fails is removed from the store again unless it was there before or a record names it.
func (a *Agent) PutCacheEntry(ctx context.Context, name, build string, r io.Reader, size, maxSize int64) (blobstore.Record, error) {
	if err := ovcache.CheckName(name); err != nil {
		return blobstore.Record{}, err
	}
	if maxSize > 0 && size > maxSize {
		return blobstore.Record{}, fmt.Errorf("%w: %d bytes, the limit is %d", ovcache.ErrTooLarge, size, maxSize)
	}
	key, err := a.CacheKey(build)
	if err != nil {
		return blobstore.Record{}, err
	}
	m, err := a.opts.Store.Put(ctx, io.LimitReader(r, size))
	if err != nil {
		return blobstore.Record{}, err
	}
	c := m.CID()
	release := a.use(c)
	defer release()
	if int64(m.Size) != size {
		a.dropUnreferenced(ctx, c)
		return blobstore.Record{}, fmt.Errorf("cache entry %s: %d bytes read, %d expected (changed while read)", name, m.Size, size)
	}
	if err := a.checkCacheEntry(ctx, c, build, maxSize); err != nil {
		a.dropUnreferenced(ctx, c)
		return blobstore.Record{}, fmt.Errorf("cache entry %s: %w", name, err)
	}
	return a.indexCacheEntry(ctx, name, key, c, m.Size)
}

// indexCacheEntry records and announces "entry name for key is blob c" with this host as producer.
func (a *Agent) indexCacheEntry(ctx context.Context, name, key string, c cid.Cid, size uint64) (blobstore.Record, error) {
	rec := blobstore.Record{
		ModelID: name, ProfileID: key, Blob: c, Fingerprint: a.hostJSON, Size: size,
		Created: time.Now().UTC(), Producer: a.opts.Producer, Kind: ovcache.RecordKind,
	}
	if err := a.opts.Store.AddRecord(ctx, rec); err != nil {
		return blobstore.Record{}, err
	}
	a.publish(ctx, rec)
	return rec, nil
}

// IndexCacheEntry indexes stored blob c, which a rollout names as the OpenVINO cache entry name of build build
// (docs/design.md 10.6): its bytes are parsed and checked for this host as a harvested entry's are, then it is
// recorded and announced under this host's key for build, from where the sharer writes it into every shared
// directory whose application runs that build. An entry that cannot serve this host is not an error: false.
func (a *Agent) IndexCacheEntry(ctx context.Context, name, build string, c cid.Cid) (bool, error) {
	if err := ovcache.CheckName(name); err != nil {
		return false, err
	}
	key, err := a.CacheKey(build)
	if err != nil {
		return false, err
	}
	release := a.use(c)
	defer release()
	if err := a.checkCacheEntry(ctx, c, build, 0); errors.Is(err, ErrIncompatible) {
		a.opts.Logger.Info("a rollout's cache entry does not serve this host", "entry", name, "blob", c, "err", err)
		return false, nil
	} else if err != nil {
		return false, err
	}
	recs, err := a.opts.Store.Records(ctx, name, key)
	if err != nil {
		return false, err
	}
	if slices.ContainsFunc(recs, func(r blobstore.Record) bool { return r.Kind == ovcache.RecordKind && r.Blob.Equals(c) }) {
		return true, nil // indexed before (the engine prepares again at every start)
	}
	info, err := a.opts.Store.Stat(ctx, c)
	if err != nil {
		return false, err
	}
	_, err = a.indexCacheEntry(ctx, name, key, c, info.Size)
	return err == nil, err
}

// checkCacheEntry parses a stored blob as a cache entry and checks it for this host.
func (a *Agent) checkCacheEntry(ctx context.Context, c cid.Cid, build string, maxSize int64) error {
	ra, err := newStoreReaderAt(ctx, a.opts.Store, c)
	if err != nil {
		return err
	}
	e, err := ovcache.Parse(ra, ra.Size(), maxSize)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRecordMismatch, err)
	}
	if err := ovcache.CheckEntry(a.opts.Rules, e, a.opts.Host, build); err != nil {
		return fmt.Errorf("%w: %w", ErrIncompatible, err)
	}
	return nil
}

// dropUnreferenced deletes a blob no record names (a put that failed its checks).
func (a *Agent) dropUnreferenced(ctx context.Context, c cid.Cid) {
	if recs, err := a.opts.Store.Records(ctx, "", ""); err != nil ||
		slices.ContainsFunc(recs, func(x blobstore.Record) bool { return x.Blob.Equals(c) }) {
		return
	}
	if err := a.opts.Store.Delete(ctx, c); err != nil && !errors.Is(err, blobstore.ErrNotFound) {
		a.opts.Logger.Warn("cannot remove a rejected cache entry", "blob", c, "err", err)
	}
}

// CacheRecords lists the records of cache entries for key that this host may use, from its store and (with a
// fleet) its peers, newest first: kind ovcache.RecordKind, a valid entry name, a producer fingerprint the rules
// accept for this host, and neither the record nor its blob rejected here.
func (a *Agent) CacheRecords(ctx context.Context, key string) ([]blobstore.Record, error) {
	recs, err := a.opts.Store.Records(ctx, "", key)
	if err != nil {
		return nil, err
	}
	if a.opts.Fleet != nil {
		recs = append(recs, a.opts.Fleet.Records("", key)...)
	}
	type id struct {
		name string
		blob cid.Cid
	}
	seen := map[id]bool{}
	var out []blobstore.Record
	for _, r := range recs {
		if r.Kind != ovcache.RecordKind || r.ProfileID != key || !ovcache.ValidName(r.ModelID) ||
			seen[id{r.ModelID, r.Blob}] || a.isRejected(r, ovcache.RecordKind) {
			continue
		}
		var fp compat.Fingerprint
		if err := json.Unmarshal(r.Fingerprint, &fp); err != nil {
			continue
		}
		if d := compat.Check(a.opts.Rules, fp, a.opts.Host, compat.KindModel); !d.Compatible {
			continue
		}
		seen[id{r.ModelID, r.Blob}] = true
		out = append(out, r)
	}
	slices.SortStableFunc(out, func(x, y blobstore.Record) int { return y.Created.Compare(x.Created) })
	return out, nil
}

// FetchCacheEntry makes the blob of a cache-entry record local: fetched from peers unless held, then parsed from
// the store and checked for this host (the record's claim is never enough), then indexed. A blob that fails is
// remembered as rejected (by its bytes when it cannot serve this host, by the record when the record misdescribes
// it) and removed unless it was held before.
func (a *Agent) FetchCacheEntry(ctx context.Context, r blobstore.Record, build string, maxSize int64) error {
	if r.Kind != ovcache.RecordKind {
		return fmt.Errorf("record of kind %q is not a cache entry", r.Kind)
	}
	if err := ovcache.CheckName(r.ModelID); err != nil {
		return err
	}
	if maxSize > 0 && r.Size > uint64(maxSize) {
		return fmt.Errorf("%w: record says %d bytes, the limit is %d", ovcache.ErrTooLarge, r.Size, maxSize)
	}
	release := a.use(r.Blob)
	defer release()
	held, err := a.opts.Store.Has(ctx, r.Blob)
	if err != nil {
		return err
	}
	if !held {
		if a.opts.Fleet == nil {
			return errNoFleet
		}
		act := a.begin(PhaseFetch, r.ModelID, r.ProfileID, r.Blob)
		err := a.opts.Fleet.Fetch(ctx, r.Blob, func(done, total int64) { act.update(a, done, total) })
		a.end(act)
		if err != nil {
			return err
		}
	}
	err = a.checkCacheEntry(ctx, r.Blob, build, maxSize)
	if err == nil {
		var info blobstore.Info
		if info, err = a.opts.Store.Stat(ctx, r.Blob); err == nil && r.Size != 0 && info.Size != r.Size {
			err = fmt.Errorf("%w: %d bytes, its record says %d", ErrRecordMismatch, info.Size, r.Size)
		}
	}
	if err != nil {
		a.reject(ctx, r, ovcache.RecordKind, err, held)
		return fmt.Errorf("cache entry %s from %s: %w", r.ModelID, r.Producer, err)
	}
	return a.opts.Store.AddRecord(ctx, r)
}

// OpenCacheEntry streams a stored cache entry (every chunk re-hashed as it is read); gc keeps the blob until the
// returned release is called.
func (a *Agent) OpenCacheEntry(ctx context.Context, c cid.Cid) (blobstore.Reader, func(), error) {
	release := a.use(c)
	rd, err := a.opts.Store.Open(ctx, c)
	if err != nil {
		release()
		return nil, nil, err
	}
	return rd, release, nil
}

// CacheEntryRejected records that this host's application removed a populated entry (OpenVINO removes what it
// cannot load): the blob is never offered for that name here again in this process, and a record of kind
// ovcache.RejectedKind with this host's fingerprint tells peers (a negative result is fleet knowledge).
func (a *Agent) CacheEntryRejected(ctx context.Context, r blobstore.Record) {
	a.mu.Lock()
	if len(a.rejected) >= maxRejected {
		clear(a.rejected)
	}
	a.rejected[rejectKey(r, ovcache.RecordKind, true)] = true
	a.mu.Unlock()
	neg := blobstore.Record{
		ModelID: r.ModelID, ProfileID: r.ProfileID, Blob: r.Blob, Fingerprint: a.hostJSON, Size: r.Size,
		Created: time.Now().UTC(), Producer: a.opts.Producer, Kind: ovcache.RejectedKind,
	}
	if has, err := a.opts.Store.Has(ctx, r.Blob); err != nil || !has {
		return
	}
	if a.opts.Fleet == nil {
		_ = a.opts.Store.AddRecord(ctx, neg)
		return
	}
	a.publish(ctx, neg)
}

// CheckCacheUsable says whether entry e of this host's own cache directory, whose application runs OpenVINO
// build (empty: unknown), can still load here; an error means it is stale.
func (a *Agent) CheckCacheUsable(e *ovcache.Entry, build string) error {
	return ovcache.CheckUsable(a.opts.Rules, e, a.opts.Host, build)
}
