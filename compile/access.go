package compile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotPermitted is returned when a caller asks the daemon to read a model file the caller could not read
// itself, or one under the daemon's own data, config or key paths.
var ErrNotPermitted = errors.New("the caller may not have the daemon read this file")

// Caller is who asks the daemon to read model files (the local API's client). Model files are opened on its
// behalf only if its own credentials would let it read them, by the owner, group and other bits of the file and
// the search bits of every directory above it (the kernel's rule without ACLs or capabilities; a file readable
// only through an ACL entry is refused). Root may read anything outside Deny.
type Caller struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups
	// Anonymous callers (TCP clients, whose uid is unknown) may read only what every user may: the "other" bits.
	Anonymous bool
	// Deny lists absolute paths (files or directory trees), symlinks resolved, never opened for this caller
	// whatever its rights: the daemon's data directory, config and key files.
	Deny []string
}

type callerKey struct{}

// WithCaller returns ctx carrying c: every model file opened under ctx (LoadModelContext, OpenModelFile) is
// checked against c's rights.
func WithCaller(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller ctx carries, or nil when the daemon reads on its own behalf (in-process CLI,
// rollouts it follows).
func CallerFrom(ctx context.Context) *Caller {
	c, _ := ctx.Value(callerKey{}).(*Caller)
	return c
}

// Permission bits asked of a file (read) and of the directories above it (search).
const (
	permRead   = 4
	permSearch = 1
)

// may reports whether c's credentials grant want on an object with owner uid, group gid and mode perm.
// Like the kernel, the first class that applies decides (an owner without the read bit is refused even if
// others may read).
func (c *Caller) may(uid, gid uint32, perm fs.FileMode, want uint32) bool {
	bits := uint32(perm.Perm())
	switch {
	case c.Anonymous:
		return bits&want == want
	case c.UID == 0:
		return true
	case uid == c.UID:
		return (bits>>6)&want == want
	case c.inGroup(gid):
		return (bits>>3)&want == want
	default:
		return bits&want == want
	}
}

func (c *Caller) inGroup(gid uint32) bool {
	if gid == c.GID {
		return true
	}
	for _, g := range c.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// denied reports whether resolved (absolute, symlinks resolved) is or lies under a Deny entry.
func (c *Caller) denied(resolved string) bool {
	for _, d := range c.Deny {
		if d == "" {
			continue
		}
		if resolved == d || strings.HasPrefix(resolved, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}

// ResolveDeny resolves the symlinks of paths (a path that does not exist is kept cleaned), for Caller.Deny.
func ResolveDeny(paths ...string) []string {
	var out []string
	for _, p := range paths {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			continue
		}
		out = append(out, abs)
		if r, err := filepath.EvalSymlinks(abs); err == nil && r != abs {
			out = append(out, r)
		}
	}
	return out
}

// OpenModelFile opens a model file for reading on behalf of the caller ctx carries (CallerFrom). It opens only
// regular files, never blocks on a FIFO or device (O_NONBLOCK; the type is checked on the opened descriptor).
// With a caller, path's symlinks are resolved first, the resolved path must not be denied, the caller must be
// able to search every directory above it and read the file (checked on the opened descriptor), and the open
// follows no symlink, so a link swapped in after the check fails rather than leads elsewhere.
func OpenModelFile(ctx context.Context, path string) (*os.File, fs.FileInfo, error) {
	c := CallerFrom(ctx)
	target := path
	if c != nil {
		if !filepath.IsAbs(path) {
			return nil, nil, fmt.Errorf("%w: %s is not an absolute path", ErrNotPermitted, path)
		}
		resolved, err := filepath.EvalSymlinks(path)
		if err != nil {
			// Whether a file exists where the caller may not look is not the caller's to learn.
			if derr := c.checkDirs(filepath.Clean(path)); derr != nil {
				return nil, nil, fmt.Errorf("%w: %s: %w", ErrNotPermitted, path, derr)
			}
			return nil, nil, notFound(path, err)
		}
		if c.denied(resolved) {
			return nil, nil, fmt.Errorf("%w: %s is the daemon's own file", ErrNotPermitted, path)
		}
		if err := c.checkDirs(resolved); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %w", ErrNotPermitted, path, err)
		}
		// Refuse a special file before opening it: opening some devices acts.
		if st, err := os.Lstat(resolved); err != nil {
			return nil, nil, notFound(path, err)
		} else if !st.Mode().IsRegular() {
			return nil, nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalidModel, path)
		}
		target = resolved
	}
	f, err := openNoFollow(target, c != nil)
	if err != nil {
		return nil, nil, notFound(path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidModel, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalidModel, path)
	}
	if c != nil {
		uid, gid, ok := owner(st)
		if !ok || !c.may(uid, gid, st.Mode(), permRead) {
			f.Close()
			return nil, nil, fmt.Errorf("%w: %s is not readable by the caller (uid %s)", ErrNotPermitted, path, c.who())
		}
	}
	return f, st, nil
}

func (c *Caller) who() string {
	if c.Anonymous {
		return "unknown: TCP client"
	}
	return fmt.Sprint(c.UID)
}

// checkDirs requires search permission on every directory from the root down to resolved's parent.
func (c *Caller) checkDirs(resolved string) error {
	dir := filepath.Dir(resolved)
	for i := 0; i < 4096; i++ { // bounded: a path has at most PATH_MAX/2 components
		st, err := os.Stat(dir)
		if err != nil {
			return err
		}
		uid, gid, ok := owner(st)
		if !ok || !c.may(uid, gid, st.Mode(), permSearch) {
			return fmt.Errorf("directory %s is not searchable by the caller (uid %s)", dir, c.who())
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
	return errors.New("path too deep")
}

// notFound wraps an open error so the error table answers it as the missing or unreadable file it is.
func notFound(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w: %w", ErrInvalidModel, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrInvalidModel, path, err)
}
