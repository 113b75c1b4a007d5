//go:build linux

package fleetbench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/internal/netlab"
)

func TestLowerBound(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	tests := []struct {
		name     string
		size     int64
		seedUp   float64
		down, up []float64
		want     time.Duration
	}{
		// Equal links: the seed's uplink (= any downlink) bounds: S/r = 128 MiB / 100 Mbit/s.
		{"equal links", 128 * mib, 100e6, []float64{100e6, 100e6}, []float64{100e6, 100e6}, sec(128 * mib * 8 / 100e6)},
		// Fast downlinks, slow uplinks: N copies must squeeze through the sum of uplinks.
		{"uplink bound", 1e6, 8e6, []float64{1e9, 1e9, 1e9}, []float64{1e6, 1e6, 1e6}, sec(3 * 8e6 / 11e6)},
		// One slow receiver.
		{"slow receiver", 1e6, 1e9, []float64{1e9, 1e6}, []float64{1e9, 1e9}, sec(8)},
		// Slow seed.
		{"slow seed", 1e6, 1e6, []float64{1e9}, []float64{1e9}, sec(8)},
		{"no receivers", 1e6, 8e6, nil, nil, sec(1)},
	}
	for _, tt := range tests {
		got := LowerBound(tt.size, tt.seedUp, tt.down, tt.up)
		if d := got - tt.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("%s: LowerBound = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"128MiB", 128 << 20, true},
		{"128mib", 128 << 20, true},
		{"1GiB", 1 << 30, true},
		{"1.5k", 1536, true},
		{"500MB", 500e6, true},
		{"4096", 4096, true},
		{"10b", 10, true},
		{"8GiB", 8 << 30, true},
		{"9GiB", 0, false},
		{"", 0, false},
		{"MiB", 0, false},
		{"0", 0, false},
		{"-1MiB", 0, false},
		{"0.1", 0, false},
		{"NaN", 0, false},
		{"1x", 0, false},
		{"1e400", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrSize) {
			t.Errorf("ParseSize(%q) error %v is not ErrSize", tt.in, err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"128MiB", "1GiB", "1.5k", "4096", "", "-1", "1e3mb", "inf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && (n < 1 || n > MaxSize) {
			t.Fatalf("ParseSize(%q) = %d out of range", s, n)
		}
	})
}

const procStat = `cpu  1000 10 500 8000 100 0 50 0 0 0
cpu0 600 5 250 3900 50 0 40 0 0 0
cpu1 400 5 250 4100 50 0 10 0 0 0
intr 12345 0 0
ctxt 999
`

func TestParseProcStat(t *testing.T) {
	t.Parallel()
	all, cores, err := parseProcStat(strings.NewReader(procStat))
	if err != nil {
		t.Fatal(err)
	}
	if all != (cpuTimes{busy: 1560, total: 9660}) || len(cores) != 2 || cores[0] != (cpuTimes{busy: 895, total: 4845}) {
		t.Errorf("parseProcStat = %+v, %+v", all, cores)
	}
	for _, bad := range []string{"", "intr 1 2\n", "cpu 1 2 3\ncpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3 x 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3 4 5 6 7 8\n"} {
		if _, _, err := parseProcStat(strings.NewReader(bad)); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
	if got := busyFraction(cpuTimes{10, 100}, cpuTimes{60, 200}); got != 0.5 {
		t.Errorf("busyFraction = %v, want 0.5", got)
	}
	if got := busyFraction(cpuTimes{10, 100}, cpuTimes{10, 100}); got != 0 {
		t.Errorf("busyFraction of no time = %v, want 0", got)
	}
}

func FuzzParseProcStat(f *testing.F) {
	f.Add(procStat)
	f.Add("cpu 1 2 3 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\n")
	f.Fuzz(func(t *testing.T, s string) {
		all, cores, err := parseProcStat(strings.NewReader(s))
		if err == nil && (len(cores) == 0 || all.busy > all.total) {
			t.Fatalf("parseProcStat(%q) = %+v, %+v", s, all, cores)
		}
	})
}

func TestParseProcPidStat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"42 (nginx) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10", 3 * time.Second, true},
		{"42 (a b) c)) R 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 1000 10", 100 * time.Millisecond, true},
		{"42 nginx S 1", 0, false},
		{"42 (x) S 1 2 3", 0, false},
		{"42 (x) S 1 42 42 0 -1 4194560 100 0 0 0 -7 3 0", 0, false},
		{"42 (x) S 1 42 42 0 -1 4194560 100 0 0 0 9223372036854775807 3 0", 0, false},
	}
	for _, tt := range tests {
		got, err := parseProcPidStat([]byte(tt.in))
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("parseProcPidStat(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseMinorFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"42 (nginx) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10", 100, true},
		{"42 (a b) c)) R 1 42 42 0 -1 4194560 7 0 0 0 7 3", 7, true},
		{"42 nginx S 1", 0, false},
		{"42 (x) S 1 2 3", 0, false},
		{"42 (x) S 1 42 42 0 -1 4194560 many 0", 0, false},
		{"42 (x) S 1 42 42 0 -1 4194560 -3 0", 0, false},
	}
	for _, tt := range tests {
		got, err := parseMinorFaults([]byte(tt.in))
		if tt.ok != (err == nil) || (tt.ok && got != tt.want) {
			t.Errorf("parseMinorFaults(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzParseProcPidStat(f *testing.F) {
	f.Add([]byte("42 (nginx) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10"))
	f.Add([]byte("1 ()) ) Z"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := parseProcPidStat(b); err == nil && d < 0 {
			t.Fatalf("negative CPU time %v", d)
		}
		if n, err := parseMinorFaults(b); err == nil && n < 0 {
			t.Fatalf("negative fault count %d", n)
		}
	})
}

const ariaShow = `>>> Printing the contents of file 'blob.torrent'...
*** BitTorrent File Information ***
Mode: single
Announce:
 http://10.213.0.1:6969/announce
Info Hash: 911c8b45570c305076323dccebd2851222b9bba2
Piece Length: 256KiB
`

func TestParseInfoHash(t *testing.T) {
	t.Parallel()
	h, err := parseInfoHash([]byte(ariaShow))
	if err != nil || h[0] != 0x91 || h[19] != 0xa2 {
		t.Errorf("parseInfoHash = %x, %v", h, err)
	}
	for _, bad := range []string{"", "Info Hash: 911c", "Info Hash: 911c8b45570c305076323dccebd2851222b9bba2ff", "Hash: 911c8b45570c305076323dccebd2851222b9bba2"} {
		if _, err := parseInfoHash([]byte(bad)); err == nil {
			t.Errorf("parseInfoHash(%q) succeeded", bad)
		}
	}
}

func FuzzParseInfoHash(f *testing.F) {
	f.Add([]byte(ariaShow))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = parseInfoHash(b) })
}

func TestPercentEncode(t *testing.T) {
	t.Parallel()
	if got := percentEncode([]byte{0x20, '+', 0xff, 'a'}); got != "%20%2B%FF%61" {
		t.Errorf("percentEncode = %q", got)
	}
}

func TestReadDone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name, content string
		exists, ok    bool
	}{
		{"good", "1763771116123456789\n", true, true},
		{"empty", "", false, false},
		{"garbage", "soon\n", false, false},
		{"negative", "-5\n", false, false},
	}
	for _, tt := range tests {
		path := filepath.Join(dir, tt.name)
		if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
			t.Fatal(err)
		}
		at, ok, err := readDone(path)
		if ok != tt.exists || (err == nil) != tt.ok {
			t.Errorf("%s: readDone = %v, %v, %v", tt.name, at, ok, err)
		}
		if tt.ok && at.UnixNano() != 1763771116123456789 {
			t.Errorf("%s: time = %d", tt.name, at.UnixNano())
		}
	}
	if _, ok, err := readDone(filepath.Join(dir, "absent")); ok || err != nil {
		t.Errorf("readDone(absent) = %v, %v", ok, err)
	}
}

// TestMakeSeedAndVerify: the seed is a blob npu-agent accepts (its trailer parses), and VerifyFile accepts it and
// rejects every altered copy.
func TestMakeSeedAndVerify(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const size = 3<<20 + 7
	b, err := MakeSeed(context.Background(), filepath.Join(dir, "sub"), size)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyFile(b.Path, b); err != nil {
		t.Fatalf("VerifyFile(seed) = %v", err)
	}
	if b.Size <= size || b.Model == "" {
		t.Fatalf("seed %+v: want more than %d bytes and a model", b, size)
	}
	f, err := os.Open(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := compat.ParseTrailer(f, b.Size)
	f.Close()
	if err != nil {
		t.Fatalf("seed trailer: %v", err)
	}
	if got := tr.OpenVINO.String(); got != SeedFingerprint.OpenVINO {
		t.Errorf("seed trailer OpenVINO %s, want %s", got, SeedFingerprint.OpenVINO)
	}
	data, err := os.ReadFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(data)
	flipped[size/2] ^= 1
	for name, content := range map[string][]byte{
		"flipped": flipped, "short": data[:len(data)-1], "long": append(bytes.Clone(data), 0), "empty": nil,
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := VerifyFile(path, b); !errors.Is(err, ErrVerify) {
			t.Errorf("VerifyFile(%s) = %v, want ErrVerify", name, err)
		}
	}
	if err := VerifyFile(filepath.Join(dir, "absent"), b); err == nil || errors.Is(err, ErrVerify) {
		t.Errorf("VerifyFile(absent) = %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	good := Config{Hosts: 12, Size: 128 << 20, Rate: "100mbit", Dir: "/tmp/x", Timeout: time.Minute}
	tests := []struct {
		name   string
		change func(*Config)
		ok     bool
	}{
		{"good", func(*Config) {}, true},
		{"one host", func(c *Config) { c.Hosts = 1 }, false},
		{"too many hosts", func(c *Config) { c.Hosts = MaxHosts + 1 }, false},
		{"zero size", func(c *Config) { c.Size = 0 }, false},
		{"huge size", func(c *Config) { c.Size = MaxSize + 1 }, false},
		{"bad rate", func(c *Config) { c.Rate = "100" }, false},
		{"no dir", func(c *Config) { c.Dir = "" }, false},
		{"no timeout", func(c *Config) { c.Timeout = 0 }, false},
		{"timeline 250ms", func(c *Config) { c.Timeline = 250 * time.Millisecond }, true},
		{"timeline too short", func(c *Config) { c.Timeline = MinTimelineInterval - 1 }, false},
	}
	for _, tt := range tests {
		c := good
		tt.change(&c)
		if err := c.Validate(); tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrConfig)) {
			t.Errorf("%s: Validate() = %v", tt.name, err)
		}
	}
}

func TestMedianAndCheckHosts(t *testing.T) {
	t.Parallel()
	hr := func(ds ...time.Duration) []HostResult {
		var out []HostResult
		for i, d := range ds {
			out = append(out, HostResult{Host: i + 1, Elapsed: d})
		}
		return out
	}
	if got := median(hr(1, 2, 9)); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := median(hr(1, 3, 5, 9)); got != 4 {
		t.Errorf("median even = %v", got)
	}
	if got := median(nil); got != 0 {
		t.Errorf("median empty = %v", got)
	}
	if err := checkHosts(hr(1, 2, 3), 4); err != nil {
		t.Errorf("checkHosts(all) = %v", err)
	}
	for name, hosts := range map[string][]HostResult{
		"missing":  hr(1, 2),
		"seed":     {{Host: 0}, {Host: 1}, {Host: 2}},
		"repeated": {{Host: 1}, {Host: 1}, {Host: 2}},
		"too high": {{Host: 1}, {Host: 2}, {Host: 4}},
	} {
		if err := checkHosts(hosts, 4); !errors.Is(err, ErrIncomplete) {
			t.Errorf("checkHosts(%s) = %v, want ErrIncomplete", name, err)
		}
	}
}

func TestWriteTable(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	err := WriteTable(&buf, []Result{
		{System: "nginx", Last: 20 * time.Second, Median: 15 * time.Second, Bound: 10 * time.Second, CPU: CPUUsage{Avg: 0.25, PeakCore: 0.5, ProcsShare: 0.1, Procs: 3 * time.Second}, Links: LinkUse{SeedUp: 0.96, AllUp: 0.33}, SeedCopies: 1.07, Received: 250e6},
		{System: "broken", Err: errors.New("no\nway")},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"last/bound", "nginx", "20.00s", "15.00s", "10.00s", "2.00", "25%", "50%", "10%", "96%", "33%", "1.07", "seed sent/blob", "failed", "broken: no way", "cpu/recv byte", "12.0ns"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestCPUSampler(t *testing.T) {
	t.Parallel()
	s, err := StartCPUSampler(50 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	u := s.Stop()
	if u.Samples < 1 || u.Avg < 0 || u.Avg > 1 || u.PeakCore < 0 || u.PeakCore > 1 {
		t.Errorf("usage = %+v", u)
	}
}

func TestLinkUse(t *testing.T) {
	t.Parallel()
	before := []netlab.LinkStats{{TxBytes: 100}, {TxBytes: 0}, {TxBytes: 0}}
	// 10 s at 8 Mbit/s is 10 MB per link: the seed sent 10 MB, the others 5 MB and none.
	after := []netlab.LinkStats{{TxBytes: 100 + 10e6}, {TxBytes: 5e6}, {TxBytes: 0}}
	got := linkUse(before, after, 10*time.Second, []float64{8e6, 8e6, 8e6})
	if got.SeedUp != 1 || got.AllUp != 0.5 {
		t.Errorf("linkUse = %+v, want seed 1, all 0.5", got)
	}
	if got := linkUse(before, after[:2], time.Second, []float64{8e6, 8e6, 8e6}); got != (LinkUse{}) {
		t.Errorf("linkUse with mismatched counters = %+v", got)
	}
}

func TestParseProcEvents(t *testing.T) {
	t.Parallel()
	io := "rchar: 10\nwchar: 20\nsyscr: 7\nsyscw: 5\nread_bytes: 0\n"
	status := "Name:\tnpu-agent\nvoluntary_ctxt_switches:\t100\nnonvoluntary_ctxt_switches:\t23\n"
	for _, tt := range []struct {
		name       string
		io, status string
		want       procEvents
	}{
		{"both", io, status, procEvents{reads: 7, writes: 5, switches: 123}},
		{"no io (gone, or not readable)", "", status, procEvents{switches: 123}},
		{"garbage", "syscr: x\nsyscw\n", "voluntary_ctxt_switches: -\n", procEvents{}},
	} {
		if got := parseProcEvents([]byte(tt.io), []byte(tt.status)); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
	if got := (procEvents{reads: 4, writes: 2, switches: 8, faults: 6}).perMiB(2 << 20); got != "2 reads, 1 writes, 4 context switches, 3 minor faults" {
		t.Errorf("perMiB: %q", got)
	}
}
