package engine

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
	"github.com/npu-agent/npu-agent/rollout"
)

// AddSource stores a source model's files as blobs (so peers can fetch them) and describes it for a manifest.
func (r *Rollouts) AddSource(ctx context.Context, path string) (rollout.SourceModel, error) {
	// Read as the API's caller could (compile.Caller in ctx): never a file it could not read itself.
	m, err := compile.LoadModelContext(ctx, path)
	if err != nil {
		return rollout.SourceModel{}, err
	}
	blobs := map[string]string{}
	for _, f := range m.Files {
		c, err := r.putFile(ctx, f)
		if err != nil {
			return rollout.SourceModel{}, err
		}
		blobs[f.Role] = c.String()
	}
	return rollout.SourceFromModel(m, blobs)
}

func (r *Rollouts) putFile(ctx context.Context, f compile.ModelFile) (cid.Cid, error) {
	fh, _, err := compile.OpenModelFile(ctx, f.Path)
	if err != nil {
		return cid.Undef, err
	}
	defer fh.Close()
	bm, err := r.opts.Store.Put(ctx, fh)
	if err != nil {
		return cid.Undef, fmt.Errorf("storing %s: %w", f.Path, err)
	}
	// The file may have changed since it was hashed: the stored bytes are what the manifest will name.
	if got := hex.EncodeToString(bm.SHA256[:]); got != f.SHA256 || int64(bm.Size) != f.Size {
		return cid.Undef, fmt.Errorf("%w: %s changed while it was being stored", compile.ErrInvalidModel, f.Path)
	}
	return bm.CID(), nil
}

// prepare brings the current version of a rollout to ready on this host, if it selects this host, and updates
// the pins. It returns the version it worked on.
func (r *Rollouts) prepare(ctx context.Context, name string) (uint64, error) {
	st, err := r.acc.State(name)
	if err != nil {
		r.log.Error("rollout state unreadable; it stays as it is", "rollout", name, "err", err)
		return 0, err
	}
	if st.Current == nil {
		return 0, nil
	}
	m := st.Current.Manifest
	log := r.log.With("rollout", name, "version", m.Version)
	if !m.Selects(r.opts.Agent.Host(), r.opts.Tags) {
		log.Info("rollout does not select this host")
		return m.Version, r.updatePins(ctx, m, nil)
	}
	if s, ok := r.currentStatus(name); ok && s.Version == m.Version && s.State == rollout.PhaseReady {
		return m.Version, nil
	}
	ids, err := m.ProfileIDs()
	if err != nil {
		return m.Version, err // unreachable: the manifest was accepted
	}
	p := &progress{r: r, m: m, profiles: map[string]string{}}
	for _, id := range ids {
		p.profiles[id] = string(rollout.PhasePending)
	}
	p.set(rollout.PhasePending, "")
	model, err := r.fetchSource(ctx, m, p)
	if err != nil {
		return m.Version, p.fail(ctx, err)
	}
	blobs := map[string]string{}
	for i, prof := range m.Profiles {
		id := ids[i]
		p.profile(id, rollout.PhaseCompiling)
		c, source, err := r.opts.Agent.EnsureBlob(ctx, model, prof, func(fetching bool) {
			if fetching {
				p.profile(id, rollout.PhaseFetching)
			} else {
				p.profile(id, rollout.PhaseCompiling)
			}
		})
		if err != nil {
			return m.Version, p.fail(ctx, fmt.Errorf("profile %s: %w", id, err), id)
		}
		blobs[id] = c.String()
		p.resolved(id, c.String())
		log.Info("rollout profile ready", "profile", id, "blob", c, "source", source)
	}
	if err := r.warmCache(ctx, m, p); err != nil {
		return m.Version, p.fail(ctx, err)
	}
	if err := r.updatePins(ctx, m, blobs); err != nil {
		return m.Version, p.fail(ctx, err)
	}
	p.set(rollout.PhaseReady, "")
	return m.Version, nil
}

// fetchSource brings the source model's blobs into the store (from peers when missing), checks them against the
// manifest and writes the model files under ModelsDir, re-hashed as OpenVINO will read them.
func (r *Rollouts) fetchSource(ctx context.Context, m *rollout.Manifest, p *progress) (compile.Model, error) {
	store := r.opts.Store
	files := make([]compile.ModelFile, 0, len(m.Model.Files))
	for _, f := range m.Model.Files {
		c, err := blobstore.ParseCID(f.Blob)
		if err != nil {
			return compile.Model{}, fmt.Errorf("%w: %w", rollout.ErrInvalidManifest, err)
		}
		has, err := store.Has(ctx, c)
		if err != nil {
			return compile.Model{}, err
		}
		if !has {
			p.set(rollout.PhaseFetching, "")
			// The manifest gives the file's size: a fetch whose blob claims more aborts before any chunk.
			if err := r.opts.Agent.FetchBlob(blobstore.WithExpectedSize(ctx, uint64(f.Size)), c); err != nil {
				return compile.Model{}, fmt.Errorf("fetching source %s file %s (blob %s): %w", f.Role, f.Name, c, err)
			}
		}
		info, err := store.Stat(ctx, c)
		if err != nil {
			return compile.Model{}, err
		}
		files = append(files, compile.ModelFile{Role: f.Role, Name: f.Name, Size: int64(info.Size), SHA256: info.SHA256})
	}
	if err := rollout.VerifySource(m, files); err != nil {
		return compile.Model{}, err
	}
	return r.writeSource(ctx, m)
}

// writeSource exports the source files to <ModelsDir>/<model id>/ (kept if already there with the right size)
// and loads the model from there; a file damaged on disk is exported again once.
func (r *Rollouts) writeSource(ctx context.Context, m *rollout.Manifest) (compile.Model, error) {
	dir := filepath.Join(r.opts.ModelsDir, m.Model.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return compile.Model{}, err
	}
	var main string
	for attempt := 0; ; attempt++ {
		for _, f := range m.Model.Files {
			path := filepath.Join(dir, f.Name) // a base name: the manifest rules allow no separators
			if f.Role != compile.RoleBin {
				main = path
			}
			if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && st.Size() == f.Size && attempt == 0 {
				continue
			}
			c, _ := blobstore.ParseCID(f.Blob) // parsed before
			if err := r.opts.Store.Export(ctx, c, path); err != nil {
				return compile.Model{}, fmt.Errorf("writing source %s: %w", path, err)
			}
		}
		model, err := compile.LoadModel(main)
		if err == nil && model.ID == m.Model.ID {
			return model, nil
		}
		if attempt > 0 {
			if err == nil {
				err = fmt.Errorf("%w: %s hashes to model %s, the manifest says %s", rollout.ErrSourceMismatch, main, model.ID, m.Model.ID)
			}
			return compile.Model{}, err
		}
		r.log.Warn("source model on disk does not match; writing it again", "dir", dir, "err", err)
	}
}

// warmCache brings the OpenVINO cache entries the manifest names into the store (from peers when missing, the
// size fixed by the manifest), checks each against its size and sha256, and has the agent index every one that
// serves this host (docs/design.md 10.6); the sharer then writes them into the matching cache directories.
func (r *Rollouts) warmCache(ctx context.Context, m *rollout.Manifest, p *progress) error {
	for _, e := range m.CacheEntries {
		c, err := blobstore.ParseCID(e.Blob)
		if err != nil {
			return fmt.Errorf("%w: %w", rollout.ErrInvalidManifest, err)
		}
		has, err := r.opts.Store.Has(ctx, c)
		if err != nil {
			return err
		}
		if !has {
			p.set(rollout.PhaseFetching, "")
			if err := r.opts.Agent.FetchBlob(blobstore.WithExpectedSize(ctx, uint64(e.Size)), c); err != nil {
				return fmt.Errorf("fetching cache entry %s (blob %s): %w", e.Name, c, err)
			}
		}
		info, err := r.opts.Store.Stat(ctx, c)
		if err != nil {
			return err
		}
		if info.Size != uint64(e.Size) || info.SHA256 != e.SHA256 {
			return fmt.Errorf("%w: cache entry %s: blob %s holds %d bytes with sha256 %s; the manifest says %d, %s",
				rollout.ErrSourceMismatch, e.Name, c, info.Size, info.SHA256, e.Size, e.SHA256)
		}
		ok, err := r.opts.Agent.IndexCacheEntry(ctx, e.Name, e.Build, c)
		if err != nil {
			return fmt.Errorf("cache entry %s: %w", e.Name, err)
		}
		r.log.Info("rollout cache entry", "rollout", m.Name, "version", m.Version, "entry", e.Name, "build", e.Build, "serves_this_host", ok)
	}
	return nil
}
