package compile

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
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
	simSeedDomain         = "npu-agent sim v2"
)

// SimOptions configure the simulator.
type SimOptions struct {
	CompileTime time.Duration // how long a compile pretends to take
	PayloadSize int64         // bytes of ELF payload before the trailer; 0 means DefaultSimPayloadSize
}

// Sim is a deterministic compiler simulator for demos and tests: the same model, profile and fingerprint always
// give the same blob, and blobs for different fingerprints differ. It is never chosen unless configured.
type Sim struct {
	fp      compat.Fingerprint // normalised
	canon   []byte             // fp.Canonical(), part of every seed
	trailer compat.Trailer
	rr      string // the RUNTIME_REQUIREMENTS a compile reports
	opts    SimOptions
}

var _ Backend = (*Sim)(nil)

// NewSim returns a simulator that compiles for fp. fp must be valid (compat.Fingerprint.Validate) and name its
// OpenVINO version, which goes into the blob's trailer. It is refused if compat.CheckBlob would reject the
// simulator's own blobs on fp, i.e. if fp's runtime requirements contradict its other fields.
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
	canon, err := fp.Canonical()
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	fp = fp.Normalize()
	if fp.OpenVINO == "" {
		return nil, errors.New("sim: the fingerprint has no openvino version for the blob's trailer")
	}
	tr, rr, err := simTrailer(fp)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	if d := compat.CheckBlob(compat.DefaultRules(), &tr, fp, compat.KindModel); !d.Compatible {
		return nil, fmt.Errorf("sim: the fingerprint contradicts itself, its own blobs would be rejected: %s",
			strings.Join(d.Reasons, "; "))
	}
	return &Sim{fp: fp, canon: canon, trailer: tr, rr: rr, opts: opts}, nil
}

// simTrailer returns the trailer the simulator writes for the normalised fp and the RUNTIME_REQUIREMENTS it
// reports: fp's own when set, else one built from fp's fields in OpenVINO's format. The trailer carries the
// descriptor (the inside of desc=[...]) at the metadata version of the string's meta key, 2.7 by default.
func simTrailer(fp compat.Fingerprint) (compat.Trailer, string, error) {
	tr := compat.Trailer{Metadata: compat.MetadataVersion{Major: 2, Minor: 7}, BlobType: compat.BlobTypeELF}
	ov, err := versionParts(fp.OpenVINO, 3)
	if err != nil {
		return compat.Trailer{}, "", err
	}
	tr.OpenVINO = compat.OVVersion{Major: ov[0], Minor: ov[1], Patch: ov[2]}
	if fp.CompilerVersion != "" {
		cv, err := versionParts(fp.CompilerVersion, 2)
		if err != nil {
			return compat.Trailer{}, "", err
		}
		tr.CompilerVersion = uint32(cv[0])<<16 | uint32(cv[1])
	}
	var rr compat.RuntimeRequirements
	if fp.RuntimeRequirements != "" {
		if rr, err = compat.ParseRuntimeRequirements(fp.RuntimeRequirements); err != nil {
			return compat.Trailer{}, "", err
		}
		if meta, ok := rr.Top["meta"]; ok {
			m, err := versionParts(meta, 2)
			if err != nil || m[0] != 2 || m[1] < 6 || m[1] > 7 {
				return compat.Trailer{}, "", fmt.Errorf("runtime requirements meta=%s: the simulator writes metadata 2.6 or 2.7", meta)
			}
			tr.Metadata.Minor = m[1]
		}
	} else {
		rr = compat.RuntimeRequirements{
			Top:  map[string]string{"meta": tr.Metadata.String(), "ov": fp.OpenVINO},
			Desc: map[string]string{},
		}
		for k, v := range map[string]string{"compiler": fp.CompilerVersion, "npu": fp.Arch, "mi": fp.FirmwareMI} {
			if v != "" {
				rr.Desc[k] = v
			}
		}
		if fp.MaxTiles != 0 {
			rr.Desc["t"] = strconv.Itoa(fp.MaxTiles)
		}
	}
	if rr.Desc != nil {
		desc := compat.RuntimeRequirements{Desc: rr.Desc}.String()
		tr.RuntimeRequirements = strings.TrimSuffix(strings.TrimPrefix(desc, "desc=["), "]")
	}
	return tr, rr.String(), nil
}

// versionParts splits a dotted version of exactly n uint16 components. compat validates a fingerprint's
// versions but keeps its parser private, and the trailer needs the numbers.
func versionParts(s string, n int) ([]uint16, error) {
	parts := strings.Split(s, ".")
	if len(parts) != n {
		return nil, fmt.Errorf("version %q has %d components, want %d", s, len(parts), n)
	}
	v := make([]uint16, n)
	for i, p := range parts {
		x, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("version %q: component %d is not a number up to 65535", s, i+1)
		}
		v[i] = uint16(x)
	}
	return v, nil
}

// Name is "sim".
func (s *Sim) Name() string { return "sim" }

// Probe returns the configured fingerprint.
func (s *Sim) Probe(context.Context) (compat.Fingerprint, error) { return s.fp, nil }

// Compile waits CompileTime (or until ctx ends), then streams "\x7fELF" plus a keystream seeded by
// sha256(model ID, profile ID, canonical fingerprint) to a staging file, appends the OVNPU trailer and renames
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
		RuntimeRequirements: s.rr,
	}, nil
}

func (s *Sim) seed(modelID, profileID string) [32]byte {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(simSeedDomain), []byte(modelID), []byte(profileID), s.canon} {
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
	if err := compat.AppendTrailer(w, uint64(s.opts.PayloadSize), s.trailer); err != nil {
		return err
	}
	return w.Flush() // staging.commit syncs
}
