package compile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// MaxModelFileSize bounds each file of a source model. Models are hashed streaming, so this guards against a
// wrong path (a disk image, /dev/zero through a symlink) rather than against memory use.
const MaxModelFileSize = 64 << 30

// File roles in a model manifest.
const (
	RoleXML  = "xml"  // OpenVINO IR topology
	RoleBin  = "bin"  // OpenVINO IR weights
	RoleONNX = "onnx" // single-file ONNX model
)

// modelManifestHeader starts the canonical model manifest (docs/design.md, section 5.1).
const modelManifestHeader = "npu-agent model v1\n"

// ErrInvalidModel is returned for a model path or model value that cannot be used.
var ErrInvalidModel = errors.New("invalid model")

// Model is a source model, identified by its content, never by its path.
// ID is the CID of the canonical manifest of its files (docs/design.md).
type Model struct {
	ID    string      `json:"id"`
	Files []ModelFile `json:"files"` // sorted by Name
}

// ModelFile is one file of a model (IR .xml and .bin, or .onnx).
type ModelFile struct {
	Role   string `json:"role"` // RoleXML, RoleBin or RoleONNX
	Name   string `json:"name"` // base name as the compiler expects it
	Path   string `json:"-"`    // where it is on this host
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lower-case hex
}

// LoadModel hashes the model at path and returns it with its ID. path is an OpenVINO IR .xml, whose weights must
// be the sibling .bin with the same base name, or a single-file .onnx model (ONNX external data is not supported).
func LoadModel(path string) (Model, error) { return LoadModelContext(context.Background(), path) }

// LoadModelContext is LoadModel on behalf of the caller ctx carries (OpenModelFile: only regular files the caller
// could read itself, outside the daemon's own files); hashing stops when ctx ends.
func LoadModelContext(ctx context.Context, path string) (Model, error) {
	type rolePath struct{ role, path string }
	var roles []rolePath
	switch strings.ToLower(filepath.Ext(path)) {
	case ".xml":
		bin := strings.TrimSuffix(path, filepath.Ext(path)) + ".bin"
		roles = []rolePath{{RoleXML, path}, {RoleBin, bin}}
	case ".onnx":
		roles = []rolePath{{RoleONNX, path}}
	default:
		return Model{}, fmt.Errorf("%w: %s: unknown extension %q (want an OpenVINO IR .xml with its .bin, or .onnx)",
			ErrInvalidModel, path, filepath.Ext(path))
	}
	m := Model{}
	for _, r := range roles {
		f, err := hashModelFile(ctx, r.role, r.path)
		if err != nil {
			return Model{}, err
		}
		m.Files = append(m.Files, f)
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Name < m.Files[j].Name })
	id, err := ModelID(m.Files)
	if err != nil {
		return Model{}, err
	}
	m.ID = id
	return m, nil
}

func hashModelFile(ctx context.Context, role, path string) (ModelFile, error) {
	f, st, err := OpenModelFile(ctx, path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && role == RoleBin {
			return ModelFile{}, fmt.Errorf("%w: IR weights %s not found (the .bin must sit next to the .xml with the same base name)",
				ErrInvalidModel, path)
		}
		return ModelFile{}, err
	}
	defer f.Close()
	if st.Size() == 0 {
		return ModelFile{}, fmt.Errorf("%w: %s is empty", ErrInvalidModel, path)
	}
	if st.Size() > MaxModelFileSize {
		return ModelFile{}, fmt.Errorf("%w: %s is %d bytes, above the limit of %d", ErrInvalidModel, path, st.Size(), int64(MaxModelFileSize))
	}
	h := sha256.New()
	// Read one byte past the limit so a file that grows while we hash is caught.
	n, err := io.CopyBuffer(h, ctxReader{ctx, io.LimitReader(f, MaxModelFileSize+1)}, make([]byte, 1<<20))
	if ctx.Err() != nil {
		return ModelFile{}, context.Cause(ctx)
	}
	if err != nil {
		return ModelFile{}, fmt.Errorf("%w: reading %s: %v", ErrInvalidModel, path, err)
	}
	if n != st.Size() {
		return ModelFile{}, fmt.Errorf("%w: %s changed size while being hashed (%d then %d bytes)", ErrInvalidModel, path, st.Size(), n)
	}
	return ModelFile{Role: role, Name: filepath.Base(path), Path: path, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// ctxReader stops reading when ctx ends (a client that left stops the hashing of its model within one buffer).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// ModelID is the CIDv1 (raw, sha2-256) of the canonical manifest: a header line, then one line per file sorted by
// role, "<role> <size> <sha256 hex>\n". Names and paths are left out so a renamed model keeps its ID. Only Role,
// Size and SHA256 of files are read, so a model fetched from peers can be checked without its original paths.
func ModelID(files []ModelFile) (string, error) {
	byRole := append([]ModelFile(nil), files...)
	sort.Slice(byRole, func(i, j int) bool { return byRole[i].Role < byRole[j].Role })
	var b strings.Builder
	b.WriteString(modelManifestHeader)
	for i, f := range byRole {
		if i > 0 && byRole[i-1].Role == f.Role {
			return "", fmt.Errorf("%w: two files with role %q", ErrInvalidModel, f.Role)
		}
		if d, err := hex.DecodeString(f.SHA256); err != nil || len(d) != sha256.Size || f.SHA256 != strings.ToLower(f.SHA256) {
			return "", fmt.Errorf("%w: file %q: sha256 %q is not 64 lower-case hex digits", ErrInvalidModel, f.Name, f.SHA256)
		}
		b.WriteString(f.Role + " " + strconv.FormatInt(f.Size, 10) + " " + f.SHA256 + "\n")
	}
	return rawCID([]byte(b.String())), nil
}

// File returns the model's file with the given role.
func (m Model) File(role string) (ModelFile, bool) {
	for _, f := range m.Files {
		if f.Role == role {
			return f, true
		}
	}
	return ModelFile{}, false
}

// Validate checks that m is a complete IR or ONNX model whose ID matches its files.
func (m Model) Validate() error {
	xml, hasXML := m.File(RoleXML)
	_, hasBin := m.File(RoleBin)
	onnx, hasONNX := m.File(RoleONNX)
	switch {
	case hasXML && hasBin && !hasONNX && len(m.Files) == 2:
		if xml.Path == "" {
			return fmt.Errorf("%w: model %s has no local path", ErrInvalidModel, m.ID)
		}
	case hasONNX && len(m.Files) == 1:
		if onnx.Path == "" {
			return fmt.Errorf("%w: model %s has no local path", ErrInvalidModel, m.ID)
		}
	default:
		return fmt.Errorf("%w: model %s must be an IR (xml and bin) or one onnx file", ErrInvalidModel, m.ID)
	}
	id, err := ModelID(m.Files)
	if err != nil {
		return err
	}
	if id != m.ID {
		return fmt.Errorf("%w: model ID %q does not match its files (%s)", ErrInvalidModel, m.ID, id)
	}
	return nil
}

// rawCID is the CIDv1 string (raw codec, sha2-256) of b.
func rawCID(b []byte) string {
	sum := sha256.Sum256(b)
	m, err := mh.Encode(sum[:], mh.SHA2_256)
	if err != nil {
		panic(err) // only on a wrong digest length, a programming error
	}
	return cid.NewCidV1(cid.Raw, m).String()
}
