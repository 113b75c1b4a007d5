package ovcache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/npu-agent/npu-agent/compat"
)

// KeyVersion changes whenever the meaning of a key changes; it is part of every key.
const KeyVersion = 1

// RecordKind is the Kind of a record that announces a cache entry: ModelID is the entry's name, ProfileID its key.
const RecordKind = "ovcache"

// RejectedKind is the Kind of a record by which a host says its application removed (could not load) the entry
// it was given: a negative result, fleet knowledge; no host populates from it.
const RejectedKind = "ovcache-rejected"

// ErrIncompatible: an entry that cannot serve this host (wrong build string, header and trailer disagree, the
// trailer fails the rules, a weightless blob).
var ErrIncompatible = errors.New("OpenVINO cache entry does not serve this host")

var buildPrefix = regexp.MustCompile(`^([0-9]+)\.([0-9]+)\.([0-9]+)(?:[^0-9.]|$)`)

// Key is the compatibility key of cache entries that OpenVINO build `build` writes on a host with fingerprint
// host: the hex sha256 of the newline-joined `ovcache-key=<KeyVersion>`, `build=<build>`, `os=<os>`,
// `cpu_arch=<cpu arch>` and `class=<compat.Class(rules, host, model)>`. The entry's name is a std::hash of
// OpenVINO's inputs, so it is the same only for the same build, OS and toolchain (os, cpu_arch); the class groups
// the hosts whose NPU stacks the rules let share a blob. Hosts with equal keys and equal names may share an entry;
// the range rules are still applied to each entry (CheckEntry).
func Key(rules *compat.Rules, host compat.Fingerprint, build string) (string, error) {
	if !ValidBuild(build) {
		return "", fmt.Errorf("ovcache key: invalid OpenVINO build string %q", build)
	}
	class, err := compat.Class(rules, host, compat.KindModel)
	if err != nil {
		return "", fmt.Errorf("ovcache key: %w", err)
	}
	host = host.Normalize()
	if host.OS == "" || host.CPUArch == "" {
		return "", errors.New("ovcache key: the host's OS and CPU arch must be known")
	}
	parts := []string{
		fmt.Sprintf("ovcache-key=%d", KeyVersion),
		"build=" + build,
		"os=" + host.OS,
		"cpu_arch=" + host.CPUArch,
		"class=" + class,
	}
	sum := sha256.Sum256([]byte(strings.Join(parts, "\n")))
	return hex.EncodeToString(sum[:]), nil
}

// ValidBuild reports whether build can be an OpenVINO build string in a key: not empty, at most MaxAttr bytes, no
// newline or NUL.
func ValidBuild(build string) bool {
	return build != "" && len(build) <= MaxAttr && !strings.ContainsAny(build, "\n\x00")
}

// CheckEntry decides whether entry e can serve a host with fingerprint host whose OpenVINO writes build (empty:
// not known, the build check is skipped; callers that populate must know it): CheckUsable, and weightless blobs
// (init sizes in the trailer) are never shared.
func CheckEntry(rules *compat.Rules, e *Entry, host compat.Fingerprint, build string) error {
	if err := CheckUsable(rules, e, host, build); err != nil {
		return err
	}
	if len(e.Trailer.InitSizes) > 0 {
		return fmt.Errorf("%w: weightless blob (needs the model's weights file on the importing host); not shared", ErrIncompatible)
	}
	return nil
}

// CheckUsable decides whether an entry in this host's own cache directory can still be loaded here (an error:
// it is stale). The header's build string must be build exactly (OpenVINO discards any other; "" skips this
// check); its leading major.minor.patch, when it has one, must be the trailer's OpenVINO version; and the trailer
// must pass compat.CheckBlob for host. A weightless entry is usable where it was written.
func CheckUsable(rules *compat.Rules, e *Entry, host compat.Fingerprint, build string) error {
	if e == nil || e.Trailer == nil {
		return fmt.Errorf("%w: no parsed entry", ErrIncompatible)
	}
	if build != "" && e.Build != build {
		return fmt.Errorf("%w: built by OpenVINO %q, this host runs %q", ErrIncompatible, e.Build, build)
	}
	if m := buildPrefix.FindStringSubmatch(e.Build); m != nil {
		if v := m[1] + "." + m[2] + "." + m[3]; v != e.Trailer.OpenVINO.String() {
			return fmt.Errorf("%w: header says OpenVINO %s, the blob's trailer %s", ErrIncompatible, v, e.Trailer.OpenVINO)
		}
	}
	if d := compat.CheckBlob(rules, e.Trailer, host, compat.KindModel); !d.Compatible {
		return fmt.Errorf("%w: %s", ErrIncompatible, strings.Join(d.Reasons, "; "))
	}
	return nil
}
