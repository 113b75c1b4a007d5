package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// writeJSON prints v as every command's --json output: indented, CIDs as strings.
func writeJSON(w io.Writer, v any) error { return encodeJSON(w, v, "  ") }

// writeJSONLine prints v on one line (progress events on stderr with --json), CIDs as strings.
func writeJSONLine(w io.Writer, v any) error { return encodeJSON(w, v, "") }

func encodeJSON(w io.Writer, v any, indent string) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var tree any
	if err := json.Unmarshal(raw, &tree); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", indent)
	return enc.Encode(cidStrings(tree))
}

// cidStrings gives CIDs one shape in every command's JSON: the string form. Values of the API's wire types
// encode a CID as {"/": "bafk..."} (go-cid's JSON), which the CLI flattens here, in one place.
func cidStrings(v any) any {
	switch t := v.(type) {
	case map[string]any:
		if s, ok := t["/"].(string); ok && len(t) == 1 {
			return s
		}
		for k, e := range t {
			t[k] = cidStrings(e)
		}
	case []any:
		for i, e := range t {
			t[i] = cidStrings(e)
		}
	}
	return v
}

// table prints aligned columns for humans.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// isTerminal reports whether w is a character device (a terminal); progress bars are drawn only there.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressBar draws "phase [=====>    ] 42% 120 MiB/s ETA 3s" on a terminal, at most 10 times a second.
type progressBar struct {
	w       io.Writer
	mu      sync.Mutex
	start   time.Time
	last    time.Time
	phase   string
	drawn   bool
	enabled bool
}

func newProgressBar(w io.Writer) *progressBar {
	return &progressBar{w: w, enabled: isTerminal(w), start: time.Now()}
}

// Update reports done of total units (bytes; total 0 if unknown) for a phase.
func (p *progressBar) Update(phase string, done, total int64) {
	if p == nil || !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if phase != p.phase {
		p.phase, p.start = phase, now
	} else if now.Sub(p.last) < 100*time.Millisecond && done != total {
		return
	}
	p.last = now
	elapsed := now.Sub(p.start).Seconds()
	line := phase
	if total > 0 {
		frac := float64(done) / float64(total)
		const width = 24
		fill := int(frac * width)
		bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
		line += fmt.Sprintf(" [%s] %3.0f%%", bar, frac*100)
		if elapsed > 0 && done > 0 {
			rate := float64(done) / elapsed
			eta := time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second)
			line += fmt.Sprintf(" %s/s ETA %s", humanBytes(uint64(rate)), eta)
		}
	} else {
		line += fmt.Sprintf(" %s", time.Duration(elapsed*float64(time.Second)).Round(time.Second))
	}
	fmt.Fprintf(p.w, "\r\033[K%s", line)
	p.drawn = true
}

// Done clears the bar line.
func (p *progressBar) Done() {
	if p == nil || !p.enabled {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
