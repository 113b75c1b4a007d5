package share

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/npu-agent/npu-agent/ovcache"
)

// writingGrace: an entry that does not parse and was modified more recently than this may still be being
// written by OpenVINO; it is not stale yet.
const writingGrace = time.Minute

// EntryInfo describes one entry of a shared cache directory (`npu-agent cache ls`).
type EntryInfo struct {
	Dir   string
	Name  string
	Size  int64
	Build string // the entry's OpenVINO build string; "" when it does not parse
	// LastUse is the file's access time, or its modification time if later (with relatime, atime moves at most
	// once a day after the first read).
	LastUse time.Time
	// Blob is the CID of the blob this agent populated the entry from; "" for the application's own entries.
	Blob       string
	Weightless bool // usable here, never shared
	Stale      bool
	Reason     string // why it is stale
	ino        uint64
	mtime      time.Time
}

// List describes every entry of every shared directory, in directory then name order: stale when the entry
// cannot load on this host any more (its build string is not the application's, or its blob fails the rules for
// this host's fingerprint), or when it does not parse and has not changed for a minute.
func (s *Sharer) List(ctx context.Context) ([]EntryInfo, error) {
	var out []EntryInfo
	for _, d := range s.dirs {
		es, err := s.list(ctx, d)
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	return out, nil
}

func (s *Sharer) list(ctx context.Context, d *dirState) ([]EntryInfo, error) {
	f, err := d.root.Open(".")
	if err != nil {
		return nil, fmt.Errorf("cache directory %s: %w", d.Path, err)
	}
	names, err := f.Readdirnames(maxNames)
	f.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("cache directory %s: %w", d.Path, err)
	}
	slices.Sort(names)
	s.mu.Lock()
	build := d.build
	blobs := map[string]populated{}
	for n, p := range d.populated {
		blobs[n] = p
	}
	s.mu.Unlock()
	var out []EntryInfo
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !ovcache.ValidName(name) {
			continue
		}
		if e, ok := s.describe(d, name, build, blobs); ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// describe looks at one entry as harvest does (a regular file, opened without following links or blocking).
func (s *Sharer) describe(d *dirState, name, build string, blobs map[string]populated) (EntryInfo, bool) {
	f, err := d.root.OpenFile(name, os.O_RDONLY|oNoFollow|oNonBlock, 0)
	if err != nil {
		return EntryInfo{}, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return EntryInfo{}, false
	}
	l := lookAt(fi)
	info := EntryInfo{Dir: d.Path, Name: name, Size: l.size, LastUse: l.mtime, ino: l.ino, mtime: l.mtime}
	if at := accessTime(fi); at.After(l.mtime) {
		info.LastUse = at
	}
	if p, ok := blobs[name]; ok && p.Ino == l.ino {
		info.Blob = p.Blob
	}
	e, err := ovcache.Parse(f, l.size, s.opts.MaxEntrySize)
	switch {
	case err != nil:
		if time.Since(l.mtime) >= writingGrace {
			info.Stale, info.Reason = true, err.Error()
		}
	default:
		info.Build, info.Weightless = e.Build, len(e.Trailer.InitSizes) > 0
		if err := s.opts.Agent.CheckCacheUsable(e, build); err != nil {
			info.Stale, info.Reason = true, err.Error()
		}
	}
	return info, true
}

// Prune removes the stale entries List reports (dryRun: only lists them). An entry is removed only if it is
// still the file that was judged (same inode, size and mtime); an entry this agent populated is forgotten, not
// counted as rejected by the application.
func (s *Sharer) Prune(ctx context.Context, dryRun bool) ([]EntryInfo, error) {
	var removed []EntryInfo
	var errs []error
	for _, d := range s.dirs {
		es, err := s.list(ctx, d)
		if err != nil {
			return removed, err
		}
		for _, e := range es {
			if !e.Stale {
				continue
			}
			if dryRun {
				removed = append(removed, e)
				continue
			}
			fi, err := d.root.Lstat(e.Name)
			if err != nil || !fi.Mode().IsRegular() || lookAt(fi).ino != e.ino || fi.Size() != e.Size || !fi.ModTime().Equal(e.mtime) {
				continue // changed since: judged again next time
			}
			if e.Blob != "" {
				s.mu.Lock()
				d.pruned[e.Name] = true
				s.mu.Unlock()
			}
			if err := d.root.Remove(e.Name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.mu.Lock()
				delete(d.pruned, e.Name)
				s.mu.Unlock()
				errs = append(errs, err)
				continue
			}
			s.log.Info("pruned a stale cache entry", "dir", d.Path, "entry", e.Name, "reason", e.Reason)
			removed = append(removed, e)
		}
		if !s.running.Load() {
			s.checkPopulated(ctx, d) // no Run (the CLI without a daemon): forget the pruned entries now
		}
	}
	return removed, errors.Join(errs...)
}
