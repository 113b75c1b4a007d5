package ovcache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// FormatHeader returns the header line, newline included, as OpenVINO writes it: attributes in the order
// ie_version, file_info, runtime_info, header_size_alignment (the last only when h.Alignment > 0), values escaped
// as XML attribute text. decl prefixes the XML declaration `<?xml version="1.0"?>` (what pugixml writes unless
// told not to); the parser accepts both forms.
func FormatHeader(h Header, decl bool) ([]byte, error) {
	if h.Build == "" {
		return nil, fmt.Errorf("%w: no build string", ErrHeader)
	}
	if h.Alignment < 0 || h.Alignment > MaxAlignment || (h.Alignment != 0 && h.Alignment&(h.Alignment-1) != 0) {
		return nil, fmt.Errorf("%w: alignment %d is not 0 or a power of two up to %d", ErrHeader, h.Alignment, MaxAlignment)
	}
	for _, v := range []string{h.Build, h.FileInfo, h.RuntimeInfo} {
		if len(v) > MaxAttr {
			return nil, fmt.Errorf("%w: attribute longer than %d bytes", ErrHeader, MaxAttr)
		}
		if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 && r != '\t' && r != '\n' && r != '\r' }) {
			return nil, fmt.Errorf("%w: control character in an attribute (not XML)", ErrHeader)
		}
	}
	var b bytes.Buffer
	if decl {
		b.WriteString(`<?xml version="1.0"?>`)
	}
	b.WriteString(`<compiled_blob ie_version="`)
	escapeAttr(&b, h.Build)
	b.WriteString(`" file_info="`)
	escapeAttr(&b, h.FileInfo)
	b.WriteString(`" runtime_info="`)
	escapeAttr(&b, h.RuntimeInfo)
	b.WriteString(`"`)
	if h.Alignment > 0 {
		b.WriteString(` header_size_alignment="` + strconv.FormatInt(h.Alignment, 10) + `"`)
	}
	b.WriteString("/>\n")
	if b.Len() > MaxHeaderLine {
		return nil, fmt.Errorf("%w: header line of %d bytes", ErrHeader, b.Len())
	}
	return b.Bytes(), nil
}

func escapeAttr(b *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '&':
			b.WriteString("&amp;")
		case c == '<':
			b.WriteString("&lt;")
		case c == '>':
			b.WriteString("&gt;")
		case c == '"':
			b.WriteString("&quot;")
		case c < 0x20:
			b.WriteString("&#" + strconv.Itoa(int(c)) + ";")
		default:
			b.WriteByte(c)
		}
	}
}

// WriteEntry writes a whole entry to w: the header line, zero padding up to h.Alignment, then blobSize bytes of
// the exported blob from blob (streamed). It is the stand-in for OpenVINO's writer in tests and demos.
func WriteEntry(w io.Writer, h Header, decl bool, blob io.Reader, blobSize int64) error {
	line, err := FormatHeader(h, decl)
	if err != nil {
		return err
	}
	if _, err := w.Write(line); err != nil {
		return err
	}
	if h.Alignment > 0 {
		n := int64(len(line))
		if pad := (n+h.Alignment-1)/h.Alignment*h.Alignment - n; pad > 0 {
			if _, err := w.Write(make([]byte, pad)); err != nil {
				return err
			}
		}
	}
	n, err := io.Copy(w, io.LimitReader(blob, blobSize))
	if err != nil {
		return err
	}
	if n != blobSize {
		return errors.New("ovcache: blob shorter than its size")
	}
	return nil
}
