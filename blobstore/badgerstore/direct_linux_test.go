package badgerstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/storetest"
)

// TestPutChunkDirect: a whole chunk in an aligned buffer goes to disk with O_DIRECT (none of its pages is left in
// the page cache), a chunk in an unaligned buffer and the short last chunk go through the page cache, and the
// committed file holds every byte either way. Skipped where the temp dir's filesystem refuses O_DIRECT.
func TestPutChunkDirect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	probe := dir + "/probe"
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if f, err := openDirect(probe); err != nil {
		t.Skipf("no O_DIRECT in %s: %v", dir, err)
	} else {
		f.Close()
	}
	data := storetest.Data(11, 3*cs+100)
	m := manifestOf(t, data)
	s := open(t, dir, testOptions(t))
	defer closeStore(t, s)
	if err := s.BeginPartial(ctx, m); err != nil {
		t.Fatal(err)
	}
	// Buffers with room to place a chunk at any offset from a WriteAlign boundary.
	place := func(i, shift int) []byte {
		buf := make([]byte, cs+2*blobstore.WriteAlign)
		a := alignedAt(buf) + shift
		return append(buf[a:a], chunkOf(data, m, i)...)
	}
	tests := []struct {
		name     string
		i, shift int
		cached   bool // its pages are in the page cache after PutChunk
	}{
		{"aligned whole chunk", 0, 0, false},
		{"unaligned buffer", 1, 1, true},
		{"aligned again", 2, 0, false},
		{"short last chunk", 3, 0, true},
	}
	for _, tt := range tests {
		b := place(tt.i, tt.shift)
		if err := s.PutChunk(ctx, m.CID(), tt.i, b); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := resident(t, s.partialPath(sha256.Sum256(m.Encode())), int64(m.ChunkOffset(tt.i)), m.ChunkLen(tt.i)); got != tt.cached {
			t.Errorf("%s: pages in the page cache %v, want %v", tt.name, got, tt.cached)
		}
	}
	if s.noDirect.Load() {
		t.Error("the store gave up O_DIRECT on a filesystem that takes it")
	}
	if err := s.Commit(ctx, m.CID()); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(s, m); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, data))
	}
}

// alignedAt is the first index of buf at a WriteAlign boundary.
func alignedAt(buf []byte) int {
	for k := range blobstore.WriteAlign {
		if directable(buf[k:k+blobstore.WriteAlign], 0) {
			return k
		}
	}
	panic("no aligned index")
}

// resident reports whether any page of [off, off+n) of the file at path is in the page cache (mincore of a map).
func resident(t *testing.T, path string, off int64, n int) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), off, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	vec := make([]byte, (n+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	for _, v := range vec {
		if v&1 != 0 {
			return true
		}
	}
	return false
}
