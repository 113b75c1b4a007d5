package server

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/api"
)

// fakeStore is a fakeAgent that also offers store maintenance, recording what it was asked to do.
type fakeStore struct {
	*fakeAgent
	mu    sync.Mutex
	calls []string
}

func (f *fakeStore) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeStore) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeStore) ListBlobs(context.Context) ([]api.StoredBlob, error) {
	f.record("ls")
	return []api.StoredBlob{}, nil
}

func (f *fakeStore) GC(_ context.Context, req api.GCRequest) (api.GCResponse, error) {
	if req.DryRun {
		f.record("gc-dry-run")
	} else {
		f.record("gc")
	}
	return api.GCResponse{DryRun: req.DryRun, Removed: []string{}}, nil
}

func (f *fakeStore) Verify(context.Context) (api.VerifyResponse, error) {
	f.record("verify")
	return api.VerifyResponse{Corrupt: []api.CorruptChunk{}}, nil
}

func (f *fakeStore) Pin(_ context.Context, req api.PinRequest) (api.PinResponse, error) {
	f.record("pin")
	return api.PinResponse{CID: req.CID, Pinned: req.Pinned}, nil
}

func (f *fakeStore) RemoveBlob(_ context.Context, c cid.Cid) error {
	f.record("rm")
	return nil
}

// TestStoreEndpointsOwnerOnly: a client of the socket that is neither root nor the daemon's user (every member
// of the socket's group) may list the store and plan a gc, but not run gc, verify, pin, unpin or rm; over TCP no
// one may; the daemon's own user may (design.md 9.1).
func TestStoreEndpointsOwnerOnly(t *testing.T) {
	// Not parallel: it replaces storeOwnerUIDs.
	saved := storeOwnerUIDs
	t.Cleanup(func() { storeOwnerUIDs = saved })
	me := uint32(os.Geteuid())
	blob := testCID([]byte("x")).String()
	reqs := []struct {
		name, method, path, body string
		open                     bool // allowed for any client of the socket
	}{
		{"ls", "GET", "/v1/store/blobs", "", true},
		{"gc-dry-run", "POST", "/v1/store/gc", `{"dry_run":true}`, true},
		{"gc", "POST", "/v1/store/gc", `{"target":0}`, false},
		{"verify", "POST", "/v1/store/verify", `{}`, false},
		{"pin", "POST", "/v1/store/pin", `{"cid":"` + blob + `","pinned":false,"force":true}`, false},
		{"rm", "POST", "/v1/store/rm", `{"cid":"` + blob + `"}`, false},
		{"cache-ls", "GET", "/v1/cache/entries", "", true}, // cache_test.go
		{"cache-prune-dry-run", "POST", "/v1/cache/prune", `{"dry_run":true}`, true},
		{"cache-prune", "POST", "/v1/cache/prune", `{}`, false},
	}
	ln, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeStore{fakeAgent: newFakeAgent()}
	const token = "test-token"
	ts := startServer(t, fs, Options{Token: token}, ln)
	tcp := &http.Client{Transport: &http.Transport{}}
	defer tcp.CloseIdleConnections()

	for _, mode := range []struct {
		name   string
		owners []uint32
		tcp    bool
	}{
		{"socket, another user", []uint32{me + 1}, false},
		{"tcp, the daemon's user", []uint32{me}, true},
		{"socket, the daemon's user", []uint32{me}, false},
	} {
		storeOwnerUIDs = func() []uint32 { return mode.owners }
		for _, rq := range reqs {
			before := len(fs.called())
			var status int
			var code string
			if mode.tcp {
				req, _ := http.NewRequest(rq.method, "http://"+ln.Addr().String()+rq.path, strings.NewReader(rq.body))
				if rq.body != "" {
					req.Header.Set("Content-Type", "application/json")
				}
				req.Header.Set("Authorization", "Bearer "+token) // past the token, still not the store's owner
				resp, err := tcp.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				status = resp.StatusCode
				resp.Body.Close()
			} else {
				ct := ""
				if rq.body != "" {
					ct = "application/json"
				}
				var eb api.ErrorBody
				status, eb, _ = rawRequest(t, ts.socket, rq.method, rq.path, ct, strings.NewReader(rq.body))
				code = eb.Code
			}
			allowed := rq.open || !mode.tcp && mode.owners[0] == me
			ran := len(fs.called()) > before
			if allowed && (status != 200 || !ran) || !allowed && (status != http.StatusForbidden || ran) {
				t.Errorf("%s: %s: status %d (%s), ran %v; want allowed %v", mode.name, rq.name, status, code, ran, allowed)
			}
			if !allowed && !mode.tcp && code != "forbidden" {
				t.Errorf("%s: %s: code %q, want forbidden", mode.name, rq.name, code)
			}
		}
	}
	// A web page cannot send JSON without a preflight: other content types are refused before anything runs.
	before := len(fs.called())
	status, eb, _ := rawRequest(t, ts.socket, "POST", "/v1/store/rm", "text/plain", strings.NewReader(`{"cid":"`+blob+`"}`))
	if status != 400 || eb.Code != "bad_request" || len(fs.called()) != before {
		t.Errorf("text/plain rm: %d %s", status, eb.Code)
	}
	// Unknown fields are errors, as everywhere in the API.
	status, eb, _ = rawRequest(t, ts.socket, "POST", "/v1/store/gc", "application/json", strings.NewReader(`{"quota":0}`))
	if status != 400 || eb.Code != "bad_request" {
		t.Errorf("unknown field: %d %s", status, eb.Code)
	}
}

// TestStoreEndpointsAbsent: an agent without store maintenance answers 404 no_such_endpoint.
func TestStoreEndpointsAbsent(t *testing.T) {
	t.Parallel()
	ts := startServer(t, newFakeAgent(), Options{})
	status, eb, _ := rawRequest(t, ts.socket, "GET", "/v1/store/blobs", "", nil)
	if status != 404 || eb.Code != api.CodeNoSuchEndpoint {
		t.Errorf("%d %s", status, eb.Code)
	}
}
