package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAgent serves blobs from memory and lets a test script Ensure and PutBlob.
type fakeAgent struct {
	mu     sync.Mutex
	blobs  map[cid.Cid][]byte
	failAt map[cid.Cid]int // the reader fails with ErrInvalidData after this many bytes
	puts   []putCall

	ensure func(ctx context.Context, req api.EnsureRequest) (api.EnsureResponse, error)
	status api.Status
	err    error // returned by every method when set
}

func (a *fakeAgent) setErr(err error) {
	a.mu.Lock()
	a.err = err
	a.mu.Unlock()
}

func (a *fakeAgent) getErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

type putCall struct {
	req  api.PutRequest
	data []byte
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{blobs: map[cid.Cid][]byte{}, failAt: map[cid.Cid]int{}}
}

func testCID(data []byte) cid.Cid {
	h, err := mh.Sum(data, mh.SHA2_256, -1)
	if err != nil {
		panic(err)
	}
	return cid.NewCidV1(cid.Raw, h)
}

func (a *fakeAgent) add(data []byte) cid.Cid {
	c := testCID(data)
	a.mu.Lock()
	a.blobs[c] = data
	a.mu.Unlock()
	return c
}

func (a *fakeAgent) Ensure(ctx context.Context, req api.EnsureRequest) (api.EnsureResponse, error) {
	if err := a.getErr(); err != nil {
		return api.EnsureResponse{}, err
	}
	if a.ensure != nil {
		return a.ensure(ctx, req)
	}
	return api.EnsureResponse{}, blobstore.ErrNotFound
}

func (a *fakeAgent) OpenBlob(_ context.Context, c cid.Cid) (blobstore.Reader, error) {
	if err := a.getErr(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	data, ok := a.blobs[c]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", c, blobstore.ErrNotFound)
	}
	failAt, ok := a.failAt[c]
	if !ok {
		failAt = -1
	}
	return &fakeReader{r: bytes.NewReader(data), size: uint64(len(data)), failAt: failAt}, nil
}

func (a *fakeAgent) PutBlob(_ context.Context, req api.PutRequest, blob io.Reader) (api.EnsureResponse, error) {
	if err := a.getErr(); err != nil {
		return api.EnsureResponse{}, err
	}
	data, err := io.ReadAll(blob)
	if err != nil {
		return api.EnsureResponse{}, err
	}
	c := a.add(data)
	a.mu.Lock()
	a.puts = append(a.puts, putCall{req, data})
	a.mu.Unlock()
	return api.EnsureResponse{CID: c, Source: blobstore.SourceStore, Size: uint64(len(data)), ModelID: "m", ProfileID: "p"}, nil
}

func (a *fakeAgent) Status(context.Context) (api.Status, error) {
	if err := a.getErr(); err != nil {
		return api.Status{}, err
	}
	return a.status, nil
}

func (a *fakeAgent) Jobs(context.Context) ([]api.Job, error) {
	if err := a.getErr(); err != nil {
		return nil, err
	}
	return a.status.Jobs, nil
}

// fakeReader is a blobstore.Reader that can fail part-way like a store finding a corrupt chunk.
type fakeReader struct {
	r      *bytes.Reader
	size   uint64
	failAt int
}

func (f *fakeReader) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f *fakeReader) Close() error               { return nil }
func (f *fakeReader) Size() uint64               { return f.size }
func (f *fakeReader) WriteTo(w io.Writer) (int64, error) {
	if f.failAt < 0 {
		return f.r.WriteTo(w)
	}
	n, err := io.CopyN(w, f.r, int64(f.failAt))
	if err != nil {
		return n, err
	}
	return n, fmt.Errorf("chunk 1: %w", blobstore.ErrInvalidData)
}

type testServer struct {
	socket string
	client *api.Client
	stop   func() error // cancels Serve and returns its result
}

// startServer serves agent on a fresh unix socket (and the extra listeners) until the test ends.
func startServer(t testing.TB, agent api.Agent, opts Options, extra ...net.Listener) *testServer {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "run", "api.sock")
	ln, err := ListenUnix(socket)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv := NewServer(agent, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, append([]net.Listener{ln}, extra...)...) }()
	var once sync.Once
	var serveErr error
	ts := &testServer{socket: socket, client: api.NewClient(socket)}
	ts.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(15 * time.Second):
				serveErr = errors.New("Serve did not return")
			}
			ts.client.Close()
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Error(err)
		}
	})
	return ts
}

// baseURL's host is only a label: socketClient always dials the socket.
const baseURL = "http://npu-agent"

// socketClient is a plain HTTP client of the server on socket, for requests the api.Client would not send.
func socketClient(t testing.TB, socket string) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func testProfile() compile.Profile {
	return compile.Profile{Device: "NPU", Properties: map[string]string{"PERFORMANCE_HINT": "LATENCY"},
		Shapes: map[string][]int64{"input": {1, 3, 224, 224}}}
}

func TestEnsure(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	c := agent.add([]byte("blob"))
	want := api.EnsureResponse{CID: c, Path: "/var/lib/npu-agent/blobs/x", Source: blobstore.SourcePeer, Size: 4,
		SHA256: "ab", ModelID: "bafymodel", ProfileID: "bafyprofile", From: "12D3KooW", CompileTime: 3 * time.Second}
	var got api.EnsureRequest
	agent.ensure = func(_ context.Context, req api.EnsureRequest) (api.EnsureResponse, error) {
		got = req
		return want, nil
	}
	ts := startServer(t, agent, Options{})
	req := api.EnsureRequest{Model: "/models/resnet.xml", Profile: testProfile()}
	resp, err := ts.client.Ensure(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.CID.Equals(want.CID) || resp.Path != want.Path || resp.Source != want.Source || resp.Size != want.Size ||
		resp.From != want.From || resp.CompileTime != want.CompileTime || resp.ModelID != want.ModelID {
		t.Errorf("response %+v, want %+v", resp, want)
	}
	if got.Model != req.Model || got.Profile.Device != "NPU" || got.Profile.Shapes["input"][3] != 224 {
		t.Errorf("agent got %+v, want %+v", got, req)
	}
}

// rawRequest sends a hand-made request over the socket and decodes an error body.
func rawRequest(t *testing.T, socket, method, path, contentType string, body io.Reader) (int, api.ErrorBody, http.Header) {
	t.Helper()
	hc := socketClient(t, socket)
	req, err := http.NewRequest(method, baseURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb api.ErrorBody
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(raw, &eb); err != nil {
			t.Errorf("%s %s: error body %q is not JSON: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode, eb, resp.Header
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	agent.ensure = func(context.Context, api.EnsureRequest) (api.EnsureResponse, error) {
		t.Error("agent called for a bad request")
		return api.EnsureResponse{}, nil
	}
	ts := startServer(t, agent, Options{})
	profile := `{"device":"NPU"}`
	tests := []struct {
		name, method, path, ctype, body string
		status                          int
		code                            string
	}{
		{"ensure no content type", "POST", "/v1/ensure", "", `{"model":"/m.xml","profile":` + profile + `}`, 400, "bad_request"},
		{"ensure text/plain", "POST", "/v1/ensure", "text/plain", `{"model":"/m.xml","profile":` + profile + `}`, 400, "bad_request"},
		{"ensure malformed", "POST", "/v1/ensure", "application/json", `{"model":`, 400, "bad_request"},
		{"ensure unknown field", "POST", "/v1/ensure", "application/json", `{"model":"/m.xml","profile":` + profile + `,"x":1}`, 400, "bad_request"},
		{"ensure unknown profile field", "POST", "/v1/ensure", "application/json", `{"model":"/m.xml","profile":{"device":"NPU","cache":1}}`, 400, "bad_request"},
		{"ensure trailing data", "POST", "/v1/ensure", "application/json", `{"model":"/m.xml","profile":` + profile + `} {}`, 400, "bad_request"},
		{"ensure relative model", "POST", "/v1/ensure", "application/json", `{"model":"m.xml","profile":` + profile + `}`, 400, "bad_request"},
		{"ensure no model", "POST", "/v1/ensure", "application/json", `{"profile":` + profile + `}`, 400, "bad_request"},
		{"ensure wrong extension", "POST", "/v1/ensure", "application/json", `{"model":"/m.bin","profile":` + profile + `}`, 400, "bad_request"},
		{"ensure no device", "POST", "/v1/ensure", "application/json", `{"model":"/m.xml","profile":{}}`, 400, "bad_request"},
		{"ensure too large", "POST", "/v1/ensure", "application/json", `{"model":"/m.xml","profile":{"device":"` + strings.Repeat("N", MaxJSONBody) + `"}}`, 413, "too_large"},
		{"blob bad cid", "GET", "/v1/blobs/not-a-cid", "", "", 400, "bad_request"},
		{"put no profile", "POST", "/v1/blobs?model=/m.xml", "application/octet-stream", "x", 400, "bad_request"},
		{"put bad profile", "POST", "/v1/blobs?model=/m.xml&profile={", "application/octet-stream", "x", 400, "bad_request"},
		{"put profile unknown field", "POST", "/v1/blobs?model=/m.xml&profile=" + `{"device":"NPU","x":1}`, "application/octet-stream", "x", 400, "bad_request"},
		{"put unknown param", "POST", "/v1/blobs?model=/m.xml&profile=" + profile + "&pin=1", "application/octet-stream", "x", 400, "bad_request"},
		{"put repeated param", "POST", "/v1/blobs?model=/m.xml&model=/n.xml&profile=" + profile, "application/octet-stream", "x", 400, "bad_request"},
		{"put relative model", "POST", "/v1/blobs?model=m.xml&profile=" + profile, "application/octet-stream", "x", 400, "bad_request"},
		{"put form content type", "POST", "/v1/blobs?model=/m.xml&profile=" + profile, "application/x-www-form-urlencoded", "x", 400, "bad_request"},
		{"unknown endpoint", "GET", "/v2/anything", "", "", 404, "no_such_endpoint"},
		{"wrong method", "DELETE", "/v1/ensure", "", "", 405, "method_not_allowed"},
		{"metrics not configured", "GET", "/metrics", "", "", 404, "no_such_endpoint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := strings.ReplaceAll(tc.path, `"`, "%22")
			path = strings.ReplaceAll(path, `{`, "%7B")
			path = strings.ReplaceAll(path, `}`, "%7D")
			status, eb, hdr := rawRequest(t, ts.socket, tc.method, path, tc.ctype, strings.NewReader(tc.body))
			if status != tc.status || eb.Code != tc.code || eb.Error == "" {
				t.Errorf("got %d %+v, want %d %q", status, eb, tc.status, tc.code)
			}
			if tc.status == 405 && hdr.Get("Allow") != "POST" {
				t.Errorf("Allow %q, want POST", hdr.Get("Allow"))
			}
			if len(eb.Error) > 300 {
				t.Errorf("error message is %d bytes long", len(eb.Error))
			}
		})
	}
	agent.mu.Lock()
	defer agent.mu.Unlock()
	if len(agent.puts) != 0 {
		t.Errorf("agent stored %d blobs from bad requests", len(agent.puts))
	}
}

func TestErrorMapping(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	ts := startServer(t, agent, Options{})
	tests := []struct {
		err    error
		status int
		code   string
	}{
		{blobstore.ErrNotFound, 404, "not_found"},
		{blobstore.ErrInvalidData, 422, "invalid_data"},
		{blobstore.ErrIncomplete, 409, "incomplete"},
		{compat.ErrNoMetadata, 422, "no_metadata"},
		{compat.ErrFutureMetadata, 422, "future_metadata"},
		{compat.ErrMalformedTrailer, 422, "malformed_trailer"},
		{compat.ErrMetadataVersion, 422, "metadata_version"},
		{compat.ErrNoNPU, 503, "no_npu"},
		{fs.ErrNotExist, 404, "no_such_file"},
		{fs.ErrPermission, 403, "permission"},
		{context.DeadlineExceeded, 504, "timeout"},
		{errors.New("disk on fire"), 500, "internal"},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			// Not parallel: the subtests share the agent's error.
			agent.setErr(fmt.Errorf("while doing things: %w", tc.err))
			_, err := ts.client.Ensure(context.Background(), api.EnsureRequest{Model: "/m.onnx", Profile: compile.Profile{Device: "NPU"}})
			var ae *api.Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %v (%T) is not *api.Error", err, err)
			}
			if ae.Status != tc.status || ae.Code != tc.code || !strings.Contains(ae.Message, "while doing things") {
				t.Errorf("got %d %q %q, want %d %q", ae.Status, ae.Code, ae.Message, tc.status, tc.code)
			}
			if tc.code != "internal" && !errors.Is(err, tc.err) {
				t.Errorf("errors.Is(%v, %v) is false", err, tc.err)
			}
		})
	}
}

func TestEnsureCancelledByClient(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	started := make(chan struct{})
	agentDone := make(chan error, 1)
	agent.ensure = func(ctx context.Context, _ api.EnsureRequest) (api.EnsureResponse, error) {
		close(started)
		select {
		case <-ctx.Done():
			agentDone <- ctx.Err()
			return api.EnsureResponse{}, ctx.Err()
		case <-time.After(10 * time.Second):
			agentDone <- errors.New("the agent's context was not cancelled")
			return api.EnsureResponse{}, errors.New("timeout")
		}
	}
	ts := startServer(t, agent, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := ts.client.Ensure(ctx, api.EnsureRequest{Model: "/m.xml", Profile: testProfile()})
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client error %v, want context.Canceled", err)
	}
	if err := <-agentDone; !errors.Is(err, context.Canceled) {
		t.Errorf("agent: %v", err)
	}
}

func TestShutdownCancelsInFlight(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	started := make(chan struct{})
	agent.ensure = func(ctx context.Context, _ api.EnsureRequest) (api.EnsureResponse, error) {
		close(started)
		<-ctx.Done() // bounded: the shutdown below cancels it
		return api.EnsureResponse{}, fmt.Errorf("compiling: %w", context.Cause(ctx))
	}
	ts := startServer(t, agent, Options{})
	errc := make(chan error, 1)
	go func() {
		_, err := ts.client.Ensure(context.Background(), api.EnsureRequest{Model: "/m.xml", Profile: testProfile()})
		errc <- err
	}()
	<-started
	if err := ts.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if err := <-errc; !errors.Is(err, api.ErrShuttingDown) {
		t.Errorf("client error %v, want api.ErrShuttingDown", err)
	}
	if _, err := os.Lstat(ts.socket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
}

func TestBlob(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	data := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB: several writes
	good := agent.add(data)
	broken := agent.add(append([]byte("broken"), data...))
	agent.failAt[broken] = 1 << 20
	missing := testCID([]byte("missing"))
	ts := startServer(t, agent, Options{})
	ctx := context.Background()

	t.Run("stream", func(t *testing.T) {
		t.Parallel()
		rd, err := ts.client.Blob(ctx, good)
		if err != nil {
			t.Fatal(err)
		}
		defer rd.Close()
		if rd.Size() != uint64(len(data)) {
			t.Errorf("Size %d, want %d", rd.Size(), len(data))
		}
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, rd); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), data) {
			t.Error("streamed bytes differ")
		}
	})
	t.Run("headers and conditional", func(t *testing.T) {
		t.Parallel()
		hc := socketClient(t, ts.socket)
		for _, tc := range []struct {
			method, inm string
			status      int
			bodyLen     int
		}{
			{"GET", "", 200, len(data)},
			{"HEAD", "", 200, 0},
			{"GET", `"` + good.String() + `"`, 304, 0},
			{"GET", `W/"other", "` + good.String() + `"`, 304, 0},
			{"GET", `"other"`, 200, len(data)},
		} {
			req, _ := http.NewRequest(tc.method, baseURL+"/v1/blobs/"+good.String(), nil)
			if tc.inm != "" {
				req.Header.Set("If-None-Match", tc.inm)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || int(n) != tc.bodyLen || resp.Header.Get("ETag") != `"`+good.String()+`"` {
				t.Errorf("%s If-None-Match %q: %d, %d bytes, ETag %q", tc.method, tc.inm, resp.StatusCode, n, resp.Header.Get("ETag"))
			}
			if tc.status == 200 && resp.ContentLength != int64(len(data)) {
				t.Errorf("%s: Content-Length %d", tc.method, resp.ContentLength)
			}
		}
	})
	t.Run("not found", func(t *testing.T) {
		t.Parallel()
		_, err := ts.client.Blob(ctx, missing)
		if !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("got %v, want ErrNotFound", err)
		}
	})
	t.Run("corrupt mid-stream", func(t *testing.T) {
		t.Parallel()
		rd, err := ts.client.Blob(ctx, broken)
		if err != nil {
			t.Fatal(err)
		}
		defer rd.Close()
		n, err := rd.WriteTo(io.Discard)
		if err == nil || uint64(n) >= rd.Size() {
			t.Errorf("read %d of %d bytes, err %v: a cut stream must fail", n, rd.Size(), err)
		}
	})
}

func TestPut(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	ts := startServer(t, agent, Options{})
	data := bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 1<<18)
	req := api.PutRequest{Model: "/srv/models/unet model.xml", Profile: testProfile()}
	resp, err := ts.client.Put(context.Background(), req, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.CID.Equals(testCID(data)) || resp.Size != uint64(len(data)) {
		t.Errorf("response %+v", resp)
	}
	agent.mu.Lock()
	defer agent.mu.Unlock()
	if len(agent.puts) != 1 {
		t.Fatalf("%d puts", len(agent.puts))
	}
	got := agent.puts[0]
	if got.req.Model != req.Model || got.req.Profile.Properties["PERFORMANCE_HINT"] != "LATENCY" ||
		len(got.req.Profile.Shapes["input"]) != 4 || !bytes.Equal(got.data, data) {
		t.Errorf("agent got %+v with %d bytes", got.req, len(got.data))
	}
}

func TestPutTooLarge(t *testing.T) {
	t.Parallel()
	ts := startServer(t, newFakeAgent(), Options{})
	conn, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Announce more than MaxBlobSize: refused before the body is read.
	fmt.Fprintf(conn, "POST /v1/blobs?model=/m.xml&profile=%%7B%%22device%%22:%%22NPU%%22%%7D HTTP/1.1\r\nHost: x\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\nabc", int64(blobstore.MaxBlobSize)+1)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb api.ErrorBody
	if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || resp.StatusCode != 413 || eb.Code != "too_large" {
		t.Errorf("got %d %+v (%v), want 413 too_large", resp.StatusCode, eb, err)
	}
}

func TestStatusHealthMetrics(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	agent.status = api.Status{Version: "1.2.3", PeerID: "12D3KooWx", Compiler: "sim",
		Store: api.StoreStatus{Blobs: 2, Bytes: 1 << 30, Records: 3},
		Jobs:  []api.Job{{Kind: "fetch", ModelID: "m", ProfileID: "p", Done: 10, Total: 100}},
		Peers: []api.Peer{{ID: "12D3KooWy", Addrs: []string{"/ip4/127.0.0.1/tcp/4801"}, Records: 1}}}
	reg := prometheus.NewRegistry()
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "npu_agent_test_total", Help: "test"})
	reg.MustRegister(counter)
	counter.Add(7)
	ts := startServer(t, agent, Options{Gatherer: reg})
	ctx := context.Background()

	st, err := ts.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "1.2.3" || st.Store.Bytes != 1<<30 || len(st.Jobs) != 1 || st.Jobs[0].Kind != "fetch" ||
		len(st.Peers) != 1 || st.Peers[0].Addrs[0] != "/ip4/127.0.0.1/tcp/4801" {
		t.Errorf("status %+v", st)
	}
	jobs, err := ts.client.Jobs(ctx)
	if err != nil || len(jobs) != 1 || jobs[0].Kind != "fetch" || jobs[0].Done != 10 {
		t.Errorf("jobs %+v, %v", jobs, err)
	}
	if err := ts.client.Health(ctx); err != nil {
		t.Error(err)
	}
	if !ts.client.Available(ctx) {
		t.Error("Available is false for a running daemon")
	}

	resp, err := socketClient(t, ts.socket).Get(baseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "npu_agent_test_total 7") {
		t.Errorf("metrics: %d %q", resp.StatusCode, body)
	}

	agent.setErr(errors.New("status broke"))
	if _, err := ts.client.Status(ctx); err == nil || !strings.Contains(err.Error(), "status broke") {
		t.Errorf("status error %v", err)
	}
	if _, err := ts.client.Jobs(ctx); err == nil || !strings.Contains(err.Error(), "status broke") {
		t.Errorf("jobs error %v", err)
	}
}

func TestSocketPermissions(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "run", "npu-agent")
	socket := filepath.Join(dir, "api.sock")
	ln, err := ListenUnix(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		path string
		want fs.FileMode
		typ  fs.FileMode
	}{{dir, SocketDirMode, fs.ModeDir}, {socket, SocketMode, fs.ModeSocket}} {
		fi, err := os.Lstat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.want || fi.Mode().Type() != tc.typ {
			t.Errorf("%s: mode %v, want %v %v", tc.path, fi.Mode(), tc.typ, tc.want)
		}
	}
	// An existing directory keeps its mode: the socket may live in a shared one.
	shared := t.TempDir()
	os.Chmod(shared, 0o755)
	ln2, err := ListenUnix(filepath.Join(shared, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o755 {
		t.Errorf("existing directory's mode changed to %v", fi.Mode().Perm())
	}
}

func TestStaleAndLiveSocket(t *testing.T) {
	t.Parallel()
	socket := filepath.Join(t.TempDir(), "api.sock")

	// A daemon killed with SIGKILL leaves its socket file behind.
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(socket); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	if _, err := api.Dial(context.Background(), socket); !errors.Is(err, api.ErrNoDaemon) {
		t.Errorf("api.Dial on a stale socket: %v, want api.ErrNoDaemon", err)
	}
	live, err := ListenUnix(socket)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer live.Close()

	// A live one is an error, and stays usable.
	if _, err := ListenUnix(socket); !errors.Is(err, ErrDaemonRunning) {
		t.Errorf("second listener: %v, want ErrDaemonRunning", err)
	}
	go func() {
		if c, err := live.Accept(); err == nil {
			c.Close()
		}
	}()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Errorf("live socket broken by the second attempt: %v", err)
	} else {
		conn.Close()
	}

	// Anything else at the path is never removed.
	file := filepath.Join(t.TempDir(), "api.sock")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := ListenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("regular file was touched")
	}
	if _, err := ListenUnix("/" + strings.Repeat("x", 120)); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("long path: %v", err)
	}
}

func TestDialNoDaemon(t *testing.T) {
	t.Parallel()
	socket := filepath.Join(t.TempDir(), "absent.sock")
	start := time.Now()
	c, err := api.Dial(context.Background(), socket)
	if !errors.Is(err, api.ErrNoDaemon) || c != nil {
		t.Errorf("Dial: %v, want api.ErrNoDaemon", err)
	}
	if api.NewClient(socket).Available(context.Background()) {
		t.Error("Available is true with no daemon")
	}
	_, err = api.NewClient(socket).Status(context.Background())
	if !errors.Is(err, api.ErrNoDaemon) {
		t.Errorf("Status: %v, want api.ErrNoDaemon", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("answering with no daemon took %v", d)
	}
}

// A daemon that accepted the connection but is slow to answer is not "no daemon": the CLI would go on without it
// and meet its store lock. A stale socket file with nothing listening is.
func TestDialBusyIsNotNoDaemon(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		listen     bool // something accepts and never answers
		wantNoDmon bool
	}{
		{"stale socket file", false, true},
		{"listener that never answers", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			socket := filepath.Join(t.TempDir(), "api.sock")
			ln, err := net.Listen("unix", socket)
			if err != nil {
				t.Fatal(err)
			}
			if tc.listen {
				defer ln.Close()
				go func() {
					for range 16 { // bounded: the test dials once or twice
						c, err := ln.Accept()
						if err != nil {
							return
						}
						defer c.Close() // held open, never answered
					}
				}()
			} else {
				ln.(*net.UnixListener).SetUnlinkOnClose(false)
				ln.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			c, err := api.Dial(ctx, socket)
			if err == nil || c != nil {
				t.Fatalf("Dial: %v, want an error", err)
			}
			if got := errors.Is(err, api.ErrNoDaemon); got != tc.wantNoDmon {
				t.Errorf("Dial: %v; ErrNoDaemon %v, want %v", err, got, tc.wantNoDmon)
			}
		})
	}
}

func TestDialLive(t *testing.T) {
	t.Parallel()
	ts := startServer(t, newFakeAgent(), Options{})
	c, err := api.Dial(context.Background(), ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestTCPLoopbackGuard(t *testing.T) {
	t.Parallel()
	if _, err := ListenTCP("0.0.0.0:0"); err == nil {
		t.Error("ListenTCP accepted a non-loopback address")
	}
	ln, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, newFakeAgent(), Options{}, ln)
	addr := ln.Addr().String()
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct {
		host, origin string
		status       int
	}{
		{"", "", 200},
		{"localhost:4800", "", 200},
		{"[::1]:4800", "", 200},
		{"evil.example:4800", "", 403},
		{"", "http://evil.example", 403},
	} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/healthz", nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("Host %q Origin %q: %d, want %d", tc.host, tc.origin, resp.StatusCode, tc.status)
		}
	}
}

func TestClientRejectsBadRequestsLocally(t *testing.T) {
	t.Parallel()
	c := api.NewClient(filepath.Join(t.TempDir(), "none.sock"))
	defer c.Close()
	_, err := c.Ensure(context.Background(), api.EnsureRequest{Model: "relative.xml", Profile: compile.Profile{Device: "NPU"}})
	if !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("Ensure: %v, want api.ErrBadRequest", err)
	}
	_, err = c.Put(context.Background(), api.PutRequest{Model: "/m.xml"}, strings.NewReader("x"))
	if !errors.Is(err, api.ErrBadRequest) {
		t.Errorf("Put: %v, want api.ErrBadRequest", err)
	}
}

func FuzzParsePutQuery(f *testing.F) {
	f.Add(`model=/m.xml&profile={"device":"NPU"}`)
	f.Add(`model=%2Fm.onnx&profile=%7B%22device%22%3A%22NPU%22%2C%22shapes%22%3A%7B%22x%22%3A%5B1%2C3%5D%7D%7D`)
	f.Add(`model=/m.xml&model=/n.xml`)
	f.Add(`profile={"device":"NPU","properties":{"A":"B"}}&model=/a/b.xml`)
	f.Add(`%zz`)
	f.Fuzz(func(t *testing.T, raw string) {
		req, err := parsePutQuery(raw)
		if err == nil {
			if !filepath.IsAbs(req.Model) || req.Profile.Device == "" {
				t.Errorf("accepted %q as %+v", raw, req)
			}
		} else if !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("error %v is not api.ErrBadRequest", err)
		}
	})
}

func FuzzDecodeEnsure(f *testing.F) {
	f.Add([]byte(`{"model":"/m.xml","profile":{"device":"NPU","shapes":{"input":[1,3,224,224]}}}`))
	f.Add([]byte(`{"model":"/m.xml","profile":{"device":"NPU"}} x`))
	f.Add([]byte(`{"model":"/m.xml","profile":{"device":"NPU","kind":"llm","properties":{"NPU_TURBO":"YES"}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req api.EnsureRequest
		if err := decodeStrict(bytes.NewReader(b), &req); err != nil {
			return
		}
		if err := api.CheckModelProfile(req.Model, req.Profile); err == nil && (!filepath.IsAbs(req.Model) || req.Profile.Device == "") {
			t.Errorf("accepted %q", b)
		}
	})
}
