package compile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/compat"
)

var testFP = compat.Fingerprint{
	OpenVINO: "2025.3.0", Arch: "4000", DriverVersion: "1758000000", CompilerType: "DRIVER",
	CompilerVersion: "7.21", MaxTiles: 6, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64",
}

// testRequest returns a request for a fresh IR model in dir, writing to dir/out.blob.
func testRequest(t *testing.T, dir string) Request {
	t.Helper()
	m, err := LoadModel(writeIR(t, filepath.Join(dir, "model"), "m", "<net/>", "weights"))
	if err != nil {
		t.Fatal(err)
	}
	return Request{
		Model:   m,
		Profile: Profile{Device: "NPU", Shapes: map[string][]int64{"input": {1, 3, 224, 224}}},
		OutPath: filepath.Join(dir, "out.blob"),
	}
}

func fileSHA(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// assertOnlyOutput checks that dir holds the model directory and, if want, out.blob: no staging leftovers.
func assertOnlyOutput(t *testing.T, dir string, want bool) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.Name() != "model" && e.Name() != "out.blob" {
			names = append(names, e.Name())
		}
	}
	if len(names) > 0 {
		t.Errorf("left behind: %v", names)
	}
	if _, err := os.Stat(filepath.Join(dir, "out.blob")); want != (err == nil) {
		t.Errorf("out.blob exists = %v, want %v", err == nil, want)
	}
}

// blobTrailer parses the trailer of the blob at path with compat's parser.
func blobTrailer(t *testing.T, path string) *compat.Trailer {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := compat.ParseTrailer(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// assertAccepted checks that the rules accept the blob's trailer on host.
func assertAccepted(t *testing.T, tr *compat.Trailer, host compat.Fingerprint) {
	t.Helper()
	if d := compat.CheckBlob(compat.DefaultRules(), tr, host, compat.KindModel); !d.Compatible {
		t.Errorf("CheckBlob rejects the blob on the fingerprint it was compiled for: %v", d.Reasons)
	}
}

func TestSimBlob(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := NewSim(testFP, SimOptions{PayloadSize: 3<<20 + 5})
	if err != nil {
		t.Fatal(err)
	}
	req := testRequest(t, dir)
	res, err := s.Compile(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	assertOnlyOutput(t, dir, true)
	tr := blobTrailer(t, req.OutPath)
	want := &compat.Trailer{
		Metadata:            compat.MetadataVersion{Major: 2, Minor: 7},
		OpenVINO:            compat.OVVersion{Major: 2025, Minor: 3},
		CompilerVersion:     7<<16 | 21,
		RuntimeRequirements: "compiler=7.21;mi=11.4;npu=4000;t=6",
		BlobType:            compat.BlobTypeELF,
		PayloadSize:         3<<20 + 5,
		MetadataSize:        4 + 6 + 8 + 8 + 16 + 4 + 1 + 8 + 34 + 1,
	}
	if !reflect.DeepEqual(tr, want) {
		t.Errorf("trailer\n got %+v\nwant %+v", tr, want)
	}
	if wantRR := "meta=2.7;ov=2025.3.0;desc=[compiler=7.21;mi=11.4;npu=4000;t=6]"; res.RuntimeRequirements != wantRR {
		t.Errorf("runtime requirements = %q, want %q", res.RuntimeRequirements, wantRR)
	}
	assertAccepted(t, tr, testFP)
	// The trailer carries what the rules need to turn the blob away from another stack.
	for name, mutate := range map[string]func(*compat.Fingerprint){
		"arch":        func(f *compat.Fingerprint) { f.Arch = "3720" },
		"firmware MI": func(f *compat.Fingerprint) { f.FirmwareMI = "12.0" },
		"compiler":    func(f *compat.Fingerprint) { f.CompilerVersion = "7.22" },
		"openvino":    func(f *compat.Fingerprint) { f.OpenVINO = "2025.2.0" },
	} {
		host := testFP
		mutate(&host)
		if d := compat.CheckBlob(compat.DefaultRules(), tr, host, compat.KindModel); d.Compatible {
			t.Errorf("%s: CheckBlob accepts the blob on %+v", name, host)
		}
	}
	st, _ := os.Stat(req.OutPath)
	if res.Size != st.Size() || res.Path != req.OutPath || res.Duration <= 0 || !strings.Contains(res.Log, req.Model.ID) {
		t.Errorf("result = %+v, file size %d", res, st.Size())
	}
	f, _ := os.Open(req.OutPath)
	head := make([]byte, 4)
	io.ReadFull(f, head)
	f.Close()
	if string(head) != "\x7fELF" {
		t.Errorf("payload starts with %q", head)
	}
}

func TestSimDeterministic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	req := testRequest(t, dir)
	blob := func(fp compat.Fingerprint, mutate func(*Request)) [32]byte {
		t.Helper()
		s, err := NewSim(fp, SimOptions{PayloadSize: 100_000})
		if err != nil {
			t.Fatal(err)
		}
		r := req
		r.OutPath = filepath.Join(t.TempDir(), "b")
		if mutate != nil {
			mutate(&r)
		}
		if _, err := s.Compile(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		return fileSHA(t, r.OutPath)
	}
	base := blob(testFP, nil)
	if again := blob(testFP, nil); again != base {
		t.Error("same inputs gave a different blob")
	}
	// The same profile written another way is the same compile.
	if b := blob(testFP, func(r *Request) {
		r.Profile = Profile{Device: " npu", Shapes: map[string][]int64{"input ": {1, 3, 224, 224}}}
	}); b != base {
		t.Error("equivalent profile gave a different blob")
	}
	// The seed is the canonical fingerprint: another spelling of the same stack is the same compile.
	spelled := testFP
	spelled.CompilerType, spelled.OpenVINO = "driver", "2025.03.0"
	if blob(spelled, nil) != base {
		t.Error("another spelling of the fingerprint gave a different blob")
	}
	other := testFP
	other.DriverVersion = "1758000001"
	if blob(other, nil) == base {
		t.Error("another fingerprint gave the same blob")
	}
	if blob(testFP, func(r *Request) { r.Profile.Shapes = map[string][]int64{"input": {1, 3, 256, 256}} }) == base {
		t.Error("another profile gave the same blob")
	}
}

func TestSimCancel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		timeout time.Duration
		cancel  bool
		want    error
	}{
		{"timeout", 20 * time.Millisecond, false, ErrTimeout},
		{"cancel", 0, true, context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s, err := NewSim(testFP, SimOptions{CompileTime: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			req := testRequest(t, dir)
			req.Timeout = tc.timeout
			ctx, cancel := context.WithCancel(context.Background())
			if tc.cancel {
				cancel()
			}
			defer cancel()
			_, err = s.Compile(ctx, req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == ErrTimeout && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("timeout error %v does not match context.DeadlineExceeded", err)
			}
			assertOnlyOutput(t, dir, false)
		})
	}
}

func TestSimInvalid(t *testing.T) {
	t.Parallel()
	fps := []struct {
		name   string
		mutate func(*compat.Fingerprint)
	}{
		{"openvino not a version", func(f *compat.Fingerprint) { f.OpenVINO = "latest" }},
		{"no openvino", func(f *compat.Fingerprint) { f.OpenVINO = "" }},
		{"compiler version 7", func(f *compat.Fingerprint) { f.CompilerVersion = "7" }},
		{"bad runtime requirements", func(f *compat.Fingerprint) { f.RuntimeRequirements = "meta=2.7;desc=[" }},
		{"metadata 2.5", func(f *compat.Fingerprint) { f.RuntimeRequirements = "meta=2.5;ov=2025.3.0" }},
		{"metadata 2.8", func(f *compat.Fingerprint) { f.RuntimeRequirements = "meta=2.8;ov=2025.3.0" }},
		{"descriptor for another arch", func(f *compat.Fingerprint) {
			f.RuntimeRequirements = "meta=2.7;ov=2025.3.0;desc=[npu=3720]"
		}},
		{"descriptor for another MI", func(f *compat.Fingerprint) {
			f.RuntimeRequirements = "meta=2.7;ov=2025.3.0;desc=[mi=12.1]"
		}},
	}
	for _, tc := range fps {
		fp := testFP
		tc.mutate(&fp)
		if _, err := NewSim(fp, SimOptions{}); err == nil {
			t.Errorf("%s: accepted %+v", tc.name, fp)
		}
	}
	for _, o := range []SimOptions{{PayloadSize: 3}, {PayloadSize: MaxSimPayloadSize + 1}, {CompileTime: -1}} {
		if _, err := NewSim(testFP, o); err == nil {
			t.Errorf("accepted options %+v", o)
		}
	}
	s, err := NewSim(testFP, SimOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	req := testRequest(t, dir)
	req.Profile.Shapes = map[string][]int64{"x": {-1}}
	if _, err := s.Compile(context.Background(), req); !errors.Is(err, ErrInvalidProfile) {
		t.Errorf("dynamic shape: err = %v", err)
	}
	req = testRequest(t, dir)
	req.Model.ID = "bafkreibltijfpwxgcfd6zh5j5iqme3ry77smmnnnw3qxp5y5cgkimvjllm"
	if _, err := s.Compile(context.Background(), req); !errors.Is(err, ErrInvalidModel) {
		t.Errorf("wrong model ID: err = %v", err)
	}
	req = testRequest(t, dir)
	req.OutPath = filepath.Join(dir, "no", "such", "dir", "b")
	if _, err := s.Compile(context.Background(), req); err == nil {
		t.Error("compiled into a missing directory")
	}
}

// Every fingerprint the simulator takes gives blobs the rules accept on that fingerprint.
func TestSimTrailerMatchesFingerprint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		mutate   func(*compat.Fingerprint)
		metadata compat.MetadataVersion
		desc     string // the trailer's descriptor
		rr       string // Result.RuntimeRequirements
	}{
		{"fields only", nil, compat.MetadataVersion{Major: 2, Minor: 7}, "compiler=7.21;mi=11.4;npu=4000;t=6",
			"meta=2.7;ov=2025.3.0;desc=[compiler=7.21;mi=11.4;npu=4000;t=6]"},
		{"unknowns left out", func(f *compat.Fingerprint) { f.CompilerVersion, f.MaxTiles, f.FirmwareMI = "", 0, "" },
			compat.MetadataVersion{Major: 2, Minor: 7}, "npu=4000", "meta=2.7;ov=2025.3.0;desc=[npu=4000]"},
		{"own runtime requirements, metadata 2.6", func(f *compat.Fingerprint) {
			f.OpenVINO, f.CompilerVersion, f.FirmwareMI = "2026.2.0", "8.1", "11.4.10"
			f.RuntimeRequirements = "meta=2.6;ov=2026.2.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10]"
		}, compat.MetadataVersion{Major: 2, Minor: 6}, "compiler=8.1;elf=1.2.2;mi=11.4.10;npu=4000;t=4",
			"meta=2.6;ov=2026.2.0;desc=[compiler=8.1;elf=1.2.2;mi=11.4.10;npu=4000;t=4]"},
		{"own runtime requirements without desc", func(f *compat.Fingerprint) {
			f.RuntimeRequirements = "meta=2.7;ov=2025.3.0"
		}, compat.MetadataVersion{Major: 2, Minor: 7}, "", "meta=2.7;ov=2025.3.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fp := testFP
			if tc.mutate != nil {
				tc.mutate(&fp)
			}
			s, err := NewSim(fp, SimOptions{PayloadSize: 10})
			if err != nil {
				t.Fatal(err)
			}
			req := testRequest(t, t.TempDir())
			res, err := s.Compile(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			tr := blobTrailer(t, req.OutPath)
			if tr.Metadata != tc.metadata || tr.RuntimeRequirements != tc.desc || tr.PayloadSize != 10 ||
				tr.OpenVINO.String() != fp.OpenVINO || tr.CompilerVersionString() != fp.CompilerVersion {
				t.Errorf("trailer = %+v", tr)
			}
			if res.RuntimeRequirements != tc.rr {
				t.Errorf("runtime requirements = %q, want %q", res.RuntimeRequirements, tc.rr)
			}
			assertAccepted(t, tr, fp)
			if p, _ := s.Probe(context.Background()); p != fp.Normalize() {
				t.Errorf("probe = %+v", p)
			}
			b, _ := os.ReadFile(req.OutPath)
			if !bytes.HasPrefix(b, []byte("\x7fELF")) {
				t.Errorf("blob %x", b[:10])
			}
		})
	}
}

func TestVersionParts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		n    int
		want []uint16
	}{
		{"2025.3.0", 3, []uint16{2025, 3, 0}},
		{"7.21", 2, []uint16{7, 21}},
		{"65535.0", 2, []uint16{65535, 0}},
		{"2025.3", 3, nil},
		{"2025.3.0.1", 3, nil},
		{"7.x", 2, nil},
		{"65536.0", 2, nil},
		{"7.", 2, nil},
		{"", 2, nil},
	}
	for _, tc := range tests {
		got, err := versionParts(tc.in, tc.n)
		if (err == nil) != (tc.want != nil) || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("versionParts(%q, %d) = %v, %v; want %v", tc.in, tc.n, got, err, tc.want)
		}
	}
}

func BenchmarkSimWrite(b *testing.B) {
	s, err := NewSim(testFP, SimOptions{PayloadSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.SetBytes(64 << 20)
	for i := 0; b.Loop(); i++ {
		p := filepath.Join(dir, "b")
		if err := s.write(context.Background(), p, [32]byte{byte(i)}); err != nil {
			b.Fatal(err)
		}
		os.Remove(p)
	}
}
