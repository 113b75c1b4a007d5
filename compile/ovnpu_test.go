package compile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
)

// testTrailer is what readTestTrailer decodes; the real parser is compat's. This one is strict about version 2.7
// so the writer's exact layout is pinned.
type testTrailer struct {
	PayloadSize         uint64
	Version             uint32
	OV                  [3]uint16
	CompilerVersion     uint32
	RuntimeRequirements string
	BlobType            uint8
}

func readTestTrailer(path string) (testTrailer, error) {
	f, err := os.Open(path)
	if err != nil {
		return testTrailer{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return testTrailer{}, err
	}
	var foot [13]byte
	if st.Size() < int64(len(foot)) {
		return testTrailer{}, errors.New("too short")
	}
	if _, err := f.ReadAt(foot[:], st.Size()-13); err != nil {
		return testTrailer{}, err
	}
	if string(foot[8:]) != "OVNPU" {
		return testTrailer{}, errors.New("no OVNPU magic")
	}
	var t testTrailer
	t.PayloadSize = binary.LittleEndian.Uint64(foot[:8])
	metaLen := st.Size() - 13 - int64(t.PayloadSize)
	if metaLen < 0 || metaLen > 1<<20 {
		return testTrailer{}, fmt.Errorf("metadata length %d", metaLen)
	}
	meta := make([]byte, metaLen)
	if _, err := f.ReadAt(meta, int64(t.PayloadSize)); err != nil && err != io.EOF {
		return testTrailer{}, err
	}
	r := &leReader{b: meta}
	t.Version = r.u32()
	for i := range t.OV {
		t.OV[i] = r.u16()
	}
	if n := r.u64(); n != 0 {
		return testTrailer{}, fmt.Errorf("n_inits %d", n)
	}
	if b := r.u64(); b != 0 {
		return testTrailer{}, fmt.Errorf("batch %d", b)
	}
	if in, out := r.u64(), r.u64(); in != 0 || out != 0 {
		return testTrailer{}, fmt.Errorf("layouts %d %d", in, out)
	}
	t.CompilerVersion = r.u32()
	if enc := r.u8(); enc != 0 {
		return testTrailer{}, fmt.Errorf("encrypted %d", enc)
	}
	n := r.u64()
	if n > uint64(len(r.b)) {
		return testTrailer{}, fmt.Errorf("runtime requirements length %d", n)
	}
	t.RuntimeRequirements = string(r.take(int(n)))
	t.BlobType = r.u8()
	if r.err != nil {
		return testTrailer{}, r.err
	}
	if len(r.b) != 0 {
		return testTrailer{}, fmt.Errorf("%d bytes after the metadata", len(r.b))
	}
	if t.Version != 2<<16|7 {
		return testTrailer{}, fmt.Errorf("version %#x", t.Version)
	}
	return t, nil
}

type leReader struct {
	b   []byte
	err error
}

func (r *leReader) take(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.err = errors.New("metadata truncated")
		return make([]byte, n)
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}
func (r *leReader) u8() uint8   { return r.take(1)[0] }
func (r *leReader) u16() uint16 { return binary.LittleEndian.Uint16(r.take(2)) }
func (r *leReader) u32() uint32 { return binary.LittleEndian.Uint32(r.take(4)) }
func (r *leReader) u64() uint64 { return binary.LittleEndian.Uint64(r.take(8)) }

func TestOVNPUTrailerLayout(t *testing.T) {
	t.Parallel()
	got := appendOVNPUTrailer([]byte("PAY"), 3, ovnpuMeta{OVMajor: 2025, OVMinor: 3, OVPatch: 1, CompilerVersion: 7<<16 | 21, RuntimeRequirements: "rr"})
	want := []byte("PAY")
	want = append(want, 7, 0, 2, 0) // version 2.7
	want = append(want, 0xe9, 0x07, 3, 0, 1, 0)
	want = append(want, make([]byte, 32)...)    // n_inits, batch, 2 layout counts
	want = append(want, 21, 0, 7, 0)            // compiler 7.21
	want = append(want, 0)                      // encrypted
	want = append(want, 2, 0, 0, 0, 0, 0, 0, 0) // len
	want = append(want, "rr"...)
	want = append(want, 0)                      // blob type
	want = append(want, 3, 0, 0, 0, 0, 0, 0, 0) // payload size
	want = append(want, "OVNPU"...)
	if string(got) != string(want) {
		t.Fatalf("trailer\n got %x\nwant %x", got, want)
	}
}

func TestParseVersions(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][3]uint16{
		"2025.3.0": {2025, 3, 0}, "2026.1.2-20000-abc-releases/2026/1": {2026, 1, 2}, " 2024.6.0 ": {2024, 6, 0},
	} {
		a, b, c, err := parseOVVersion(in)
		if err != nil || [3]uint16{a, b, c} != want {
			t.Errorf("parseOVVersion(%q) = %d.%d.%d %v", in, a, b, c, err)
		}
	}
	for _, in := range []string{"", "2025.3", "2025.3.x", "70000.1.0", "2025.3.0.1"} {
		if _, _, _, err := parseOVVersion(in); err == nil {
			t.Errorf("parseOVVersion(%q) accepted", in)
		}
	}
	for in, want := range map[string]uint32{"": 0, "7.21": 7<<16 | 21, "0.1": 1} {
		got, err := parseCompilerVersion(in)
		if err != nil || got != want {
			t.Errorf("parseCompilerVersion(%q) = %d %v", in, got, err)
		}
		if in != "" && formatCompilerVersion(got) != in {
			t.Errorf("formatCompilerVersion(%d) = %s", got, formatCompilerVersion(got))
		}
	}
	for _, in := range []string{"7", "7.", "x.1", "65536.0", "1.2.3"} {
		if _, err := parseCompilerVersion(in); err == nil {
			t.Errorf("parseCompilerVersion(%q) accepted", in)
		}
	}
}
