package compat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// TrailerMagic ends every exported NPU blob.
const TrailerMagic = "OVNPU"

const (
	footerSize = 8 + len(TrailerMagic) // uint64 payload size + magic
	// MaxMetadataSize bounds the bytes between the payload and the footer (metadata plus padding) that
	// ParseTrailer reads. Real metadata is a few hundred bytes; older writers padded it, by far less than this.
	MaxMetadataSize = 1 << 20
	// Newest metadata version this package reads and writes.
	maxMetadataMinor = 7
)

// Trailer errors. The texts follow OpenVINO's reader where one exists, so user reports match.
var (
	// ErrNoMetadata: the blob does not end with the OVNPU footer (OpenVINO: "The blob is missing the NPU
	// metadata!").
	ErrNoMetadata = errors.New("the blob is missing the NPU metadata")
	// ErrMetadataVersion: a metadata version this reader does not know (OpenVINO: "Metadata version is not
	// supported!"), including 1.x, whose layout is unverified.
	ErrMetadataVersion = errors.New("metadata version is not supported")
	// ErrFutureMetadata: a 2.x metadata newer than 2.7, written by a future OpenVINO ("Blobs compiled with the
	// future OpenVINO version should not be accepted").
	ErrFutureMetadata = errors.New("blob metadata is from a future OpenVINO version")
	// ErrMalformedTrailer: sizes or counts that cannot be right, or metadata cut short.
	ErrMalformedTrailer = errors.New("malformed NPU blob metadata")
)

// MetadataVersion is the trailer's metadata version, stored as uint32 major<<16 | minor.
type MetadataVersion struct{ Major, Minor uint16 }

func (v MetadataVersion) String() string {
	return strconv.Itoa(int(v.Major)) + "." + strconv.Itoa(int(v.Minor))
}

// MarshalText renders the version as "major.minor" (JSON output of inspect).
func (v MetadataVersion) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// OVVersion is the OpenVINO version that exported the blob.
type OVVersion struct{ Major, Minor, Patch uint16 }

func (v OVVersion) String() string {
	return strconv.Itoa(int(v.Major)) + "." + strconv.Itoa(int(v.Minor)) + "." + strconv.Itoa(int(v.Patch))
}

// MarshalText renders the version as "major.minor.patch" (JSON output of inspect).
func (v OVVersion) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// BlobType is the payload kind of metadata 2.7. The numeric values follow the order OpenVINO declares them in
// (ELF, LLVM, bytecode) and are unverified.
type BlobType uint8

// Blob types of metadata 2.7.
const (
	BlobTypeELF BlobType = iota
	BlobTypeLLVM
	BlobTypeBytecode
)

// MarshalText renders the type by name (JSON output of inspect).
func (b BlobType) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

func (b BlobType) String() string {
	switch b {
	case BlobTypeELF:
		return "ELF"
	case BlobTypeLLVM:
		return "LLVM"
	case BlobTypeBytecode:
		return "BYTECODE"
	}
	return "BlobType(" + strconv.Itoa(int(b)) + ")"
}

// Trailer is the NPU plugin metadata at the end of an exported blob. Fields newer than Metadata are zero.
type Trailer struct {
	Metadata            MetadataVersion `json:"metadata"`
	OpenVINO            OVVersion       `json:"openvino"`             // 2.0+
	InitSizes           []uint64        `json:"init_sizes"`           // 2.1+: weight-init schedule sizes; non-empty means a weightless blob
	Batch               int64           `json:"batch"`                // 2.2+: 0 = none
	InputLayouts        []string        `json:"input_layouts"`        // 2.3+
	OutputLayouts       []string        `json:"output_layouts"`       // 2.3+
	CompilerVersion     uint32          `json:"compiler_version"`     // 2.4+: major<<16 | minor; 0 = none
	Encrypted           bool            `json:"encrypted"`            // 2.5+
	RuntimeRequirements string          `json:"runtime_requirements"` // 2.6+: compatibility descriptor, as stored
	BlobType            BlobType        `json:"blob_type"`            // 2.7+
	PayloadSize         uint64          `json:"payload_size"`         // set by ParseTrailer: the compiler payload is bytes [0, PayloadSize)
	MetadataSize        uint64          `json:"metadata_size"`        // set by ParseTrailer: bytes from the payload's end to the footer, padding included
}

// CompilerVersionString renders CompilerVersion as "major.minor", or "" when none is recorded.
func (t *Trailer) CompilerVersionString() string {
	if t.CompilerVersion == 0 {
		return ""
	}
	return compilerVersionString(t.CompilerVersion)
}

// ParseTrailer reads the NPU metadata trailer of a blob of the given size from r. It reads only the footer and the
// metadata area (at most MaxMetadataSize bytes), never the payload. Bytes between the end of the metadata and the
// footer are tolerated as padding, as OpenVINO does.
func ParseTrailer(r io.ReaderAt, size int64) (*Trailer, error) {
	if size < int64(footerSize) {
		return nil, fmt.Errorf("%w: blob of %d bytes is shorter than the %d-byte footer", ErrNoMetadata, size,
			footerSize)
	}
	var footer [footerSize]byte
	if err := readFull(r, footer[:], size-int64(footerSize)); err != nil {
		return nil, fmt.Errorf("read blob footer: %w", err)
	}
	if string(footer[8:]) != TrailerMagic {
		return nil, fmt.Errorf("%w: last 5 bytes are %q, not %q", ErrNoMetadata, footer[8:], TrailerMagic)
	}
	payload := binary.LittleEndian.Uint64(footer[:8])
	limit := uint64(size) - uint64(footerSize) // metadata ends here
	if payload > limit || limit-payload < 4 {
		return nil, fmt.Errorf("%w: payload size %d leaves no room for metadata in a %d-byte blob",
			ErrMalformedTrailer, payload, size)
	}
	area := limit - payload
	if area > MaxMetadataSize {
		return nil, fmt.Errorf("%w: metadata area of %d bytes exceeds the %d-byte limit", ErrMalformedTrailer,
			area, MaxMetadataSize)
	}
	buf := make([]byte, area)
	if err := readFull(r, buf, int64(payload)); err != nil {
		return nil, fmt.Errorf("read blob metadata: %w", err)
	}
	t, err := decodeMetadata(buf)
	if err != nil {
		return nil, err
	}
	t.PayloadSize = payload
	t.MetadataSize = area
	return t, nil
}

func readFull(r io.ReaderAt, buf []byte, off int64) error {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// cursor reads little-endian fields from the metadata area; the first failure sticks.
type cursor struct {
	b     []byte
	off   int
	field string // the field that ran out of bytes
}

func (c *cursor) take(n uint64, field string) []byte {
	if c.field != "" {
		return nil
	}
	if n > uint64(len(c.b)-c.off) {
		c.field = field
		return nil
	}
	p := c.b[c.off : c.off+int(n)]
	c.off += int(n)
	return p
}

func (c *cursor) u8(field string) uint8 {
	if p := c.take(1, field); p != nil {
		return p[0]
	}
	return 0
}

func (c *cursor) u16(field string) uint16 {
	if p := c.take(2, field); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (c *cursor) u32(field string) uint32 {
	if p := c.take(4, field); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (c *cursor) u64(field string) uint64 {
	if p := c.take(8, field); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (c *cursor) remaining() uint64 { return uint64(len(c.b) - c.off) }

func decodeMetadata(b []byte) (*Trailer, error) {
	c := &cursor{b: b}
	raw := c.u32("version")
	v := MetadataVersion{Major: uint16(raw >> 16), Minor: uint16(raw)}
	switch {
	case c.field != "":
		return nil, fmt.Errorf("%w: no room for the metadata version", ErrMalformedTrailer)
	case v.Major == 2 && v.Minor > maxMetadataMinor:
		return nil, fmt.Errorf("%w: metadata %s, this reader knows up to 2.%d", ErrFutureMetadata, v,
			maxMetadataMinor)
	case v.Major != 2:
		return nil, fmt.Errorf("%w: metadata %s (raw 0x%08x), this reader knows 2.0 to 2.%d", ErrMetadataVersion, v,
			raw, maxMetadataMinor)
	}
	t := &Trailer{Metadata: v}
	t.OpenVINO = OVVersion{c.u16("openvino major"), c.u16("openvino minor"), c.u16("openvino patch")}
	if v.Minor >= 1 {
		n := c.u64("init count")
		if c.field == "" && n > c.remaining()/8 {
			return nil, fmt.Errorf("%w: %d init sizes do not fit in %d bytes", ErrMalformedTrailer, n, c.remaining())
		}
		if n > 0 {
			t.InitSizes = make([]uint64, n)
			for i := range t.InitSizes {
				t.InitSizes[i] = c.u64("init size")
			}
		}
	}
	if v.Minor >= 2 {
		t.Batch = int64(c.u64("batch"))
	}
	if v.Minor >= 3 {
		nIn, nOut := c.u64("input layout count"), c.u64("output layout count")
		// Each layout takes at least its 2-byte length.
		if c.field == "" && (nIn > c.remaining()/2 || nOut > c.remaining()/2-nIn) {
			return nil, fmt.Errorf("%w: %d+%d layouts do not fit in %d bytes", ErrMalformedTrailer, nIn, nOut,
				c.remaining())
		}
		t.InputLayouts = readLayouts(c, nIn)
		t.OutputLayouts = readLayouts(c, nOut)
	}
	if v.Minor >= 4 {
		t.CompilerVersion = c.u32("compiler version")
	}
	if v.Minor >= 5 {
		t.Encrypted = c.u8("encrypted") != 0
	}
	if v.Minor >= 6 {
		n := c.u64("runtime requirements length")
		if c.field == "" && n > c.remaining() {
			return nil, fmt.Errorf("%w: runtime requirements of %d bytes do not fit in %d bytes", ErrMalformedTrailer,
				n, c.remaining())
		}
		t.RuntimeRequirements = string(c.take(n, "runtime requirements"))
	}
	if v.Minor >= 7 {
		t.BlobType = BlobType(c.u8("blob type"))
		if c.field == "" && t.BlobType > BlobTypeBytecode {
			return nil, fmt.Errorf("%w: invalid blob type %d", ErrMalformedTrailer, t.BlobType)
		}
	}
	if c.field != "" {
		return nil, fmt.Errorf("%w: metadata %s cut short at its %s", ErrMalformedTrailer, v, c.field)
	}
	return t, nil
}

func readLayouts(c *cursor, n uint64) []string {
	if n == 0 {
		return nil
	}
	out := make([]string, 0, min(n, 1024)) // n is bounded by the area, but need not be preallocated
	for range n {
		l := c.take(uint64(c.u16("layout length")), "layout")
		if c.field != "" {
			return nil
		}
		out = append(out, string(l))
	}
	return out
}

// AppendTrailer writes t's metadata in the layout of t.Metadata, then the footer (payloadSize and the magic). The
// caller has already written exactly payloadSize bytes of payload to w. PayloadSize and MetadataSize of t are
// ignored. It refuses versions other than 2.0 to 2.7, fields the version cannot carry, and values no reader
// would accept.
func AppendTrailer(w io.Writer, payloadSize uint64, t Trailer) error {
	b, err := encodeMetadata(t)
	if err != nil {
		return err
	}
	b = binary.LittleEndian.AppendUint64(b, payloadSize)
	b = append(b, TrailerMagic...)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write NPU blob trailer: %w", err)
	}
	return nil
}

func encodeMetadata(t Trailer) ([]byte, error) {
	v := t.Metadata
	if v.Major != 2 || v.Minor > maxMetadataMinor {
		return nil, fmt.Errorf("%w: cannot write metadata %s", ErrMetadataVersion, v)
	}
	needs := func(field string, minor uint16, set bool) error {
		if set && v.Minor < minor {
			return fmt.Errorf("%w: %s needs metadata 2.%d, have %s", ErrMalformedTrailer, field, minor, v)
		}
		return nil
	}
	if err := errors.Join(
		needs("init sizes", 1, len(t.InitSizes) > 0),
		needs("batch", 2, t.Batch != 0),
		needs("layouts", 3, len(t.InputLayouts)+len(t.OutputLayouts) > 0),
		needs("compiler version", 4, t.CompilerVersion != 0),
		needs("encrypted", 5, t.Encrypted),
		needs("runtime requirements", 6, t.RuntimeRequirements != ""),
		needs("blob type", 7, t.BlobType != BlobTypeELF),
	); err != nil {
		return nil, err
	}
	if t.BlobType > BlobTypeBytecode {
		return nil, fmt.Errorf("%w: invalid blob type %d", ErrMalformedTrailer, t.BlobType)
	}
	b := binary.LittleEndian.AppendUint32(nil, uint32(v.Major)<<16|uint32(v.Minor))
	b = binary.LittleEndian.AppendUint16(b, t.OpenVINO.Major)
	b = binary.LittleEndian.AppendUint16(b, t.OpenVINO.Minor)
	b = binary.LittleEndian.AppendUint16(b, t.OpenVINO.Patch)
	if v.Minor >= 1 {
		b = binary.LittleEndian.AppendUint64(b, uint64(len(t.InitSizes)))
		for _, s := range t.InitSizes {
			b = binary.LittleEndian.AppendUint64(b, s)
		}
	}
	if v.Minor >= 2 {
		b = binary.LittleEndian.AppendUint64(b, uint64(t.Batch))
	}
	if v.Minor >= 3 {
		b = binary.LittleEndian.AppendUint64(b, uint64(len(t.InputLayouts)))
		b = binary.LittleEndian.AppendUint64(b, uint64(len(t.OutputLayouts)))
		for _, l := range append(append([]string(nil), t.InputLayouts...), t.OutputLayouts...) {
			if len(l) > math.MaxUint16 {
				return nil, fmt.Errorf("%w: layout of %d bytes, at most %d", ErrMalformedTrailer, len(l),
					math.MaxUint16)
			}
			b = binary.LittleEndian.AppendUint16(b, uint16(len(l)))
			b = append(b, l...)
		}
	}
	if v.Minor >= 4 {
		b = binary.LittleEndian.AppendUint32(b, t.CompilerVersion)
	}
	if v.Minor >= 5 {
		var e uint8
		if t.Encrypted {
			e = 1
		}
		b = append(b, e)
	}
	if v.Minor >= 6 {
		b = binary.LittleEndian.AppendUint64(b, uint64(len(t.RuntimeRequirements)))
		b = append(b, t.RuntimeRequirements...)
	}
	if v.Minor >= 7 {
		b = append(b, uint8(t.BlobType))
	}
	if len(b) > MaxMetadataSize {
		return nil, fmt.Errorf("%w: metadata of %d bytes exceeds the %d-byte limit", ErrMalformedTrailer, len(b),
			MaxMetadataSize)
	}
	return b, nil
}
