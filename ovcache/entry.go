// Package ovcache reads and writes the entries of OpenVINO's model cache (CACHE_DIR) and derives the key under
// which one host's entry may serve another. An entry is `<cache_dir>/<decimal uint64>.blob`: one XML header line
// (`<compiled_blob ie_version=... file_info=... runtime_info=... [header_size_alignment=...]/>` and a newline),
// optional zero padding up to the alignment, then the NPU plugin's exported blob with its OVNPU trailer. The format
// is normative in docs/design.md (section 10). This package imports only compat.
package ovcache

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/npu-agent/npu-agent/compat"
)

// Limits, all checked before anything of that size is allocated or read.
const (
	// MaxHeaderLine bounds the XML header line, newline included. Real lines are a few hundred bytes (the runtime
	// info of a model with many inputs can reach some KiB).
	MaxHeaderLine = 64 << 10
	// MaxAlignment bounds header_size_alignment (NPU writes 4096).
	MaxAlignment = 1 << 20
	// MaxAttr bounds each attribute value.
	MaxAttr = 32 << 10
	// MaxNameLen is the longest entry name: 20 digits of a uint64 and ".blob".
	MaxNameLen = 20 + len(".blob")
)

// Errors (wrapped; test with errors.Is).
var (
	// ErrName: not the name of a cache entry (decimal uint64 + ".blob", nothing else: no separators).
	ErrName = errors.New("not an OpenVINO cache entry name")
	// ErrHeader: the header line is missing, too long, not the expected XML element, or its padding is wrong.
	ErrHeader = errors.New("malformed OpenVINO cache entry header")
	// ErrTooLarge: the entry is larger than the caller allows.
	ErrTooLarge = errors.New("OpenVINO cache entry too large")
)

// Header is the XML line in front of an entry's blob.
type Header struct {
	// Build is ie_version: OpenVINO's full build string (openvino.get_version()), which the reader compares
	// exactly with its own.
	Build string
	// FileInfo is file_info: for compile_model(path) a hash of the model file's absolute path, mtime and size;
	// for compile_model(ov::Model) a constant.
	FileInfo string
	// RuntimeInfo is runtime_info, kept as stored (empty when absent, as in older writers).
	RuntimeInfo string
	// Alignment is header_size_alignment: the blob starts at the next multiple of it, the gap filled with zero
	// bytes. 0 when absent.
	Alignment int64
}

// Entry is a parsed cache entry.
type Entry struct {
	Header
	// HeaderSize is the length of the header line, newline included.
	HeaderSize int64
	// BlobOffset is where the exported blob starts (HeaderSize, or rounded up to Alignment).
	BlobOffset int64
	// BlobSize is the exported blob's size: the rest of the entry.
	BlobSize int64
	// Trailer is the blob's OVNPU metadata.
	Trailer *compat.Trailer
}

// ValidName reports whether name is an entry name OpenVINO writes: a decimal uint64 (no sign, no leading zero
// unless it is "0") followed by ".blob". Such a name cannot hold a path separator, "..", or a hidden prefix.
func ValidName(name string) bool {
	if len(name) > MaxNameLen {
		return false
	}
	digits, ok := strings.CutSuffix(name, ".blob")
	if !ok || digits == "" || (len(digits) > 1 && digits[0] == '0') {
		return false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return false
		}
	}
	_, err := strconv.ParseUint(digits, 10, 64)
	return err == nil
}

// CheckName returns ErrName for a name that is not ValidName.
func CheckName(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("%w: %q", ErrName, name)
	}
	return nil
}

// Parse reads an entry of the given size from r: the header line (at most MaxHeaderLine bytes are read for it),
// the padding, and the blob's trailer (compat.ParseTrailer on the blob's section). It never reads the blob's
// payload, and refuses entries above maxSize (0: no limit of the caller's) before reading anything.
func Parse(r io.ReaderAt, size, maxSize int64) (*Entry, error) {
	if size < 0 {
		return nil, fmt.Errorf("%w: negative size", ErrHeader)
	}
	if maxSize > 0 && size > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, size, maxSize)
	}
	n := min(size, MaxHeaderLine)
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, 0); err != nil && !(errors.Is(err, io.EOF)) {
		return nil, fmt.Errorf("read entry header: %w", err)
	}
	nl := bytes.IndexByte(buf, '\n')
	if nl < 0 {
		return nil, fmt.Errorf("%w: no newline in the first %d bytes", ErrHeader, n)
	}
	h, err := ParseHeaderLine(buf[:nl])
	if err != nil {
		return nil, err
	}
	e := &Entry{Header: h, HeaderSize: int64(nl) + 1}
	e.BlobOffset = e.HeaderSize
	if h.Alignment > 0 {
		e.BlobOffset = (e.HeaderSize + h.Alignment - 1) / h.Alignment * h.Alignment
	}
	if e.BlobOffset > size {
		return nil, fmt.Errorf("%w: the blob would start at %d, past the end of a %d-byte entry", ErrHeader, e.BlobOffset, size)
	}
	if pad := e.BlobOffset - e.HeaderSize; pad > 0 {
		if err := checkZero(r, e.HeaderSize, pad); err != nil {
			return nil, err
		}
	}
	e.BlobSize = size - e.BlobOffset
	t, err := compat.ParseTrailer(io.NewSectionReader(r, e.BlobOffset, e.BlobSize), e.BlobSize)
	if err != nil {
		return nil, fmt.Errorf("cache entry blob: %w", err)
	}
	e.Trailer = t
	return e, nil
}

// checkZero checks that the padding [off, off+n) is zero bytes; n <= MaxAlignment.
func checkZero(r io.ReaderAt, off, n int64) error {
	buf := make([]byte, min(n, 64<<10))
	for done := int64(0); done < n; {
		b := buf[:min(int64(len(buf)), n-done)]
		if _, err := r.ReadAt(b, off+done); err != nil && !(errors.Is(err, io.EOF) && len(b) == 0) {
			return fmt.Errorf("read entry padding: %w", err)
		}
		for _, c := range b {
			if c != 0 {
				return fmt.Errorf("%w: non-zero byte in the alignment padding", ErrHeader)
			}
		}
		done += int64(len(b))
	}
	return nil
}

// ParseHeaderLine parses the header line without its newline: an optional XML declaration, then exactly one
// empty element compiled_blob with the attributes ie_version and file_info (required), runtime_info and
// header_size_alignment (optional). Unknown attributes, a second element, text, and duplicated attributes are
// errors: an entry the parser does not fully understand is not shared.
func ParseHeaderLine(line []byte) (Header, error) {
	var h Header
	if len(line) >= MaxHeaderLine {
		return h, fmt.Errorf("%w: header line of %d bytes", ErrHeader, len(line))
	}
	if bytes.IndexByte(line, 0) >= 0 || bytes.IndexByte(line, '\r') >= 0 {
		return h, fmt.Errorf("%w: control byte in the header line", ErrHeader)
	}
	d := xml.NewDecoder(bytes.NewReader(line))
	d.Strict = true
	elements := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return h, fmt.Errorf("%w: %v", ErrHeader, err)
		}
		switch t := tok.(type) {
		case xml.ProcInst:
			if t.Target != "xml" || elements > 0 {
				return h, fmt.Errorf("%w: unexpected processing instruction %q", ErrHeader, t.Target)
			}
		case xml.StartElement:
			elements++
			if elements > 1 || t.Name.Space != "" || t.Name.Local != "compiled_blob" {
				return h, fmt.Errorf("%w: unexpected element <%s>", ErrHeader, t.Name.Local)
			}
			if err := h.setAttrs(t.Attr); err != nil {
				return h, err
			}
		case xml.EndElement:
			if t.Name.Local != "compiled_blob" {
				return h, fmt.Errorf("%w: unexpected end of <%s>", ErrHeader, t.Name.Local)
			}
		default:
			return h, fmt.Errorf("%w: unexpected %T in the header line", ErrHeader, tok)
		}
	}
	if elements != 1 {
		return h, fmt.Errorf("%w: no compiled_blob element", ErrHeader)
	}
	return h, nil
}

func (h *Header) setAttrs(attrs []xml.Attr) error {
	seen := map[string]bool{}
	for _, a := range attrs {
		name := a.Name.Local
		if a.Name.Space != "" || seen[name] {
			return fmt.Errorf("%w: attribute %q twice or namespaced", ErrHeader, name)
		}
		seen[name] = true
		if len(a.Value) > MaxAttr {
			return fmt.Errorf("%w: attribute %s longer than %d bytes", ErrHeader, name, MaxAttr)
		}
		switch name {
		case "ie_version":
			h.Build = a.Value
		case "file_info":
			h.FileInfo = a.Value
		case "runtime_info":
			h.RuntimeInfo = a.Value
		case "header_size_alignment":
			v, err := strconv.ParseInt(a.Value, 10, 64)
			if err != nil || v < 0 || v > MaxAlignment || (v != 0 && v&(v-1) != 0) || strconv.FormatInt(v, 10) != a.Value {
				return fmt.Errorf("%w: header_size_alignment %q is not 0 or a power of two up to %d", ErrHeader, a.Value, MaxAlignment)
			}
			h.Alignment = v
		default:
			return fmt.Errorf("%w: unknown attribute %q", ErrHeader, name)
		}
	}
	if !seen["ie_version"] || h.Build == "" {
		return fmt.Errorf("%w: no ie_version", ErrHeader)
	}
	if !seen["file_info"] {
		return fmt.Errorf("%w: no file_info", ErrHeader)
	}
	return nil
}
