package compile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeIR writes an IR pair into dir under base and returns the .xml path.
func writeIR(t *testing.T, dir, base, xml, bin string) string {
	t.Helper()
	writeFile(t, filepath.Join(dir, base+".bin"), bin)
	return writeFile(t, filepath.Join(dir, base+".xml"), xml)
}

func TestLoadModelIdentity(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := writeIR(t, filepath.Join(dir, "a"), "resnet", "<net/>", "weights")
	b := writeIR(t, filepath.Join(dir, "b"), "renamed", "<net/>", "weights")
	c := writeIR(t, filepath.Join(dir, "c"), "resnet", "<net/>", "weightz")
	swapped := writeIR(t, filepath.Join(dir, "d"), "resnet", "weights", "<net/>")
	onnx := writeFile(t, filepath.Join(dir, "e", "m.onnx"), "<net/>")
	onnx2 := writeFile(t, filepath.Join(dir, "f", "other.ONNX"), "<net/>")

	load := func(p string) Model {
		t.Helper()
		m, err := LoadModel(p)
		if err != nil {
			t.Fatalf("LoadModel(%s): %v", p, err)
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Validate(%s): %v", p, err)
		}
		return m
	}
	ma, mb, mc, md, me, mf := load(a), load(b), load(c), load(swapped), load(onnx), load(onnx2)
	if ma.ID != mb.ID {
		t.Errorf("same content under another name: %s != %s", ma.ID, mb.ID)
	}
	if me.ID != mf.ID {
		t.Errorf("same onnx under another name: %s != %s", me.ID, mf.ID)
	}
	for name, other := range map[string]Model{"changed bin": mc, "swapped roles": md, "onnx": me} {
		if other.ID == ma.ID {
			t.Errorf("%s: same ID %s", name, ma.ID)
		}
	}
	if !strings.HasPrefix(ma.ID, "bafkrei") {
		t.Errorf("ID %s is not a CIDv1 raw sha2-256", ma.ID)
	}
	if len(ma.Files) != 2 || ma.Files[0].Name != "resnet.bin" || ma.Files[1].Name != "resnet.xml" {
		t.Fatalf("files = %+v", ma.Files)
	}
	// printf weights | sha256sum
	if got := ma.Files[0].SHA256; got != "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c" {
		t.Errorf("sha256 = %s", got)
	}
	if ma.Files[0].Size != int64(len("weights")) || ma.Files[0].Role != RoleBin {
		t.Errorf("bin file = %+v", ma.Files[0])
	}
}

// The manifest format is normative (docs/design.md): pin one ID so an accidental change is caught.
func TestModelIDGolden(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, err := LoadModel(writeFile(t, filepath.Join(dir, "m.onnx"), "hello\n"))
	if err != nil {
		t.Fatal(err)
	}
	// Computed outside Go from: printf 'npu-agent model v1\nonnx 6 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\n' | sha256sum
	want := rawCID([]byte("npu-agent model v1\nonnx 6 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\n"))
	if m.ID != want {
		t.Fatalf("ID = %s, want %s", m.ID, want)
	}
	if m.ID != "bafkreibltijfpwxgcfd6zh5j5iqme3ry77smmnnnw3qxp5y5cgkimvjllm" {
		t.Fatalf("ID = %s changed: the model manifest encoding is normative", m.ID)
	}
}

// ModelID computes the same ID from (role, size, sha256) alone as LoadModel does from the files, whatever the
// names and order, and rejects what LoadModel could never produce.
func TestModelIDFromFiles(t *testing.T) {
	t.Parallel()
	m, err := LoadModel(writeIR(t, t.TempDir(), "m", "<net/>", "weights"))
	if err != nil {
		t.Fatal(err)
	}
	fetched := []ModelFile{ // as a peer knows them: no names, no paths, another order
		{Role: RoleXML, Size: m.Files[1].Size, SHA256: m.Files[1].SHA256},
		{Role: RoleBin, Size: m.Files[0].Size, SHA256: m.Files[0].SHA256},
	}
	id, err := ModelID(fetched)
	if err != nil || id != m.ID {
		t.Fatalf("ModelID = %s, %v; want %s", id, err, m.ID)
	}
	fetched[1].Size++
	if id, err := ModelID(fetched); err != nil || id == m.ID {
		t.Fatalf("ModelID with another size = %s, %v; want a different ID", id, err)
	}
	bad := []struct {
		name  string
		files []ModelFile
	}{
		{"duplicate role", []ModelFile{fetched[0], fetched[0]}},
		{"upper-case sha256", []ModelFile{{Role: RoleONNX, Size: 1, SHA256: strings.ToUpper(m.Files[0].SHA256)}}},
		{"short sha256", []ModelFile{{Role: RoleONNX, Size: 1, SHA256: "abcd"}}},
	}
	for _, tc := range bad {
		if _, err := ModelID(tc.files); !errors.Is(err, ErrInvalidModel) {
			t.Errorf("%s: err = %v, want ErrInvalidModel", tc.name, err)
		}
	}
}

func TestLoadModelErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	noBin := writeFile(t, filepath.Join(dir, "nobin", "m.xml"), "<net/>")
	emptyXML := writeIR(t, filepath.Join(dir, "empty"), "m", "", "w")
	dirXML := filepath.Join(dir, "dir", "m.xml")
	if err := os.MkdirAll(dirXML, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "dir", "m.bin"), "w")
	txt := writeFile(t, filepath.Join(dir, "m.txt"), "x")
	tests := []struct {
		name, path, want string
	}{
		{"missing bin", noBin, "IR weights"},
		{"missing xml", filepath.Join(dir, "nope.xml"), "no such file"},
		{"empty", emptyXML, "is empty"},
		{"directory", dirXML, "not a regular file"},
		{"unknown extension", txt, "unknown extension"},
		{"no extension", filepath.Join(dir, "model"), "unknown extension"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := LoadModel(tc.path)
			if !errors.Is(err, ErrInvalidModel) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidModel containing %q", err, tc.want)
			}
		})
	}
}

func TestModelValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, err := LoadModel(writeIR(t, dir, "m", "<net/>", "w"))
	if err != nil {
		t.Fatal(err)
	}
	bad := m
	bad.ID = "bafkreihqrw2kpbbsneypvq5rrxcthcvjdm2wnl4j4lkdqlvlumyimvqdky"
	if err := bad.Validate(); !errors.Is(err, ErrInvalidModel) {
		t.Errorf("wrong ID: err = %v", err)
	}
	half := Model{ID: m.ID, Files: m.Files[:1]}
	if err := half.Validate(); !errors.Is(err, ErrInvalidModel) {
		t.Errorf("bin only: err = %v", err)
	}
	if err := (Model{}).Validate(); !errors.Is(err, ErrInvalidModel) {
		t.Errorf("zero model: err = %v", err)
	}
}

func BenchmarkLoadModel(b *testing.B) {
	dir := b.TempDir()
	const size = 64 << 20
	if err := os.WriteFile(filepath.Join(dir, "m.bin"), make([]byte, size), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "m.xml"), []byte("<net/>"), 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	for b.Loop() {
		if _, err := LoadModel(filepath.Join(dir, "m.xml")); err != nil {
			b.Fatal(err)
		}
	}
}
