package compat

import (
	"errors"
	"maps"
	"testing"
)

func TestParseRuntimeRequirements(t *testing.T) {
	t.Parallel()
	rr, err := ParseRuntimeRequirements("meta=2.6;ov=2026.2.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10]")
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(rr.Top, map[string]string{"meta": "2.6", "ov": "2026.2.0"}) {
		t.Fatalf("top = %v", rr.Top)
	}
	wantDesc := map[string]string{"compiler": "8.1", "npu": "4000", "t": "4", "elf": "1.2.2", "mi": "11.4.10"}
	if !maps.Equal(rr.Desc, wantDesc) {
		t.Fatalf("desc = %v", rr.Desc)
	}
	if got, want := rr.String(), "meta=2.6;ov=2026.2.0;desc=[compiler=8.1;elf=1.2.2;mi=11.4.10;npu=4000;t=4]"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}

	// Other keys, desc in the middle, leading zeros.
	rr, err = ParseRuntimeRequirements("ov=2026.02.0;desc=[t=04];meta=2.6;ws=1;batch=2")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rr.String(), "meta=2.6;ov=2026.2.0;batch=2;ws=1;desc=[t=4]"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}

	bad := []string{
		"",
		"meta",
		"meta=",
		"=2.6",
		"meta=2.6;",
		"meta=2.6;;ov=2026.2.0",
		"meta=2.6;meta=2.7",
		"meta=2.6.1",
		"ov=2026.2",
		"desc=[compiler=8.1",
		"desc=compiler=8.1",
		"desc=[a=1]x",
		"desc=[a=1];",
		"desc=[a=1];desc=[b=2]",
		"desc=[a=1;a=2]",
		"desc=[npu=40x0]",
		"desc=[mi=11..4]",
		"desc=[a]",
		"Meta=2.6",
		"meta=2 6",
		"x=[1]",
	}
	for _, s := range bad {
		if _, err := ParseRuntimeRequirements(s); !errors.Is(err, ErrRuntimeRequirements) {
			t.Errorf("ParseRuntimeRequirements(%q) = %v, want ErrRuntimeRequirements", s, err)
		}
	}
}

func FuzzParseRuntimeRequirements(f *testing.F) {
	for _, s := range []string{
		"meta=2.6;ov=2026.2.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10]",
		"meta=2.6;ov=2026.2.0;ws=1;batch=4;desc=[]",
		"desc=[npu=3720]",
		"ov=2026.2.0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rr, err := ParseRuntimeRequirements(s)
		if err != nil {
			return
		}
		canon := rr.String()
		rr2, err := ParseRuntimeRequirements(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, s, err)
		}
		if again := rr2.String(); again != canon {
			t.Fatalf("canonical form not stable: %q -> %q", canon, again)
		}
	})
}
