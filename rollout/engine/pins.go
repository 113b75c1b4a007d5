package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/rollout"
)

// history is the stored list of a rollout's versions whose blobs may still be pinned.
type history struct {
	Versions []historyEntry `json:"versions"`
}

type historyEntry struct {
	Manifest *rollout.Manifest `json:"manifest"`
	Blobs    map[string]string `json:"blobs,omitempty"` // profile ID → compiled blob CID resolved here
}

// updatePins records m (with the blobs resolved for it, nil if not selected) in its rollout's history and applies
// rollout.PinSet over every rollout: blobs of kept versions that are in the store are pinned, blobs Rollouts
// pinned that no kept version needs are unpinned, versions dropped are forgotten. A blob pinned by someone else
// (`npu-agent pin`) is left alone.
func (r *Rollouts) updatePins(ctx context.Context, m *rollout.Manifest, blobs map[string]string) error {
	r.pinMu.Lock()
	defer r.pinMu.Unlock()
	hist, err := r.loadHistory(m.Name)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(hist.Versions, func(e historyEntry) bool { return e.Manifest.Version == m.Version })
	switch {
	case i < 0:
		hist.Versions = append(hist.Versions, historyEntry{Manifest: m, Blobs: blobs})
	case blobs != nil:
		hist.Versions[i].Blobs = blobs
	}
	if err := r.saveJSON(historyKeyPrefix+m.Name, hist); err != nil {
		return err
	}

	keys, err := r.opts.KV.Keys(historyKeyPrefix)
	if err != nil {
		return err
	}
	all := map[string]*history{}
	var resolved []rollout.Resolved
	for _, k := range keys {
		name := strings.TrimPrefix(k, historyKeyPrefix)
		h, err := r.loadHistory(name)
		if err != nil {
			return err
		}
		all[name] = h
		for _, e := range h.Versions {
			resolved = append(resolved, rollout.Resolved{Manifest: e.Manifest, Blobs: e.Blobs})
		}
	}
	plan, err := rollout.PinSet(resolved)
	if err != nil {
		return err
	}
	owned := map[string]bool{}
	if err := r.loadJSON(pinsKey, &owned); err != nil && !errors.Is(err, rollout.ErrNotFound) {
		return err
	}
	store := r.opts.Store
	need := map[string]bool{}
	for _, pb := range plan.Pin {
		need[pb.Blob] = true
		c, err := blobstore.ParseCID(pb.Blob)
		if err != nil {
			return err
		}
		info, err := store.Stat(ctx, c)
		if errors.Is(err, blobstore.ErrNotFound) || err == nil && !info.Complete {
			continue // a source this host never fetched (not selected), or a blob gc took
		}
		if err != nil {
			return err
		}
		if info.Pinned {
			continue // ours already, or the operator's: never ours to unpin
		}
		if err := store.Pin(ctx, c, true); err != nil {
			return err
		}
		owned[pb.Blob] = true
	}
	for b := range owned {
		if need[b] {
			continue
		}
		c, err := blobstore.ParseCID(b)
		if err == nil {
			err = store.Pin(ctx, c, false)
		}
		if err != nil && !errors.Is(err, blobstore.ErrNotFound) {
			return err
		}
		delete(owned, b)
		r.log.Info("rollout blob unpinned", "blob", b)
	}
	if err := r.saveJSON(pinsKey, owned); err != nil {
		return err
	}
	kept := map[rollout.Ref]bool{}
	for _, k := range plan.Keep {
		kept[k] = true
	}
	for name, h := range all {
		n := len(h.Versions)
		h.Versions = slices.DeleteFunc(h.Versions, func(e historyEntry) bool {
			return !kept[rollout.Ref{Name: name, Version: e.Manifest.Version}]
		})
		if len(h.Versions) != n {
			if err := r.saveJSON(historyKeyPrefix+name, h); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *Rollouts) loadHistory(name string) (*history, error) {
	h := &history{}
	err := r.loadJSON(historyKeyPrefix+name, h)
	if errors.Is(err, rollout.ErrNotFound) {
		return h, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range h.Versions {
		if e.Manifest == nil || e.Manifest.Name != name {
			return nil, fmt.Errorf("%w: history of %s holds another rollout", rollout.ErrCorruptState, name)
		}
		if err := e.Manifest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: history of %s: %w", rollout.ErrCorruptState, name, err)
		}
	}
	return h, nil
}

func (r *Rollouts) loadJSON(key string, v any) error {
	b, err := r.opts.KV.Get(key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %v", rollout.ErrCorruptState, key, err)
	}
	return nil
}

func (r *Rollouts) saveJSON(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.opts.KV.Put(key, b)
}
