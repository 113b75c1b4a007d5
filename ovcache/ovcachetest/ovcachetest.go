// Package ovcachetest is a stand-in for OpenVINO's cache writer in tests and demos: it builds exported NPU blobs
// (an ELF-looking payload and an OVNPU trailer) and whole cache entries exactly as docs/design.md section 10
// describes them.
package ovcachetest

import (
	"bytes"
	"errors"
	"io/fs"
	"os"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
)

// Build is the OpenVINO build string the stand-in writes by default.
const Build = "2026.1.0-20000-0123456789a-releases/2026/1"

// Blob returns an exported blob: payloadSize bytes starting with the ELF magic (filled from seed), then the
// metadata of t and the footer.
func Blob(t compat.Trailer, payloadSize int, seed byte) []byte {
	payload := make([]byte, max(payloadSize, 4))
	copy(payload, "\x7fELF")
	for i := 4; i < len(payload); i++ {
		payload[i] = seed + byte(i*7)
	}
	var b bytes.Buffer
	b.Write(payload)
	if err := compat.AppendTrailer(&b, uint64(len(payload)), t); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// Trailer is a 2.4 trailer of OpenVINO ov with the given compiler version ("" none).
func Trailer(ov compat.OVVersion, compilerMajor, compilerMinor uint16) compat.Trailer {
	return compat.Trailer{Metadata: compat.MetadataVersion{Major: 2, Minor: 4}, OpenVINO: ov,
		CompilerVersion: uint32(compilerMajor)<<16 | uint32(compilerMinor)}
}

// Entry returns a whole cache entry: header h, padding, blob.
func Entry(h ovcache.Header, decl bool, blob []byte) []byte {
	var b bytes.Buffer
	if err := ovcache.WriteEntry(&b, h, decl, bytes.NewReader(blob), int64(len(blob))); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// Load behaves as OpenVINO's cache reader does on compile_model: it opens path, and if the entry does not parse
// or its build string is not build, it removes the file (OpenVINO then compiles and writes a new one) and reports
// false. A missing file is a miss (false, nil).
func Load(path, build string) (hit bool, err error) {
	e, err := parseFile(path)
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case errors.As(err, &pe):
		return false, err
	case err != nil || e.Build != build:
		return false, os.Remove(path)
	}
	return true, nil
}

// parseFile parses the entry at path; a failure to open or stat it is an *fs.PathError.
func parseFile(path string) (*ovcache.Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return ovcache.Parse(f, st.Size(), 0)
}
