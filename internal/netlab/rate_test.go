//go:build linux

package netlab

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseRate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"100mbit", 100e6, true},
		{"100Mbit", 100e6, true},
		{" 1gbit ", 1e9, true},
		{"1.5gbit", 1.5e9, true},
		{"500kbit", 500e3, true},
		{"12mbps", 96e6, true},
		{"8000bit", 8000, true},
		{"1kbps", 8000, true},
		{"100gbit", 100e9, true},
		{"", 0, false},
		{"100", 0, false},
		{"mbit", 0, false},
		{"-5mbit", 0, false},
		{"0mbit", 0, false},
		{"999bit", 0, false},
		{"101gbit", 0, false},
		{"1tbit", 0, false},
		{"nanmbit", 0, false},
		{"infmbit", 0, false},
		{"10 mbitx", 0, false},
		{"100000000000000000000000000000000000mbit", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrRate) {
			t.Errorf("ParseRate(%q) error %v is not ErrRate", tt.in, err)
		}
	}
}

func TestFormatRate(t *testing.T) {
	t.Parallel()
	for bps, want := range map[uint64]string{100e6: "100mbit", 1e9: "1gbit", 1500e6: "1500mbit", 2500: "2500bit", 64e3: "64kbit"} {
		if got := FormatRate(bps); got != want {
			t.Errorf("FormatRate(%d) = %q, want %q", bps, got, want)
		}
		if back, err := ParseRate(FormatRate(bps)); err != nil || back != bps {
			t.Errorf("ParseRate(FormatRate(%d)) = %d, %v", bps, back, err)
		}
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"100mbit", "1.5gbit", "12mbps", "", "100", "-1kbit", "1e3mbit", "0x10mbit"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		bps, err := ParseRate(s)
		if err != nil {
			if bps != 0 || !errors.Is(err, ErrRate) {
				t.Fatalf("ParseRate(%q) = %d, %v", s, bps, err)
			}
			return
		}
		if bps < 1000 || bps > maxRate {
			t.Fatalf("ParseRate(%q) = %d out of range", s, bps)
		}
	})
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Hosts: 6}, true},
		{"rate", Config{Hosts: 2, Rate: "100mbit"}, true},
		{"full /24", Config{Hosts: 254}, true},
		{"too many for /24", Config{Hosts: 255}, false},
		{"zero hosts", Config{}, false},
		{"negative hosts", Config{Hosts: -1}, false},
		{"bad rate", Config{Hosts: 2, Rate: "fast"}, false},
		{"ipv6", Config{Hosts: 2, Subnet: netip.MustParsePrefix("fd00::/64")}, false},
		{"/31", Config{Hosts: 1, Subnet: netip.MustParsePrefix("10.1.1.0/31")}, false},
		{"/30", Config{Hosts: 2, Subnet: netip.MustParsePrefix("10.1.1.0/30")}, true},
		{"prefix", Config{Hosts: 1, Prefix: "fleet1"}, true},
		{"prefix with dash", Config{Hosts: 1, Prefix: "a-b"}, false},
		{"prefix upper", Config{Hosts: 1, Prefix: "Lab"}, false},
		{"prefix too long", Config{Hosts: 1, Prefix: "abcdefghijklm"}, false},
		{"congestion control", Config{Hosts: 1, TCPCongestion: "cubic"}, true},
		{"congestion control, not a name", Config{Hosts: 1, TCPCongestion: "cubic; reboot"}, false},
		{"congestion control with a path", Config{Hosts: 1, TCPCongestion: "../x"}, false},
	}
	for _, tt := range tests {
		c, err := tt.cfg.withDefaults()
		if tt.ok != (err == nil) {
			t.Errorf("%s: withDefaults() error = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Errorf("%s: error %v is not ErrConfig", tt.name, err)
		}
		if err == nil && (c.Prefix == "" || !c.Subnet.IsValid()) {
			t.Errorf("%s: defaults not filled in: %+v", tt.name, c)
		}
	}
}

func TestRunID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, id string
		ok       bool
	}{
		{"netlab-a1b2c3-br", "a1b2c3", true},
		{"netlab-a1b2c3-h12", "a1b2c3", true},
		{"netlab-a1b2c3.lock", "a1b2c3", true},
		{"netlab2-a1b2c3-br", "", false},
		{"netlab-A1B2C3-br", "", false},
		{"netlab-a1b2c-br", "", false},
		{"netlab-a1b2c3x-br", "", false},
		{"netlab-zzzzzz-br", "", false},
		{"other", "", false},
	}
	for _, tt := range tests {
		id, ok := runID("netlab", tt.name)
		if id != tt.id || ok != tt.ok {
			t.Errorf("runID(%q) = %q, %v; want %q, %v", tt.name, id, ok, tt.id, tt.ok)
		}
	}
}

func TestParseStats(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want LinkStats
		ok   bool
	}{
		{"123\n456\n", LinkStats{RxBytes: 123, TxBytes: 456}, true},
		{"0 0", LinkStats{}, true},
		{"123\n", LinkStats{}, false},
		{"1 2 3", LinkStats{}, false},
		{"-1 2", LinkStats{}, false},
		{"x 2", LinkStats{}, false},
		{"", LinkStats{}, false},
	}
	for _, tt := range tests {
		got, err := parseStats([]byte(tt.in))
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("parseStats(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func FuzzParseStats(f *testing.F) {
	f.Add([]byte("123\n456\n"))
	f.Add([]byte("18446744073709551615 0"))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = parseStats(b) })
}
