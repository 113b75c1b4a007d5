//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrRate is returned (wrapped) for a rate ParseRate does not accept.
var ErrRate = errors.New("invalid rate")

// maxRate bounds rates to what a lab can mean: 100 Gbit/s.
const maxRate = 100e9

// Units as tc spells them: "bit" suffixes are bits per second, "bps" suffixes bytes per second, SI multiples.
var rateUnits = []struct {
	suffix string
	bits   float64
}{
	// Longest suffixes first so "kbit" is not read as "bit" after a number "k".
	{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3},
	{"tbps", 8e12}, {"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3},
	{"bit", 1}, {"bps", 8},
}

// ParseRate parses a tc-style rate such as "100mbit", "1.5gbit" or "12mbps" (bytes) into bits per second. A unit is
// required: tc reads a bare number as bytes per second, which is too easy to get wrong.
func ParseRate(s string) (uint64, error) {
	if len(s) > 32 {
		return 0, fmt.Errorf("%w: %.32q... is too long", ErrRate, s)
	}
	in := strings.ToLower(strings.TrimSpace(s))
	for _, u := range rateUnits {
		num, ok := strings.CutSuffix(in, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(num, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, fmt.Errorf("%w: %q: %q is not a number", ErrRate, s, num)
		}
		bits := v * u.bits
		if bits < 1000 || bits > maxRate {
			return 0, fmt.Errorf("%w: %q is outside 1kbit..100gbit", ErrRate, s)
		}
		return uint64(math.Round(bits)), nil
	}
	return 0, fmt.Errorf("%w: %q has no unit (bit, kbit, mbit, gbit, tbit, or bps, kbps, mbps, gbps, tbps)", ErrRate, s)
}

// FormatRate formats bits per second the way tc prints rates, e.g. "100mbit".
func FormatRate(bps uint64) string {
	for _, u := range []struct {
		suffix string
		div    uint64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if bps >= u.div && bps%u.div == 0 {
			return strconv.FormatUint(bps/u.div, 10) + u.suffix
		}
	}
	return strconv.FormatUint(bps, 10) + "bit"
}
