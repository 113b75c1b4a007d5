package compile

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/npu-agent/npu-agent/compat"
)

// Simulator limits and defaults.
const (
	DefaultSimPayloadSize = 1 << 20
	MaxSimPayloadSize     = 64 << 30
	elfMagic              = "\x7fELF"
	simSeedDomain         = "npu-agent sim v1"
)

// SimOptions configure the simulator.
type SimOptions struct {
	CompileTime time.Duration // how long a compile pretends to take
	PayloadSize int64         // bytes of ELF payload before the trailer; 0 means DefaultSimPayloadSize
}

// Sim is a deterministic compiler simulator for demos and tests: the same model, profile and fingerprint always
// give the same blob, and blobs for different fingerprints differ. It is never chosen unless configured.
type Sim struct {
	fp   compat.Fingerprint
	fpJS []byte
	meta ovnpuMeta
	opts SimOptions
}

var _ Backend = (*Sim)(nil)

// NewSim returns a simulator that compiles for fp. fp.OpenVINO must be major.minor.patch and fp.CompilerVersion
// empty or major.minor, as they go into the blob's trailer.
func NewSim(fp compat.Fingerprint, opts SimOptions) (*Sim, error) {
	if opts.PayloadSize == 0 {
		opts.PayloadSize = DefaultSimPayloadSize
	}
	if opts.PayloadSize < int64(len(elfMagic)) || opts.PayloadSize > MaxSimPayloadSize {
		return nil, fmt.Errorf("sim: payload size %d is outside [%d, %d]", opts.PayloadSize, len(elfMagic), int64(MaxSimPayloadSize))
	}
	if opts.CompileTime < 0 {
		return nil, fmt.Errorf("sim: negative compile time %s", opts.CompileTime)
	}
	var m ovnpuMeta
	var err error
	if m.OVMajor, m.OVMinor, m.OVPatch, err = parseOVVersion(fp.OpenVINO); err != nil {
		return nil, fmt.Errorf("sim: fingerprint: %w", err)
	}
	if m.CompilerVersion, err = parseCompilerVersion(fp.CompilerVersion); err != nil {
		return nil, fmt.Errorf("sim: fingerprint: %w", err)
	}
	m.RuntimeRequirements = fp.RuntimeRequirements
	if m.RuntimeRequirements == "" {
		m.RuntimeRequirements = simRuntimeRequirements(fp)
	}
	// encoding/json writes struct fields in declaration order, so this is stable for a given compat version.
	js, err := json.Marshal(fp)
	if err != nil {
		return nil, fmt.Errorf("sim: encoding fingerprint: %w", err)
	}
	return &Sim{fp: fp, fpJS: js, meta: m, opts: opts}, nil
}

// simRuntimeRequirements writes a RUNTIME_REQUIREMENTS string in OpenVINO's format from what fp knows.
func simRuntimeRequirements(fp compat.Fingerprint) string {
	desc := []string{}
	add := func(k, v string) {
		if v != "" && v != "0" {
			desc = append(desc, k+"="+v)
		}
	}
	add("compiler", fp.CompilerVersion)
	add("npu", fp.Arch)
	add("t", strconv.Itoa(fp.MaxTiles))
	add("mi", fp.FirmwareMI)
	core, _, _ := strings.Cut(fp.OpenVINO, "-")
	return "meta=2.7;ov=" + core + ";desc=[" + strings.Join(desc, ";") + "]"
}

// Name is "sim".
func (s *Sim) Name() string { return "sim" }

// Probe returns the configured fingerprint.
func (s *Sim) Probe(context.Context) (compat.Fingerprint, error) { return s.fp, nil }

// Compile waits CompileTime (or until ctx ends), then streams "\x7fELF" plus a keystream seeded by
// sha256(model ID, profile ID, fingerprint JSON) to a staging file, appends an OVNPU 2.7 trailer and renames
// the blob to req.OutPath.
func (s *Sim) Compile(ctx context.Context, req Request) (*Result, error) {
	start := time.Now()
	prof, ctx, cancel, err := prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	defer cancel()
	profileID, err := prof.ID()
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(s.opts.CompileTime)
	select {
	case <-ctx.Done():
		t.Stop()
		return nil, &CompileError{Backend: "sim", Err: ctxErr(ctx, req.Timeout)}
	case <-t.C:
	}
	st, err := newStaging(req.OutPath)
	if err != nil {
		return nil, err
	}
	defer st.cleanup()
	if err := s.write(ctx, st.path, s.seed(req.Model.ID, profileID)); err != nil {
		if ctx.Err() != nil {
			err = ctxErr(ctx, req.Timeout)
		}
		return nil, &CompileError{Backend: "sim", Err: err}
	}
	size, err := st.commit()
	if err != nil {
		return nil, err
	}
	d := time.Since(start)
	return &Result{
		Path:                req.OutPath,
		Size:                size,
		Duration:            d,
		Log:                 fmt.Sprintf("sim: compiled model %s profile %s in %s (%d bytes)\n", req.Model.ID, profileID, d.Round(time.Millisecond), size),
		RuntimeRequirements: s.meta.RuntimeRequirements,
	}, nil
}

func (s *Sim) seed(modelID, profileID string) [32]byte {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(simSeedDomain), []byte(modelID), []byte(profileID), s.fpJS} {
		h.Write(part)
		h.Write([]byte{0})
	}
	var seed [32]byte
	h.Sum(seed[:0])
	return seed
}

// write streams the blob to path in 1 MiB pieces, checking ctx between them.
func (s *Sim) write(ctx context.Context, path string, seed [32]byte) (err error) {
	block, err := aes.NewCipher(seed[:])
	if err != nil {
		return err
	}
	stream := cipher.NewCTR(block, make([]byte, aes.BlockSize))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := w.WriteString(elfMagic); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for left := s.opts.PayloadSize - int64(len(elfMagic)); left > 0; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(left, int64(len(buf))))
		clear(buf[:n])
		stream.XORKeyStream(buf[:n], buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		left -= int64(n)
	}
	if _, err := w.Write(appendOVNPUTrailer(nil, uint64(s.opts.PayloadSize), s.meta)); err != nil {
		return err
	}
	return w.Flush() // staging.commit syncs
}
