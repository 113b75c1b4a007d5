package python

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/api/server"
	"github.com/npu-agent/npu-agent/blobstore"
)

// wireAgent is the least an api.Agent needs to be for the Python client's wire test.
type wireAgent struct {
	mu      sync.Mutex
	blobs   map[cid.Cid][]byte
	ensured []api.EnsureRequest
	put     []api.PutRequest
}

func rawCID(b []byte) cid.Cid {
	h, _ := mh.Sum(b, mh.SHA2_256, -1)
	return cid.NewCidV1(cid.Raw, h)
}

func (a *wireAgent) Ensure(_ context.Context, req api.EnsureRequest) (api.EnsureResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ensured = append(a.ensured, req)
	for c, b := range a.blobs {
		return api.EnsureResponse{CID: c, Path: "/nonexistent/blob", Source: blobstore.SourceStore, Size: uint64(len(b))}, nil
	}
	return api.EnsureResponse{}, blobstore.ErrNotFound
}

func (a *wireAgent) OpenBlob(_ context.Context, c cid.Cid) (blobstore.Reader, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, ok := a.blobs[c]
	if !ok {
		return nil, blobstore.ErrNotFound
	}
	return &bytesReader{bytes.NewReader(b)}, nil
}

func (a *wireAgent) PutBlob(_ context.Context, req api.PutRequest, r io.Reader) (api.EnsureResponse, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return api.EnsureResponse{}, err
	}
	c := rawCID(b)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.blobs[c] = b
	a.put = append(a.put, req)
	return api.EnsureResponse{CID: c, Source: blobstore.SourceStore, Size: uint64(len(b))}, nil
}

func (a *wireAgent) Status(context.Context) (api.Status, error) { return api.Status{}, nil }

func (a *wireAgent) Jobs(context.Context) ([]api.Job, error) { return nil, nil }

type bytesReader struct{ *bytes.Reader }

func (r *bytesReader) Close() error { return nil }
func (r *bytesReader) Size() uint64 { return uint64(r.Reader.Size()) }

// The Python client speaks the Go server's wire format: JSON ensure, the put query, CIDs as {"/": ...}, streaming.
func TestPythonClientAgainstGoServer(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	socket := filepath.Join(t.TempDir(), "api.sock")
	ln, err := server.ListenUnix(socket)
	if err != nil {
		t.Fatal(err)
	}
	agent := &wireAgent{blobs: map[cid.Cid][]byte{}}
	srv := server.NewServer(agent, server.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	script := `
import json, sys
import npu_agent
c = npu_agent.Client(sys.argv[1])
assert c.health()
try:
    c.ensure("/srv/m.xml", {"device": "NPU"})
    raise SystemExit("ensure of a missing blob succeeded")
except npu_agent.AgentError as e:
    assert (e.status, e.code) == (404, "not_found"), (e.status, e.code)
profile = npu_agent.make_profile("NPU", {"PERFORMANCE_HINT": "LATENCY"}, {"in put": [1, 3, 8, 8]})
put = c.put("/srv/m.xml", profile, b"\x7fELF" + bytes(range(256)) * 100)
ans = c.ensure("/srv/m.xml", profile)
cid = npu_agent._cid_string(ans["cid"])
assert cid == npu_agent._cid_string(put["cid"]), (ans, put)
data = npu_agent._read_blob(c, ans)  # the path does not exist: streamed over the API
assert data == b"\x7fELF" + bytes(range(256)) * 100
print(json.dumps({"cid": cid}))
`
	cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
	defer ccancel()
	cmd := exec.CommandContext(cctx, py, "-B", "-c", script, socket)
	cmd.Dir = "."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	var res struct{ CID string }
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	agent.mu.Lock()
	defer agent.mu.Unlock()
	if len(agent.put) != 1 || agent.put[0].Model != "/srv/m.xml" ||
		agent.put[0].Profile.Properties["PERFORMANCE_HINT"] != "LATENCY" || agent.put[0].Profile.Shapes["in put"][3] != 8 {
		t.Errorf("agent got puts %+v", agent.put)
	}
	if len(agent.ensured) != 2 || agent.ensured[1].Profile.Shapes["in put"][1] != 3 {
		t.Errorf("agent got ensures %+v", agent.ensured)
	}
	if _, ok := agent.blobs[mustDecode(t, res.CID)]; !ok {
		t.Errorf("python saw CID %s, not the stored blob", res.CID)
	}
}

func mustDecode(t *testing.T, s string) cid.Cid {
	t.Helper()
	c, err := cid.Decode(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
