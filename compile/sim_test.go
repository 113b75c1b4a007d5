package compile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
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
	tr, err := readTestTrailer(req.OutPath)
	if err != nil {
		t.Fatal(err)
	}
	if tr.PayloadSize != 3<<20+5 || tr.OV != [3]uint16{2025, 3, 0} || tr.CompilerVersion != 7<<16|21 || tr.BlobType != 0 {
		t.Errorf("trailer = %+v", tr)
	}
	if wantRR := "meta=2.7;ov=2025.3.0;desc=[compiler=7.21;npu=4000;t=6;mi=11.4]"; tr.RuntimeRequirements != wantRR || res.RuntimeRequirements != wantRR {
		t.Errorf("runtime requirements = %q / %q, want %q", tr.RuntimeRequirements, res.RuntimeRequirements, wantRR)
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
	bad := testFP
	bad.OpenVINO = "latest"
	if _, err := NewSim(bad, SimOptions{}); err == nil {
		t.Error("accepted a fingerprint without an OpenVINO version")
	}
	bad = testFP
	bad.CompilerVersion = "7"
	if _, err := NewSim(bad, SimOptions{}); err == nil {
		t.Error("accepted compiler version 7")
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

func TestSimRuntimeRequirementsFromFingerprint(t *testing.T) {
	t.Parallel()
	fp := testFP
	fp.RuntimeRequirements = "meta=2.6;ov=2026.2.0;desc=[compiler=8.1;npu=4000;t=4;elf=1.2.2;mi=11.4.10]"
	s, err := NewSim(fp, SimOptions{PayloadSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	req := testRequest(t, t.TempDir())
	if _, err := s.Compile(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	tr, err := readTestTrailer(req.OutPath)
	if err != nil {
		t.Fatal(err)
	}
	if tr.RuntimeRequirements != fp.RuntimeRequirements {
		t.Errorf("runtime requirements = %q", tr.RuntimeRequirements)
	}
	b, _ := os.ReadFile(req.OutPath)
	if !bytes.HasPrefix(b, []byte("\x7fELF")) || tr.PayloadSize != 10 {
		t.Errorf("blob %x", b[:10])
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
