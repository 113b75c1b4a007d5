// Package layout holds the test that keeps docs/design.md's package map (section 1.1) true.
package layout

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/npu-agent/npu-agent/"

// packageMap reads the table of section 1.1: package → allowed project imports (nil: any).
func packageMap(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	code := regexp.MustCompile("`([^`]+)`")
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "### 1.1 Package map") {
			in = true
			continue
		}
		if in && strings.HasPrefix(line, "#") {
			break
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 3 {
			t.Fatalf("package map row %q: want 3 cells", line)
		}
		var allowed []string
		switch strings.TrimSpace(cells[2]) {
		case "any":
			allowed = nil
		case "—":
			allowed = []string{}
		default:
			for _, m := range code.FindAllStringSubmatch(cells[2], -1) {
				allowed = append(allowed, m[1])
			}
		}
		for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
			out[m[1]] = allowed
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no package map found in section 1.1")
	}
	return out
}

func TestPackageMap(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	want := packageMap(t, filepath.Join(root, "docs", "design.md"))
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module)
		if pkg == "internal/layout" {
			continue
		}
		seen[pkg] = true
		allowed, ok := want[pkg]
		if !ok {
			t.Errorf("package %s is missing from the package map (docs/design.md 1.1)", pkg)
			continue
		}
		if allowed == nil {
			continue
		}
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			imp = strings.TrimPrefix(imp, module)
			if !slices.Contains(allowed, imp) {
				t.Errorf("%s imports %s, which the package map does not allow", pkg, imp)
			}
		}
	}
	for pkg := range want {
		if !seen[pkg] {
			t.Errorf("the package map names %s, which does not exist", pkg)
		}
	}
}
