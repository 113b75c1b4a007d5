package badgerstore

import (
	"bytes"
	"context"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/npu-agent/npu-agent/blobstore/storetest"
)

// aligned returns a copy of b whose first byte sits at a directAlign boundary plus shift.
func aligned(b []byte, shift int) []byte {
	raw := make([]byte, len(b)+2*directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&raw[0]))%directAlign)) % directAlign
	out := raw[skip+shift : skip+shift+len(b)]
	copy(out, b)
	return out
}

// resident reports, per page of [off, off+n) of the file at path, whether it is in the page cache (mincore).
func resident(t *testing.T, path string, off, n int) []bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), int64(off), n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (n+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	out := make([]bool, len(vec))
	for i, v := range vec {
		out[i] = v&1 != 0
	}
	return out
}

// pageCacheOnly reports whether dir's filesystem keeps files in memory only, where a direct write lands in the
// page cache as well.
func pageCacheOnly(t *testing.T, dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}

// TestDirectWrites checks which chunks a fetch writes past the page cache: whole aligned ones, unless the
// filesystem refuses; an unaligned buffer, a short last chunk and a refusing filesystem go through the page cache.
// Every chunk reads back as written.
func TestDirectWrites(t *testing.T) {
	t.Parallel()
	data := storetest.Data(31, 2*cs+5000)
	m := manifestOf(t, data)
	einval := func(path string) (*os.File, error) {
		return nil, &os.PathError{Op: "open", Path: path, Err: syscall.EINVAL}
	}
	tests := []struct {
		name       string
		shift      int // of the chunk's buffer from an aligned address
		openDirect func(string) (*os.File, error)
		chunk      int
		direct     int // leading pages of the chunk written past the page cache; the rest go through it
	}{
		{"aligned chunk", 0, nil, 1, cs / directAlign},
		{"unaligned buffer", 8, nil, 1, 0},
		{"last chunk: its whole blocks direct, the tail cached", 0, nil, 2, 1},
		{"filesystem refuses direct I/O", 0, einval, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			opts := testOptions(t)
			opts.openDirect = tt.openDirect
			s := open(t, t.TempDir(), opts)
			defer closeStore(t, s)
			if err := s.BeginPartial(ctx, m); err != nil {
				t.Fatal(err)
			}
			want := chunkOf(data, m, tt.chunk)
			if err := s.PutChunk(ctx, m.CID(), tt.chunk, aligned(want, tt.shift)); err != nil {
				t.Fatalf("PutChunk: %v", err)
			}
			path := s.partialPath(must(digestOf(m.CID())))
			off := int(m.ChunkOffset(tt.chunk))
			if !pageCacheOnly(t, s.partDir) {
				pages := resident(t, path, off, len(want))
				for p, in := range pages {
					if want := p >= tt.direct; in != want {
						t.Fatalf("page %d of %d of the chunk: in the page cache %v, want %v", p, len(pages), in, want)
					}
				}
			}
			if got := s.noDirect.Load(); got != (tt.openDirect != nil) {
				t.Errorf("noDirect = %v after the write", got)
			}
			got := make([]byte, len(want))
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.ReadAt(got, int64(off)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the chunk reads back different")
			}
		})
	}
}
