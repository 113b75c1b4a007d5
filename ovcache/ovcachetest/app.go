package ovcachetest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
)

// App is a stand-in for an OpenVINO application that compiles one model for the NPU with CACHE_DIR set, on the
// compile_model(ov::Model) route (what GenAI pipelines use). It behaves as OpenVINO's cache does (design 10.1):
// the entry's name is a hash of the build string, the model's bytes and the caching properties (the same on every
// host with the same inputs); on load it checks the build string, file_info and the plugin's import, and removes
// an entry that fails any of them, then compiles and writes its own.
type App struct {
	CacheDir   string
	Build      string            // this application's OpenVINO build string
	Model      []byte            // the serialized model (its graph and weights)
	Properties map[string]string // caching properties (DEVICE_ARCHITECTURE, ...), part of the name
	// What a compile writes: the blob's trailer, payload size and a seed for its bytes (two hosts compiling the
	// same model may write different bytes).
	Trailer     compat.Trailer
	PayloadSize int
	Seed        byte
	CompileTime time.Duration
	// ImportFails makes the plugin refuse every entry (a driver that cannot import it): OpenVINO then removes it.
	ImportFails bool
}

// fileInfo is what the model route writes as file_info: a constant.
const fileInfo = "0"

// Result is what one CompileModel did.
type Result struct {
	Name     string `json:"name"`
	Hit      bool   `json:"hit"`      // loaded from the cache, no compile
	Removed  bool   `json:"removed"`  // an entry was there and was removed as unusable
	Compiled bool   `json:"compiled"` // compiled and wrote its entry
}

// Name is the entry's file name: a uint64 hash of the inputs, as OpenVINO's std::hash mix is (only the same build
// and inputs give the same name).
func (a App) Name() string {
	h := sha256.New()
	for _, s := range []string{"build", a.Build, "model", string(a.Model)} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	keys := make([]string, 0, len(a.Properties))
	for k := range a.Properties {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s%d:%s", len(k), k, len(a.Properties[k]), a.Properties[k])
	}
	return strconv.FormatUint(binary.BigEndian.Uint64(h.Sum(nil)), 10) + ".blob"
}

// CompileModel loads the entry if it is usable, otherwise removes it (if present), compiles and writes the entry
// the way OpenVINO does: straight into its name (in two writes with a pause, so a watcher can see it unfinished),
// then read-only for owner and group.
func (a App) CompileModel(ctx context.Context) (Result, error) {
	r := Result{Name: a.Name()}
	path := filepath.Join(a.CacheDir, r.Name)
	var pe *fs.PathError
	switch err := a.load(path); {
	case err == nil:
		r.Hit = true
		return r, nil
	case errors.Is(err, fs.ErrNotExist):
	case errors.As(err, &pe):
		return r, err // not readable: neither OpenVINO's miss nor a bad entry
	default:
		if err := os.Remove(path); err != nil {
			return r, err
		}
		r.Removed = true
	}
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(a.CompileTime):
	}
	entry := Entry(ovcache.Header{Build: a.Build, FileInfo: fileInfo, RuntimeInfo: "<rt_info/>", Alignment: 4096}, false,
		Blob(a.Trailer, a.PayloadSize, a.Seed))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return r, err
	}
	half := len(entry) / 2
	_, err = f.Write(entry[:half])
	if err == nil {
		time.Sleep(50 * time.Millisecond)
		_, err = f.Write(entry[half:])
	}
	if err == nil {
		err = f.Chmod(0o440)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	r.Compiled = err == nil
	return r, err
}

// load is OpenVINO's cache read: the entry must parse, carry this build string and file_info, and import.
func (a App) load(path string) error {
	e, err := parseFile(path)
	switch {
	case err != nil:
		return err
	case e.Build != a.Build:
		return fmt.Errorf("entry of OpenVINO %q, this is %q", e.Build, a.Build)
	case e.FileInfo != fileInfo:
		return fmt.Errorf("file_info %q, expected %q", e.FileInfo, fileInfo)
	case a.ImportFails:
		return errors.New("the plugin cannot import the blob")
	}
	return nil
}
