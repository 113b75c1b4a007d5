package blobstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// manifestOf builds the manifest of data the way a store does.
func manifestOf(data []byte) *Manifest {
	m := &Manifest{Size: uint64(len(data)), ChunkSize: ChunkSize, SHA256: sha256.Sum256(data)}
	for off := 0; off < len(data); off += ChunkSize {
		m.Chunks = append(m.Chunks, sha256.Sum256(data[off:min(off+ChunkSize, len(data))]))
	}
	return m
}

func TestManifestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, size := range []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 17} {
		data := bytes.Repeat([]byte{0xa5}, size)
		m := manifestOf(data)
		if err := m.Validate(); err != nil {
			t.Fatalf("size %d: Validate: %v", size, err)
		}
		enc := m.Encode()
		if len(enc) != ManifestHeaderSize+32*m.NumChunks() {
			t.Fatalf("size %d: encoded length %d", size, len(enc))
		}
		got, err := DecodeManifest(enc)
		if err != nil {
			t.Fatalf("size %d: decode: %v", size, err)
		}
		if !bytes.Equal(got.Encode(), enc) {
			t.Fatalf("size %d: re-encoding differs", size)
		}
		var total uint64
		for i := range got.NumChunks() {
			if got.ChunkOffset(i) != total {
				t.Fatalf("size %d: chunk %d offset %d, want %d", size, i, got.ChunkOffset(i), total)
			}
			total += uint64(got.ChunkLen(i))
		}
		if total != uint64(size) {
			t.Fatalf("size %d: chunk lengths sum to %d", size, total)
		}
		if got.ChunkLen(got.NumChunks()) != 0 {
			t.Fatalf("size %d: ChunkLen past the end is not 0", size)
		}
	}
}

// TestManifestGolden pins the encoding of docs/design.md 3.2 byte by byte.
func TestManifestGolden(t *testing.T) {
	t.Parallel()
	m := &Manifest{Size: ChunkSize + 2, ChunkSize: ChunkSize, Chunks: [][32]byte{{1}, {2}}}
	m.SHA256[0], m.SHA256[31] = 0xaa, 0xbb
	want := []byte("NPUM\x01\x00\x00\x00")
	want = binary.LittleEndian.AppendUint32(want, 1<<20)
	want = binary.LittleEndian.AppendUint64(want, 1<<20+2)
	want = append(want, m.SHA256[:]...)
	want = binary.LittleEndian.AppendUint32(want, 2)
	want = append(want, m.Chunks[0][:]...)
	want = append(want, m.Chunks[1][:]...)
	if got := m.Encode(); !bytes.Equal(got, want) {
		t.Fatalf("encoding:\n got %x\nwant %x", got, want)
	}
	sum := sha256.Sum256(want)
	hash, err := mh.Encode(sum[:], mh.SHA2_256)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.CID(), cid.NewCidV1(cid.Raw, hash); !got.Equals(want) {
		t.Fatalf("CID %s, want %s", got, want)
	}
}

func TestDecodeManifestRejects(t *testing.T) {
	t.Parallel()
	valid := manifestOf(bytes.Repeat([]byte{7}, 2*ChunkSize+5)).Encode()
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"short header", valid[:ManifestHeaderSize-1]},
		{"magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"version 0", mutate(func(b []byte) []byte { b[4] = 0; return b })},
		{"version 2", mutate(func(b []byte) []byte { b[4] = 2; return b })},
		{"reserved", mutate(func(b []byte) []byte { b[6] = 1; return b })},
		{"chunk size", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 1<<19); return b })},
		{"chunk size zero", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], 0); return b })},
		{"size above limit", mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[12:], MaxBlobSize+1)
			binary.LittleEndian.PutUint32(b[52:], MaxBlobSize/ChunkSize+1)
			return b
		})},
		{"count too small", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[52:], 2); return b[:len(b)-32] })},
		{"count too large", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[52:], 4); return append(b, make([]byte, 32)...) })},
		{"huge count", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[52:], 1<<31); return b })},
		{"truncated digests", valid[:len(valid)-1]},
		{"trailing byte", append(bytes.Clone(valid), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := DecodeManifest(tt.in); !errors.Is(err, ErrInvalidManifest) {
				t.Fatalf("DecodeManifest: %v, want ErrInvalidManifest", err)
			}
		})
	}
}

func TestMaxManifest(t *testing.T) {
	t.Parallel()
	m := &Manifest{Size: MaxBlobSize, ChunkSize: ChunkSize, Chunks: make([][32]byte, MaxBlobSize/ChunkSize)}
	enc := m.Encode()
	if len(enc) != MaxManifestSize {
		t.Fatalf("largest manifest is %d bytes, MaxManifestSize %d", len(enc), MaxManifestSize)
	}
	if _, err := DecodeManifest(enc); err != nil {
		t.Fatalf("largest manifest rejected: %v", err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		m    Manifest
	}{
		{"chunk size", Manifest{Size: 1, ChunkSize: 4096, Chunks: make([][32]byte, 1)}},
		{"too big", Manifest{Size: MaxBlobSize + 1, ChunkSize: ChunkSize, Chunks: make([][32]byte, MaxBlobSize/ChunkSize+1)}},
		{"missing digest", Manifest{Size: ChunkSize + 1, ChunkSize: ChunkSize, Chunks: make([][32]byte, 1)}},
		{"extra digest", Manifest{Size: 0, ChunkSize: ChunkSize, Chunks: make([][32]byte, 1)}},
	}
	for _, tt := range tests {
		if err := tt.m.Validate(); !errors.Is(err, ErrInvalidManifest) {
			t.Errorf("%s: Validate: %v, want ErrInvalidManifest", tt.name, err)
		}
	}
}

func TestParseCID(t *testing.T) {
	t.Parallel()
	digest := sha256.Sum256([]byte("chunk"))
	good := ChunkCID(digest)
	sha512, err := mh.Sum([]byte("x"), mh.SHA2_512, -1)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"cidv1 raw sha256", good.String(), true},
		{"cidv0", cid.NewCidV0(good.Hash()).String(), false},
		{"dag-pb codec", cid.NewCidV1(cid.DagProtobuf, good.Hash()).String(), false},
		{"sha512", cid.NewCidV1(cid.Raw, sha512).String(), false},
		{"garbage", "bafkreinotacid", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		c, err := ParseCID(tt.in)
		if tt.ok != (err == nil) {
			t.Errorf("%s: ParseCID(%q): %v", tt.name, tt.in, err)
			continue
		}
		if !tt.ok {
			if !errors.Is(err, ErrInvalidCID) {
				t.Errorf("%s: error %v is not ErrInvalidCID", tt.name, err)
			}
			continue
		}
		d, err := Digest(c)
		if err != nil || d != digest {
			t.Errorf("%s: Digest = %x, %v; want %x", tt.name, d, err, digest)
		}
	}
	if _, err := Digest(cid.Undef); !errors.Is(err, ErrInvalidCID) {
		t.Errorf("Digest(cid.Undef): %v", err)
	}
}

func FuzzDecodeManifest(f *testing.F) {
	for _, size := range []int{0, 1, ChunkSize, ChunkSize + 1, 5 * ChunkSize} {
		f.Add(manifestOf(bytes.Repeat([]byte{1}, size)).Encode())
	}
	f.Add([]byte("NPUM\x01\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidManifest) {
				t.Fatalf("error %v is not ErrInvalidManifest", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("decoded manifest invalid: %v", err)
		}
		if enc := m.Encode(); !bytes.Equal(enc, b) {
			t.Fatalf("round trip differs:\n in %x\nout %x", b, enc)
		}
	})
}
