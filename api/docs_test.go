package api

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The exit codes in README.md and docs/operations.md and the status and code table in docs/operations.md say what
// the error table does.

// exitCodesIn returns the numbers of the "<intro> 0 ok, 1 error, ..., 130 interrupted." list in a doc.
func exitCodesIn(t *testing.T, doc, intro string) []int {
	t.Helper()
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, intro)
	if i < 0 {
		t.Fatalf("%s: no %q", doc, intro)
	}
	list := text[i+len(intro):]
	list = list[:strings.Index(list, "interrupted.")+len("interrupted")]
	list = strings.Join(strings.Fields(list), " ")
	var out []int
	for _, item := range splitTopLevel(list) {
		n, err := strconv.Atoi(strings.Fields(item)[0])
		if err != nil {
			t.Fatalf("%s: exit code list item %q does not start with a number", doc, item)
		}
		out = append(out, n)
	}
	return out
}

// splitTopLevel splits at commas outside parentheses.
func splitTopLevel(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, r := range s {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}

func TestDocsExitCodes(t *testing.T) {
	t.Parallel()
	want := []int{ExitOK}
	for _, row := range ErrorTable() {
		want = append(want, row.Exit)
	}
	want = append(want, ExitError) // anything not in the table
	slices.Sort(want)
	want = slices.Compact(want)
	for _, doc := range []struct{ path, intro string }{
		{"../README.md", "Exit codes: "},
		{"../docs/operations.md", "CLI exit codes: "},
	} {
		if got := exitCodesIn(t, doc.path, doc.intro); !slices.Equal(got, want) {
			t.Errorf("%s lists exit codes %v; the error table has %v", doc.path, got, want)
		}
	}
	// "(exit code 9, `rollback`)" in the prose names a code's exit code.
	for _, doc := range []string{"../README.md", "../docs/operations.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile("exit code (\\d+), `(\\w+)`").FindAllStringSubmatch(string(b), -1) {
			row, ok := rowOfCode(m[2])
			if !ok {
				t.Errorf("%s: %q names code %s, which the table does not have", doc, m[0], m[2])
			} else if strconv.Itoa(row.Exit) != m[1] {
				t.Errorf("%s: %q, but the table exits %d for %s", doc, m[0], row.Exit, m[2])
			}
		}
	}
}

func TestDocsWireCodes(t *testing.T) {
	t.Parallel()
	const doc = "../docs/operations.md"
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, "| status | codes |")
	if i < 0 {
		t.Fatalf("%s: no status and codes table", doc)
	}
	table := text[i:]
	if end := strings.Index(table, "\n\n"); end >= 0 {
		table = table[:end]
	}
	documented := map[string]int{}
	rowRE := regexp.MustCompile(`^\| (\d{3}) \| (.*) \|$`)
	codeRE := regexp.MustCompile("`([a-z_]+)`")
	for _, line := range strings.Split(table, "\n")[2:] {
		m := rowRE.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("%s: table line %q is not | status | codes |", doc, line)
			continue
		}
		status, _ := strconv.Atoi(m[1])
		for _, c := range codeRE.FindAllStringSubmatch(m[2], -1) {
			if s, dup := documented[c[1]]; dup {
				t.Errorf("%s: code %s listed under %d and %d", doc, c[1], s, status)
			}
			documented[c[1]] = status
		}
	}
	for _, row := range ErrorTable() {
		if row.Code == "" {
			continue
		}
		status, ok := documented[row.Code]
		switch {
		case !ok:
			t.Errorf("%s does not list code %s (status %d)", doc, row.Code, row.Status)
		case status != row.Status:
			t.Errorf("%s lists code %s under %d; the table answers %d", doc, row.Code, status, row.Status)
		}
		delete(documented, row.Code)
	}
	for code, status := range documented {
		t.Errorf("%s lists code %s under %d; the table has no such code", doc, code, status)
	}
}
