package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/rollout"
)

// fakeRollouts records what the server hands it and answers with err when set.
type fakeRollouts struct {
	mu     sync.Mutex
	signed [][]byte
	paths  []string
	err    error
}

func (f *fakeRollouts) AddSource(_ context.Context, path string) (rollout.SourceModel, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paths = append(f.paths, path)
	return rollout.SourceModel{ID: "bafkreimodel"}, f.err
}

func (f *fakeRollouts) Publish(_ context.Context, signed []byte) (api.Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signed = append(f.signed, bytes.Clone(signed))
	return api.Rollout{Name: "kiosk", Version: 7}, f.err
}

func (f *fakeRollouts) List(context.Context) ([]api.Rollout, error) {
	return []api.Rollout{{Name: "kiosk", Version: 7, Selected: true, State: rollout.PhaseReady}}, f.err
}

func (f *fakeRollouts) Get(_ context.Context, name string) (api.RolloutStatus, error) {
	if name != "kiosk" {
		return api.RolloutStatus{}, fmt.Errorf("rollout %s: %w", name, rollout.ErrNotFound)
	}
	return api.RolloutStatus{Rollout: api.Rollout{Name: name, Version: 7},
		Peers: []api.RolloutPeer{
			{Row: rollout.Row{Peer: "12D3KooWx", Version: 7, State: rollout.PhaseReady}, Connected: true},
			{Row: rollout.Row{Peer: "12D3KooWself", Version: 7, State: rollout.PhaseReady}, Self: true},
			{Row: rollout.Row{Peer: "12D3KooWunknown"}, Connected: true},
		}}, f.err
}

func TestRolloutEndpoints(t *testing.T) {
	t.Parallel()
	ro := &fakeRollouts{}
	ag := newFakeAgent()
	ag.status = api.Status{Hostname: "kiosk-01", Class: "classA", Tags: []string{"site=x"}, Peers: []api.Peer{
		{ID: "12D3KooWx", Hostname: "kiosk-02", Class: "classA", Tags: []string{"site=berlin"}}}}
	ts := startServer(t, ag, Options{Rollouts: ro})
	ctx := context.Background()

	src, err := ts.client.AddSource(ctx, "/srv/models/det.xml")
	if err != nil || src.ID != "bafkreimodel" || ro.paths[0] != "/srv/models/det.xml" {
		t.Fatalf("AddSource = %+v, %v (paths %q)", src, err, ro.paths)
	}
	// The manifest reaches the agent byte for byte: signatures cover exactly these bytes.
	signed := []byte(`{"type":"npu-agent/rollout-manifest/v1", "payload":"e30=","signatures":[]}` + "\n ")
	r, err := ts.client.PublishRollout(ctx, signed)
	if err != nil || r.Version != 7 || !bytes.Equal(ro.signed[0], signed) {
		t.Fatalf("PublishRollout = %+v, %v; agent got %q", r, err, ro.signed)
	}
	list, err := ts.client.Rollouts(ctx)
	if err != nil || len(list) != 1 || list[0].State != rollout.PhaseReady {
		t.Fatalf("api.Rollouts = %+v, %v", list, err)
	}
	st, err := ts.client.Rollout(ctx, "kiosk")
	if err != nil || len(st.Peers) != 3 || !st.Peers[0].Connected || st.Peers[0].State != rollout.PhaseReady {
		t.Fatalf("api.Rollout = %+v, %v", st, err)
	}
	// Rows name hosts: the member table's hostname, class and tags; this agent's own for its row; nothing for a
	// peer without a member record.
	want := []struct{ host, class, tags string }{{"kiosk-02", "classA", "site=berlin"}, {"kiosk-01", "classA", "site=x"}, {"", "", ""}}
	for i, w := range want {
		p := st.Peers[i]
		if p.Hostname != w.host || p.Class != w.class || strings.Join(p.Tags, ",") != w.tags {
			t.Errorf("row %d (%s): hostname %q class %q tags %q, want %+v", i, p.Peer, p.Hostname, p.Class, p.Tags, w)
		}
	}
	if _, err := ts.client.Rollout(ctx, "nope"); !errors.Is(err, rollout.ErrNotFound) {
		t.Errorf("api.Rollout of an unknown name: %v, want rollout.ErrNotFound", err)
	}
	if _, err := ts.client.PublishRollout(ctx, make([]byte, rollout.MaxSignedSize+1)); !errors.Is(err, rollout.ErrTooLarge) {
		t.Errorf("client sent an oversized manifest: %v", err)
	}

	// Acceptance errors come back as the same sentinels.
	for _, want := range []error{rollout.ErrRollback, rollout.ErrEquivocation, rollout.ErrUnknownKey, rollout.ErrBadSignature,
		rollout.ErrThreshold, rollout.ErrExpired, rollout.ErrSourceMismatch, rollout.ErrNonCanonical, rollout.ErrUnsigned} {
		ro.mu.Lock()
		ro.err = fmt.Errorf("%w: kiosk", want)
		ro.mu.Unlock()
		if _, err := ts.client.PublishRollout(ctx, signed); !errors.Is(err, want) || !strings.Contains(err.Error(), "kiosk") {
			t.Errorf("agent said %v; client got %v", want, err)
		}
	}
}

func TestRolloutEndpointsBadRequests(t *testing.T) {
	t.Parallel()
	ro := &fakeRollouts{}
	ts := startServer(t, newFakeAgent(), Options{Rollouts: ro})
	for _, tc := range []struct {
		method, path, ct, body string
		status                 int
		code                   string
	}{
		{"POST", "/v1/rollouts", "text/plain", "{}", http.StatusBadRequest, "bad_request"},
		{"POST", "/v1/rollouts", "application/json", strings.Repeat(" ", rollout.MaxSignedSize+10), http.StatusRequestEntityTooLarge, "manifest_too_large"},
		{"POST", "/v1/rollouts/sources", "application/json", `{"model":"relative.xml"}`, http.StatusBadRequest, "bad_request"},
		{"POST", "/v1/rollouts/sources", "application/json", `{"model":"/m.txt"}`, http.StatusBadRequest, "bad_request"},
		{"POST", "/v1/rollouts/sources", "application/json", `{"model":"/m.xml","x":1}`, http.StatusBadRequest, "bad_request"},
		{"DELETE", "/v1/rollouts/kiosk", "", "", http.StatusMethodNotAllowed, "method_not_allowed"},
	} {
		status, eb, _ := rawRequest(t, ts.socket, tc.method, tc.path, tc.ct, strings.NewReader(tc.body))
		if status != tc.status || eb.Code != tc.code {
			t.Errorf("%s %s: %d %q, want %d %q (%s)", tc.method, tc.path, status, eb.Code, tc.status, tc.code, eb.Error)
		}
	}
	if len(ro.signed) != 0 || len(ro.paths) != 0 {
		t.Errorf("agent called for bad requests: %d manifests, %d sources", len(ro.signed), len(ro.paths))
	}

	// A daemon without rollouts says so on every rollout endpoint.
	off := startServer(t, newFakeAgent(), Options{})
	for _, ep := range []struct{ method, path, ct, body string }{
		{"GET", "/v1/rollouts", "", ""}, {"GET", "/v1/rollouts/kiosk", "", ""},
		{"POST", "/v1/rollouts", "application/json", "{}"}, {"POST", "/v1/rollouts/sources", "application/json", `{"model":"/m.xml"}`},
	} {
		status, eb, _ := rawRequest(t, off.socket, ep.method, ep.path, ep.ct, strings.NewReader(ep.body))
		if status != http.StatusServiceUnavailable || eb.Code != "rollouts_disabled" {
			t.Errorf("%s %s without rollouts: %d %q", ep.method, ep.path, status, eb.Code)
		}
	}
	if _, err := off.client.Rollouts(context.Background()); !errors.Is(err, api.ErrRolloutsDisabled) {
		t.Errorf("client: %v, want api.ErrRolloutsDisabled", err)
	}
}
