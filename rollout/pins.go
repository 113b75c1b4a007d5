package rollout

import (
	"errors"
	"fmt"
	"sort"
)

// KeepVersions is how many of the highest versions of each rollout stay pinned: the current one and the one
// before it, so going back is a new manifest, not a new fetch or compile.
const KeepVersions = 2

// ErrInvalidHistory is returned by PinSet for an inconsistent history.
var ErrInvalidHistory = errors.New("invalid rollout history")

// Resolved is one accepted version of a rollout with the compiled blobs this agent resolved for it.
type Resolved struct {
	Manifest *Manifest
	Blobs    map[string]string // profile ID → compiled blob CID; a profile still unresolved is absent
}

// Ref names a rollout version.
type Ref struct {
	Name    string `json:"name"`
	Version uint64 `json:"version"`
}

// PinnedBlob is a blob a kept version needs and what it is for.
type PinnedBlob struct {
	Blob      string `json:"blob"`
	ModelID   string `json:"model_id"`
	ProfileID string `json:"profile_id,omitempty"` // a compiled blob's profile; empty for a source file
	Role      string `json:"role,omitempty"`       // a source file's role; empty for a compiled blob
	// CacheEntry is the name of an OpenVINO cache entry the manifest names; empty otherwise.
	CacheEntry string `json:"cache_entry,omitempty"`
}

// PinPlan is what PinSet decides.
type PinPlan struct {
	Keep    []Ref        `json:"keep"`    // versions kept, by name then version
	Drop    []Ref        `json:"drop"`    // versions released
	Pin     []PinnedBlob `json:"pin"`     // blobs the kept versions need, by blob then use
	Release []string     `json:"release"` // blobs only dropped versions used, sorted: unpin them
}

// PinSet keeps the KeepVersions highest versions of every rollout in history and releases the rest. A blob is
// released only if no kept version of any rollout uses it, so a rollback (a new version naming an older model)
// and two rollouts sharing a model keep their blobs. The agent should unpin only blobs it pinned for rollouts.
func PinSet(history []Resolved) (PinPlan, error) {
	byName := map[string][]Resolved{}
	for i, r := range history {
		if r.Manifest == nil {
			return PinPlan{}, fmt.Errorf("%w: entry %d has no manifest", ErrInvalidHistory, i+1)
		}
		if err := checkResolved(r); err != nil {
			return PinPlan{}, err
		}
		byName[r.Manifest.Name] = append(byName[r.Manifest.Name], r)
	}
	var plan PinPlan
	var kept, dropped []Resolved
	for name, rs := range byName {
		sort.Slice(rs, func(i, j int) bool { return rs[i].Manifest.Version > rs[j].Manifest.Version })
		for i := 1; i < len(rs); i++ {
			if rs[i].Manifest.Version == rs[i-1].Manifest.Version {
				return PinPlan{}, fmt.Errorf("%w: %s version %d listed twice", ErrInvalidHistory, name, rs[i].Manifest.Version)
			}
		}
		n := min(KeepVersions, len(rs))
		kept, dropped = append(kept, rs[:n]...), append(dropped, rs[n:]...)
	}

	pinned := map[PinnedBlob]bool{}
	need := map[string]bool{}
	for _, r := range kept {
		plan.Keep = append(plan.Keep, ref(r))
		for _, b := range blobsOf(r) {
			pinned[b], need[b.Blob] = true, true
		}
	}
	released := map[string]bool{}
	for _, r := range dropped {
		plan.Drop = append(plan.Drop, ref(r))
		for _, b := range blobsOf(r) {
			if !need[b.Blob] {
				released[b.Blob] = true
			}
		}
	}
	for b := range pinned {
		plan.Pin = append(plan.Pin, b)
	}
	for b := range released {
		plan.Release = append(plan.Release, b)
	}
	sortRefs(plan.Keep)
	sortRefs(plan.Drop)
	sort.Slice(plan.Pin, func(i, j int) bool {
		a, b := plan.Pin[i], plan.Pin[j]
		if a.Blob != b.Blob {
			return a.Blob < b.Blob
		}
		if a.ModelID != b.ModelID {
			return a.ModelID < b.ModelID
		}
		if a.ProfileID != b.ProfileID {
			return a.ProfileID < b.ProfileID
		}
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		return a.CacheEntry < b.CacheEntry
	})
	sort.Strings(plan.Release)
	return plan, nil
}

// checkResolved makes sure every resolved blob is for a profile of the manifest and is a CID, so a bug upstream
// cannot make PinSet pin or release something unrelated.
func checkResolved(r Resolved) error {
	ids, err := r.Manifest.ProfileIDs()
	if err != nil {
		return fmt.Errorf("%w: %s version %d: %w", ErrInvalidHistory, r.Manifest.Name, r.Manifest.Version, err)
	}
	known := make(map[string]bool, len(ids))
	for _, id := range ids {
		known[id] = true
	}
	for id, blob := range r.Blobs {
		if !known[id] {
			return fmt.Errorf("%w: %s version %d: blob for profile %s, which it does not have", ErrInvalidHistory,
				r.Manifest.Name, r.Manifest.Version, id)
		}
		if _, err := parseCanonicalCID(blob); err != nil {
			return fmt.Errorf("%w: %s version %d: profile %s: %w", ErrInvalidHistory, r.Manifest.Name, r.Manifest.Version, id, err)
		}
	}
	return nil
}

func blobsOf(r Resolved) []PinnedBlob {
	m := r.Manifest
	out := make([]PinnedBlob, 0, len(m.Model.Files)+len(r.Blobs)+len(m.CacheEntries))
	for _, f := range m.Model.Files {
		out = append(out, PinnedBlob{Blob: f.Blob, ModelID: m.Model.ID, Role: f.Role})
	}
	for id, blob := range r.Blobs {
		out = append(out, PinnedBlob{Blob: blob, ModelID: m.Model.ID, ProfileID: id})
	}
	for _, e := range m.CacheEntries {
		out = append(out, PinnedBlob{Blob: e.Blob, ModelID: m.Model.ID, CacheEntry: e.Name})
	}
	return out
}

func ref(r Resolved) Ref { return Ref{Name: r.Manifest.Name, Version: r.Manifest.Version} }

func sortRefs(refs []Ref) {
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].Name != refs[j].Name {
			return refs[i].Name < refs[j].Name
		}
		return refs[i].Version < refs[j].Version
	})
}
