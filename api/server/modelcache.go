package server

import (
	"context"
	"sync"
	"time"

	"github.com/npu-agent/npu-agent/compile"
)

// maxCachedModels bounds the model cache; an application uses a handful of models.
const maxCachedModels = 256

// racyMargin: the kernel stamps ctime from its coarse clock, up to a tick (1-10 ms) behind time.Now(), so a write
// made just after hashing started can carry a ctime before the start. Files changed this close to the start are
// not cached ("racy git").
const racyMargin = 20 * time.Millisecond

// modelCache remembers model identities by path so that an ensure of an unchanged model does not re-hash
// gigabytes of weights. An entry is used only while every file still has the size, mtime, ctime and inode it had
// when hashed (as git's index does); any write to a file changes its ctime.
type modelCache struct {
	mu sync.Mutex
	m  map[string]cachedModel
}

type cachedModel struct {
	model  compile.Model
	stamps []fileStamp
}

type fileStamp struct {
	size         int64
	mtime, ctime time.Time
	ino          uint64
}

// stamp opens path as ctx's caller may (compile.OpenModelFile), so a cached model is served only to a caller
// who could read its files now.
func stamp(ctx context.Context, path string) (fileStamp, bool) {
	f, st, err := compile.OpenModelFile(ctx, path)
	if err != nil {
		return fileStamp{}, false
	}
	f.Close()
	fs := fileStamp{size: st.Size(), mtime: st.ModTime()}
	var ok bool
	if fs.ino, fs.ctime, ok = inodeCtime(st); !ok {
		return fileStamp{}, false // without a ctime a rewrite can go unseen: never cache
	}
	return fs, true
}

// load returns the model at path, hashing its files only when they changed since the last load.
func (c *modelCache) load(ctx context.Context, path string) (compile.Model, error) {
	c.mu.Lock()
	e, ok := c.m[path]
	c.mu.Unlock()
	if ok && e.current(ctx) {
		return e.model, nil
	}
	start := time.Now()
	m, err := compile.LoadModelContext(ctx, path)
	if err != nil {
		return m, err
	}
	stamps := make([]fileStamp, 0, len(m.Files))
	for _, f := range m.Files {
		s, ok := stamp(ctx, f.Path)
		if !ok || racy(s.ctime, start) {
			return m, nil // changed or vanished while being hashed: do not cache
		}
		stamps = append(stamps, s)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedModels {
		c.m = map[string]cachedModel{}
	}
	c.m[path] = cachedModel{model: m, stamps: stamps}
	return m, nil
}

func (e cachedModel) current(ctx context.Context) bool {
	for i, f := range e.model.Files {
		if s, ok := stamp(ctx, f.Path); !ok || s != e.stamps[i] {
			return false
		}
	}
	return true
}

// racy reports whether a file with this ctime may have changed after hashing started at start.
func racy(ctime, start time.Time) bool { return !ctime.Before(start.Add(-racyMargin)) }
