package ovcache_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
)

var ov = compat.OVVersion{Major: 2026, Minor: 1, Patch: 0}

func hdr(align int64) ovcache.Header {
	return ovcache.Header{Build: ovcachetest.Build, FileInfo: "1234567", RuntimeInfo: `<rt_info><a v="1"/></rt_info>`, Alignment: align}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	blob := ovcachetest.Blob(ovcachetest.Trailer(ov, 7, 4), 5000, 1)
	for _, align := range []int64{0, 1, 64, 4096} {
		for _, decl := range []bool{false, true} {
			h := hdr(align)
			data := ovcachetest.Entry(h, decl, blob)
			e, err := ovcache.Parse(bytes.NewReader(data), int64(len(data)), 0)
			if err != nil {
				t.Fatalf("align %d decl %v: %v", align, decl, err)
			}
			if e.Header != h {
				t.Errorf("align %d decl %v: header %+v, want %+v", align, decl, e.Header, h)
			}
			if align > 1 && e.BlobOffset%align != 0 {
				t.Errorf("align %d: blob at %d", align, e.BlobOffset)
			}
			if !bytes.Equal(data[e.BlobOffset:], blob) || e.BlobSize != int64(len(blob)) {
				t.Errorf("align %d decl %v: blob section wrong (offset %d size %d)", align, decl, e.BlobOffset, e.BlobSize)
			}
			if e.Trailer.OpenVINO != ov || e.Trailer.PayloadSize != 5000 {
				t.Errorf("trailer %+v", e.Trailer)
			}
		}
	}
}

func TestEscapedAttributes(t *testing.T) {
	t.Parallel()
	h := ovcache.Header{Build: `2026.1.0-1-x "q" <&> 'a'`, FileInfo: "a\tb\nc", RuntimeInfo: "\r"}
	line, err := ovcache.FormatHeader(h, false)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
		t.Fatalf("header line %q is not one line", line)
	}
	got, err := ovcache.ParseHeaderLine(line[:len(line)-1])
	if err != nil || got != h {
		t.Fatalf("got %+v, %v; want %+v", got, err, h)
	}
}

// The header line as the original writer produced it (no runtime_info, no alignment) and with a declaration.
func TestHeaderForms(t *testing.T) {
	t.Parallel()
	blob := ovcachetest.Blob(ovcachetest.Trailer(ov, 0, 0), 100, 2)
	for _, line := range []string{
		`<compiled_blob ie_version="2026.1.0-1" file_info="0"/>`,
		`<?xml version="1.0"?><compiled_blob ie_version="2026.1.0-1" file_info="0" />`,
		`<compiled_blob ie_version="2026.1.0-1" file_info="0" runtime_info="" header_size_alignment="0"></compiled_blob>`,
	} {
		data := append([]byte(line+"\n"), blob...)
		e, err := ovcache.Parse(bytes.NewReader(data), int64(len(data)), 0)
		if err != nil {
			t.Errorf("%s: %v", line, err)
			continue
		}
		if e.Build != "2026.1.0-1" || e.BlobOffset != int64(len(line)+1) {
			t.Errorf("%s: %+v", line, e)
		}
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	blob := ovcachetest.Blob(ovcachetest.Trailer(ov, 0, 0), 100, 3)
	good := ovcachetest.Entry(hdr(64), false, blob)
	padStart := bytes.IndexByte(good, '\n') + 1
	withPad := func(b byte) []byte {
		d := bytes.Clone(good)
		d[padStart] = b
		return d
	}
	long := append([]byte(`<compiled_blob ie_version="`+strings.Repeat("x", ovcache.MaxHeaderLine)+`" file_info="0"/>`+"\n"), blob...)
	tests := []struct {
		name string
		data []byte
		max  int64
		want error
		msg  string
	}{
		{"empty", nil, 0, ovcache.ErrHeader, "no newline"},
		{"no newline", []byte(`<compiled_blob ie_version="1" file_info="0"/>`), 0, ovcache.ErrHeader, "no newline"},
		{"line too long", long, 0, ovcache.ErrHeader, "no newline"},
		{"too large", good, int64(len(good) - 1), ovcache.ErrTooLarge, ""},
		{"not xml", append([]byte("hello\n"), blob...), 0, ovcache.ErrHeader, ""},
		{"other element", append([]byte(`<compiled ie_version="1" file_info="0"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "unexpected element"},
		{"two elements", append([]byte(`<compiled_blob ie_version="1" file_info="0"/><compiled_blob ie_version="1" file_info="0"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "unexpected element"},
		{"unclosed", append([]byte(`<compiled_blob ie_version="1" file_info="0">`+"\n"), blob...), 0, ovcache.ErrHeader, ""},
		{"text", append([]byte(`<compiled_blob ie_version="1" file_info="0">x</compiled_blob>`+"\n"), blob...), 0, ovcache.ErrHeader, "unexpected"},
		{"no build", append([]byte(`<compiled_blob file_info="0"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "no ie_version"},
		{"empty build", append([]byte(`<compiled_blob ie_version="" file_info="0"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "no ie_version"},
		{"no file_info", append([]byte(`<compiled_blob ie_version="1"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "no file_info"},
		{"unknown attribute", append([]byte(`<compiled_blob ie_version="1" file_info="0" x="1"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "unknown attribute"},
		{"duplicate attribute", append([]byte(`<compiled_blob ie_version="1" ie_version="2" file_info="0"/>`+"\n"), blob...), 0, ovcache.ErrHeader, ""},
		{"alignment not power of two", append([]byte(`<compiled_blob ie_version="1" file_info="0" header_size_alignment="100"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "power of two"},
		{"alignment too big", append([]byte(`<compiled_blob ie_version="1" file_info="0" header_size_alignment="4194304"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "power of two"},
		{"alignment with sign", append([]byte(`<compiled_blob ie_version="1" file_info="0" header_size_alignment="+64"/>`+"\n"), blob...), 0, ovcache.ErrHeader, "power of two"},
		{"alignment past end", []byte(`<compiled_blob ie_version="1" file_info="0" header_size_alignment="4096"/>` + "\n"), 0, ovcache.ErrHeader, "past the end"},
		{"non-zero padding", withPad(1), 0, ovcache.ErrHeader, "non-zero"},
		{"NUL in line", append([]byte("<compiled_blob ie_version=\"1\x00\" file_info=\"0\"/>\n"), blob...), 0, ovcache.ErrHeader, "control"},
		{"no trailer", append([]byte(`<compiled_blob ie_version="1" file_info="0"/>`+"\n"), "\x7fELF and nothing"...), 0, compat.ErrNoMetadata, ""},
		{"cut short", good[:len(good)-1], 0, compat.ErrNoMetadata, ""},
	}
	for _, tt := range tests {
		_, err := ovcache.Parse(bytes.NewReader(tt.data), int64(len(tt.data)), tt.max)
		if !errors.Is(err, tt.want) || !strings.Contains(errString(err), tt.msg) {
			t.Errorf("%s: err %v, want %v containing %q", tt.name, err, tt.want, tt.msg)
		}
	}
	if _, err := ovcache.Parse(bytes.NewReader(withPad(0)), int64(len(good)), 0); err != nil {
		t.Errorf("zero padding: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// countingReader counts the bytes read, to show that Parse reads the header, padding and trailer only.
type countingReader struct {
	r *bytes.Reader
	n int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

func TestParseReadsNoPayload(t *testing.T) {
	t.Parallel()
	blob := ovcachetest.Blob(ovcachetest.Trailer(ov, 0, 0), 4<<20, 4)
	data := ovcachetest.Entry(hdr(4096), false, blob)
	cr := &countingReader{r: bytes.NewReader(data)}
	if _, err := ovcache.Parse(cr, int64(len(data)), 0); err != nil {
		t.Fatal(err)
	}
	if cr.n > 200<<10 {
		t.Errorf("read %d bytes of a %d-byte entry", cr.n, len(data))
	}
}

func TestValidName(t *testing.T) {
	t.Parallel()
	for name, ok := range map[string]bool{
		"0.blob": true, "123.blob": true, "18446744073709551615.blob": true,
		"18446744073709551616.blob": false, "": false, ".blob": false, "012.blob": false, "-1.blob": false,
		"+1.blob": false, "1.blob.tmp": false, "../1.blob": false, "a/1.blob": false, "1\\.blob": false,
		".1.blob.tmp-123": false, "1.BLOB": false, "1 .blob": false, "1.blob\x00": false,
	} {
		if ovcache.ValidName(name) != ok {
			t.Errorf("ValidName(%q) = %v", name, !ok)
		}
	}
}

func FuzzParse(f *testing.F) {
	blob := ovcachetest.Blob(ovcachetest.Trailer(ov, 7, 4), 64, 5)
	f.Add(ovcachetest.Entry(hdr(0), false, blob))
	f.Add(ovcachetest.Entry(hdr(0), true, blob))
	f.Add(ovcachetest.Entry(hdr(64), false, blob))
	f.Add(ovcachetest.Entry(hdr(4096), true, blob))
	f.Add([]byte("<compiled_blob ie_version=\"1\" file_info=\"0\"/>\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ovcache.Parse(bytes.NewReader(data), int64(len(data)), 0)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to an entry that parses the same (the padding is canonical: zeros).
		if e.BlobOffset < e.HeaderSize || e.BlobOffset+e.BlobSize != int64(len(data)) {
			t.Fatalf("offsets: %+v of %d bytes", e, len(data))
		}
		again := ovcachetest.Entry(e.Header, false, data[e.BlobOffset:])
		e2, err := ovcache.Parse(bytes.NewReader(again), int64(len(again)), 0)
		if err != nil {
			t.Fatalf("re-encoded entry does not parse: %v", err)
		}
		if e2.Header != e.Header || e2.BlobSize != e.BlobSize || e2.Trailer.PayloadSize != e.Trailer.PayloadSize {
			t.Fatalf("re-encoded entry differs: %+v vs %+v", e2, e)
		}
	})
}
