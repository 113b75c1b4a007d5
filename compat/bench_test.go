package compat

import (
	"bytes"
	"testing"
)

func BenchmarkCheck(b *testing.B) {
	r := DefaultRules()
	blob, host := lnl(), lnl()
	host.FirmwareMI = "11.6"
	for b.Loop() {
		if !Check(r, blob, host, "").Compatible {
			b.Fatal("incompatible")
		}
	}
}

func BenchmarkClass(b *testing.B) {
	r := DefaultRules()
	f := lnl()
	for b.Loop() {
		if _, err := Class(r, f, ""); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseTrailer(b *testing.B) {
	var buf bytes.Buffer
	buf.Write(elfPayload)
	if err := AppendTrailer(&buf, uint64(len(elfPayload)), trailerFor(7)); err != nil {
		b.Fatal(err)
	}
	blob := bytes.NewReader(buf.Bytes())
	for b.Loop() {
		if _, err := ParseTrailer(blob, int64(buf.Len())); err != nil {
			b.Fatal(err)
		}
	}
}
