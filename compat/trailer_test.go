package compat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
)

var elfPayload = []byte("\x7fELF\x02\x01\x01\x00 fake compiler payload")

// fullTrailer has every field set; trailerFor keeps those a version can carry.
var fullTrailer = Trailer{
	OpenVINO:            OVVersion{2026, 2, 0},
	InitSizes:           []uint64{4096, 1 << 20},
	Batch:               4,
	InputLayouts:        []string{"[N,C,H,W]", "[N,C]"},
	OutputLayouts:       []string{"[N,C]"},
	CompilerVersion:     8<<16 | 1,
	Encrypted:           true,
	RuntimeRequirements: "compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10",
	BlobType:            BlobTypeLLVM,
}

func trailerFor(minor uint16) Trailer {
	t := fullTrailer
	t.Metadata = MetadataVersion{2, minor}
	if minor < 1 {
		t.InitSizes = nil
	}
	if minor < 2 {
		t.Batch = 0
	}
	if minor < 3 {
		t.InputLayouts, t.OutputLayouts = nil, nil
	}
	if minor < 4 {
		t.CompilerVersion = 0
	}
	if minor < 5 {
		t.Encrypted = false
	}
	if minor < 6 {
		t.RuntimeRequirements = ""
	}
	if minor < 7 {
		t.BlobType = BlobTypeELF
	}
	return t
}

// blobWith builds payload + metadata + padding + footer.
func blobWith(t *testing.T, tr Trailer, padding int) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.Write(elfPayload)
	meta, err := encodeMetadata(tr)
	if err != nil {
		t.Fatal(err)
	}
	buf.Write(meta)
	buf.Write(make([]byte, padding))
	binary.Write(&buf, binary.LittleEndian, uint64(len(elfPayload)))
	buf.WriteString(TrailerMagic)
	return buf.Bytes()
}

func TestTrailerRoundTrip(t *testing.T) {
	t.Parallel()
	for minor := uint16(0); minor <= maxMetadataMinor; minor++ {
		for _, padding := range []int{0, 3, 4096} {
			t.Run(fmt.Sprintf("2.%d/pad%d", minor, padding), func(t *testing.T) {
				t.Parallel()
				want := trailerFor(minor)
				var blob []byte
				if padding == 0 {
					var buf bytes.Buffer
					buf.Write(elfPayload)
					if err := AppendTrailer(&buf, uint64(len(elfPayload)), want); err != nil {
						t.Fatal(err)
					}
					blob = buf.Bytes()
				} else {
					blob = blobWith(t, want, padding)
				}
				got, err := ParseTrailer(bytes.NewReader(blob), int64(len(blob)))
				if err != nil {
					t.Fatal(err)
				}
				want.PayloadSize = uint64(len(elfPayload))
				want.MetadataSize = uint64(len(blob) - len(elfPayload) - footerSize)
				if !reflect.DeepEqual(*got, want) {
					t.Fatalf("got  %+v\nwant %+v", *got, want)
				}
			})
		}
	}
}

// TestTrailerLayout pins the byte layout of a 2.7 trailer against a hand-written encoding.
func TestTrailerLayout(t *testing.T) {
	t.Parallel()
	tr := Trailer{
		Metadata: MetadataVersion{2, 7}, OpenVINO: OVVersion{2026, 2, 1}, InitSizes: []uint64{9}, Batch: -1,
		InputLayouts: []string{"NC"}, CompilerVersion: 0x00080001, Encrypted: true, RuntimeRequirements: "t=4",
		BlobType: BlobTypeBytecode,
	}
	var buf bytes.Buffer
	if err := AppendTrailer(&buf, 0x0102, tr); err != nil {
		t.Fatal(err)
	}
	want := []byte{
		7, 0, 2, 0, // version 2.7
		0xea, 0x07, 2, 0, 1, 0, // 2026.2.1
		1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, // one init of size 9
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // batch -1
		1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 1 input, 0 output layouts
		2, 0, 'N', 'C',
		1, 0, 8, 0, // compiler 8.1
		1, // encrypted
		3, 0, 0, 0, 0, 0, 0, 0, 't', '=', '4',
		2,                      // bytecode
		2, 1, 0, 0, 0, 0, 0, 0, // payload size 0x0102
		'O', 'V', 'N', 'P', 'U',
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("encoding\n got %x\nwant %x", buf.Bytes(), want)
	}
}

func TestParseTrailerErrors(t *testing.T) {
	t.Parallel()
	good := blobWith(t, trailerFor(7), 0)
	footerAt := len(good) - footerSize
	metaAt := len(elfPayload)

	withPayloadSize := func(n uint64) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint64(b[footerAt:], n)
		return b
	}
	withVersion := func(raw uint32) []byte {
		b := bytes.Clone(good)
		binary.LittleEndian.PutUint32(b[metaAt:], raw)
		return b
	}
	// A 2.1 trailer whose init count claims more than the area holds.
	hugeInits := func() []byte {
		b := blobWith(t, Trailer{Metadata: MetadataVersion{2, 1}}, 0)
		binary.LittleEndian.PutUint64(b[metaAt+10:], 1<<60)
		return b
	}()
	hugeLayouts := func() []byte {
		b := blobWith(t, Trailer{Metadata: MetadataVersion{2, 3}}, 0)
		binary.LittleEndian.PutUint64(b[metaAt+26:], 1<<62)
		return b
	}()
	hugeRR := func() []byte {
		b := blobWith(t, Trailer{Metadata: MetadataVersion{2, 6}}, 0)
		binary.LittleEndian.PutUint64(b[len(b)-footerSize-8:], 1<<40)
		return b
	}()
	badType := bytes.Clone(good)
	badType[footerAt-1] = 9

	tests := []struct {
		name string
		blob []byte
		want error
	}{
		{"empty", nil, ErrNoMetadata},
		{"shorter than footer", []byte("OVNPU"), ErrNoMetadata},
		{"wrong magic", append(bytes.Clone(good[:len(good)-1]), 'X'), ErrNoMetadata},
		{"payload size beyond blob", withPayloadSize(1 << 62), ErrMalformedTrailer},
		{"payload leaves no version", withPayloadSize(uint64(footerAt - 3)), ErrMalformedTrailer},
		{"metadata area too large", func() []byte {
			b := make([]byte, MaxMetadataSize+footerSize+1)
			copy(b[len(b)-5:], TrailerMagic)
			return b
		}(), ErrMalformedTrailer},
		{"metadata 1.0", withVersion(1 << 16), ErrMetadataVersion},
		{"metadata 3.0", withVersion(3 << 16), ErrMetadataVersion},
		{"metadata 0.7", withVersion(7), ErrMetadataVersion},
		{"metadata 2.8", withVersion(2<<16 | 8), ErrFutureMetadata},
		{"truncated 2.7", func() []byte {
			meta, err := encodeMetadata(trailerFor(7))
			if err != nil {
				t.Fatal(err)
			}
			b := append(bytes.Clone(elfPayload), meta[:len(meta)-1]...) // no blob type
			b = binary.LittleEndian.AppendUint64(b, uint64(len(elfPayload)))
			return append(b, TrailerMagic...)
		}(), ErrMalformedTrailer},
		{"init count", hugeInits, ErrMalformedTrailer},
		{"layout count", hugeLayouts, ErrMalformedTrailer},
		{"runtime requirements length", hugeRR, ErrMalformedTrailer},
		{"blob type", badType, ErrMalformedTrailer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseTrailer(bytes.NewReader(tt.blob), int64(len(tt.blob)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// tailOnly fails any read before off, proving ParseTrailer never touches the payload.
type tailOnly struct {
	r   io.ReaderAt
	off int64
}

func (t tailOnly) ReadAt(p []byte, off int64) (int, error) {
	if off < t.off {
		return 0, fmt.Errorf("read at %d before the metadata at %d", off, t.off)
	}
	return t.r.ReadAt(p, off)
}

func TestParseTrailerReadsOnlyTail(t *testing.T) {
	t.Parallel()
	blob := blobWith(t, trailerFor(7), 100)
	r := tailOnly{bytes.NewReader(blob), int64(len(elfPayload))}
	if _, err := ParseTrailer(r, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	// A short read surfaces as an error, not a bogus trailer.
	if _, err := ParseTrailer(bytes.NewReader(blob[:len(blob)-1]), int64(len(blob))); err == nil {
		t.Fatal("short reader accepted")
	}
}

func TestAppendTrailerRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		tr   Trailer
		want error
	}{
		{"version 1.0", Trailer{Metadata: MetadataVersion{1, 0}}, ErrMetadataVersion},
		{"version 2.8", Trailer{Metadata: MetadataVersion{2, 8}}, ErrMetadataVersion},
		{"batch in 2.1", Trailer{Metadata: MetadataVersion{2, 1}, Batch: 2}, ErrMalformedTrailer},
		{"descriptor in 2.5", Trailer{Metadata: MetadataVersion{2, 5}, RuntimeRequirements: "t=4"}, ErrMalformedTrailer},
		{"blob type", Trailer{Metadata: MetadataVersion{2, 7}, BlobType: 7}, ErrMalformedTrailer},
		{"long layout", Trailer{Metadata: MetadataVersion{2, 3}, InputLayouts: []string{string(make([]byte, 1<<16))}},
			ErrMalformedTrailer},
		{"too large", Trailer{Metadata: MetadataVersion{2, 6}, RuntimeRequirements: string(make([]byte, MaxMetadataSize))},
			ErrMalformedTrailer},
	}
	for _, tt := range tests {
		if err := AppendTrailer(io.Discard, 0, tt.tr); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

// countingReader counts the bytes ParseTrailer reads.
type countingReader struct {
	r io.ReaderAt
	n int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.n += int64(len(p))
	return c.r.ReadAt(p, off)
}

func FuzzParseTrailer(f *testing.F) {
	for minor := uint16(0); minor <= maxMetadataMinor; minor++ {
		var buf bytes.Buffer
		buf.Write(elfPayload)
		if err := AppendTrailer(&buf, uint64(len(elfPayload)), trailerFor(minor)); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
		buf.Reset()
		if err := AppendTrailer(&buf, 0, Trailer{Metadata: MetadataVersion{2, minor}}); err != nil {
			f.Fatal(err)
		}
		f.Add(append(buf.Bytes()[:buf.Len()-footerSize], append(make([]byte, 7), buf.Bytes()[buf.Len()-footerSize:]...)...))
	}
	f.Add([]byte("OVNPU"))
	f.Fuzz(func(t *testing.T, blob []byte) {
		cr := &countingReader{r: bytes.NewReader(blob)}
		tr, err := ParseTrailer(cr, int64(len(blob)))
		if cr.n > MaxMetadataSize+int64(footerSize) {
			t.Fatalf("read %d bytes, more than the metadata bound", cr.n)
		}
		if err != nil {
			return
		}
		// What the parser accepted lies inside the blob.
		if tr.PayloadSize+tr.MetadataSize+uint64(footerSize) != uint64(len(blob)) {
			t.Fatalf("payload %d + metadata %d + footer != blob %d", tr.PayloadSize, tr.MetadataSize, len(blob))
		}
		var strs int
		for _, l := range append(tr.InputLayouts, tr.OutputLayouts...) {
			strs += len(l) + 2
		}
		if uint64(8*len(tr.InitSizes)+strs+len(tr.RuntimeRequirements)) > tr.MetadataSize {
			t.Fatalf("decoded fields exceed the metadata area")
		}
		// Re-encoding an accepted trailer gives a blob that parses to the same trailer (minus the padding).
		var buf bytes.Buffer
		buf.Write(blob[:tr.PayloadSize])
		if err := AppendTrailer(&buf, tr.PayloadSize, *tr); err != nil {
			t.Fatalf("accepted trailer does not re-encode: %v", err)
		}
		again, err := ParseTrailer(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatalf("re-encoded trailer does not parse: %v", err)
		}
		again.MetadataSize = tr.MetadataSize
		if !reflect.DeepEqual(again, tr) {
			t.Fatalf("re-encoded trailer differs:\n got %+v\nwant %+v", again, tr)
		}
	})
}

func TestBlobTypeString(t *testing.T) {
	t.Parallel()
	for bt, want := range map[BlobType]string{BlobTypeELF: "ELF", BlobTypeLLVM: "LLVM", BlobTypeBytecode: "BYTECODE", 9: "BlobType(9)"} {
		if got := bt.String(); got != want {
			t.Errorf("%d: %q, want %q", bt, got, want)
		}
	}
}
