// Package python holds the Python client of the local API (npu_agent.py); this Go test runs its unittest suite
// so that `go test ./...` covers it.
package python

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestPythonClient(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	fakeov := os.Getenv("NPU_AGENT_FAKEOV")
	if fakeov == "" {
		fakeov = filepath.Join("..", "..", "compile", "testdata", "fakeov")
	}
	if _, err := os.Stat(filepath.Join(fakeov, "openvino", "__init__.py")); err != nil {
		// The stand-in openvino package comes with the compile package.
		t.Skipf("stand-in openvino package not found: %v", err)
	}
	abs, err := filepath.Abs(fakeov)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-B", "-m", "unittest", "-v", "test_npu_agent")
	cmd.Env = append(os.Environ(), "NPU_AGENT_FAKEOV="+abs, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python unittest: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
