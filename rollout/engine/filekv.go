package engine

import (
	"errors"
	"fmt"
	"github.com/npu-agent/npu-agent/internal/atomicfile"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/npu-agent/npu-agent/rollout"
)

// MaxKVValue bounds a FileKV value; rollout states are at most about 130 KiB.
const MaxKVValue = 1 << 20

// kvSegmentRE is one "/"-separated part of a FileKV key: no dots in front, so never "." or ".." or a temp file.
var kvSegmentRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

// FileKV is a rollout.KV kept as one file per key under a directory (key "state/kiosk" is the file
// <dir>/state/kiosk). Rollout state is a handful of small values written a few times per rollout: files keep it
// out of the blob store's interface, survive a crash (each write is a temp file, fsync, rename, fsync of the
// directory) and can be read and backed up by an operator.
type FileKV struct {
	dir string
	mu  sync.Mutex // one writer at a time per process; readers see whole files only
}

var _ rollout.KV = (*FileKV)(nil)

// OpenFileKV creates dir if needed and returns a KV over it.
func OpenFileKV(dir string) (*FileKV, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("rollout state directory: %w", err)
	}
	return &FileKV{dir: dir}, nil
}

func (kv *FileKV) path(key string) (string, error) {
	segs := strings.Split(key, "/")
	for _, s := range segs {
		if !kvSegmentRE.MatchString(s) {
			return "", fmt.Errorf("rollout state key %.200q: each part must be 1 to 128 of a-z 0-9 . _ - not starting with . _ -", key)
		}
	}
	return filepath.Join(append([]string{kv.dir}, segs...)...), nil
}

// Get returns the value of key, or an error wrapping rollout.ErrNotFound.
func (kv *FileKV) Get(key string) ([]byte, error) {
	p, err := kv.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("rollout state %s: %w", key, rollout.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("rollout state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxKVValue+1))
	if err != nil {
		return nil, fmt.Errorf("rollout state %s: %w", key, err)
	}
	if len(b) > MaxKVValue {
		return nil, fmt.Errorf("rollout state %s: larger than %d bytes", key, MaxKVValue)
	}
	return b, nil
}

// Put replaces the value of key atomically and durably.
func (kv *FileKV) Put(key string, value []byte) error {
	if len(value) > MaxKVValue {
		return fmt.Errorf("rollout state %s: value of %d bytes, at most %d", key, len(value), MaxKVValue)
	}
	p, err := kv.path(key)
	if err != nil {
		return err
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("rollout state %s: %w", key, err)
	}
	if err := atomicfile.WriteFile(p, value, 0o600); err != nil {
		return fmt.Errorf("rollout state %s: %w", key, err)
	}
	return nil
}

// Delete removes key; a missing key is not an error.
func (kv *FileKV) Delete(key string) error {
	p, err := kv.path(key)
	if err != nil {
		return err
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rollout state %s: %w", key, err)
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}

// Keys lists the keys starting with prefix. Files that are not valid keys (temp files of an interrupted write)
// are skipped.
func (kv *FileKV) Keys(prefix string) ([]string, error) {
	var keys []string
	err := filepath.WalkDir(kv.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == kv.dir {
			return nil
		}
		if !kvSegmentRE.MatchString(d.Name()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(kv.dir, p)
		if err != nil {
			return err
		}
		if key := filepath.ToSlash(rel); strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing rollout state: %w", err)
	}
	return keys, nil
}
