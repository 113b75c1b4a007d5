package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/config"
)

// Every command's JSON gives a CID as its string, whatever the wire type it prints.
func TestJSONCIDsAreStrings(t *testing.T) {
	t.Parallel()
	mh, err := multihash.Sum([]byte("x"), multihash.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	c := cid.NewCidV1(cid.Raw, mh)
	tests := []struct {
		name string
		v    any
	}{
		{"status", api.Status{Store: api.StoreStatus{List: []blobstore.Info{{CID: c}}},
			Jobs: []api.Job{{Kind: agent.PhaseFetch, CID: c, Started: time.Unix(0, 0)}}}},
		{"gc result", blobstore.GCResult{Removed: []cid.Cid{c, c}}},
		{"ensure answer", api.EnsureResponse{CID: c}},
		{"a map with a key named /", map[string]any{"/": 1, "x": "y"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b bytes.Buffer
			if err := writeJSON(&b, tt.v); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(b.String(), `"/": "`) {
				t.Errorf("a CID left as an object:\n%s", b.String())
			}
			if tt.name != "a map with a key named /" && !strings.Contains(b.String(), `"`+c.String()+`"`) {
				t.Errorf("the CID string is missing:\n%s", b.String())
			}
			var back any
			if err := json.Unmarshal(b.Bytes(), &back); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The log format: JSON lines; text; under the journal (auto) text without slog's own time.
func TestLogFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		format  string
		journal bool
		want    string // a prefix of the line
		time    bool
	}{
		{"json", false, `{"time":`, true},
		{"json", true, `{"time":`, true},
		{"text", true, `time=`, true},
		{"auto", false, `time=`, true},
		{"auto", true, `level=INFO`, false},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		cfg := config.Default()
		cfg.LogFormat = tt.format
		newLogger(&b, cfg, tt.journal).Info("hello", "k", "v")
		line := b.String()
		if !strings.HasPrefix(line, tt.want) || strings.Contains(line, "time") != tt.time {
			t.Errorf("format %s, journal %v: %q; want a line starting %q, time %v", tt.format, tt.journal, line, tt.want, tt.time)
		}
	}
}

func TestJobPhase(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		j    api.Job
		want string
	}{
		{api.Job{Kind: agent.PhaseWait}, "waiting for the fleet's compile"},
		{api.Job{Kind: agent.PhaseCompile}, "compiling"},
		{api.Job{Kind: agent.PhaseFetch}, "fetching"},
		{api.Job{Kind: agent.PhaseFetch, Chunks: 12, ChunksDone: 3, From: "12D3KooWAQS4LYzQeGkP2Dgsno85AWjwyQ3HKEfo4TKxptGELhsc"},
			"fetching 3/12 chunks from 12D3KooW…GELhsc"},
		{api.Job{Kind: agent.PhaseWait, From: "12D3KooWAQS4LYzQeGkP2Dgsno85AWjwyQ3HKEfo4TKxptGELhsc"},
			"waiting for 12D3KooW…GELhsc's compile"},
		{api.Job{Kind: agent.PhaseWait, From: "12D3KooWAQS4LYzQeGkP2Dgsno85AWjwyQ3HKEfo4TKxptGELhsc", FromHostname: "npu-07"},
			"waiting for npu-07's compile"},
		{api.Job{Kind: agent.PhaseFetch, Chunks: 12, ChunksDone: 3, Peers: 1}, "fetching 3/12 chunks from 1 peer"},
		{api.Job{Kind: agent.PhaseFetch, Chunks: 12, ChunksDone: 5, Peers: 3, From: "x", FromHostname: "npu-07"},
			"fetching 5/12 chunks from 3 peers (producer npu-07)"},
	} {
		if got := jobPhase(c.j); got != c.want {
			t.Errorf("jobPhase(%+v) = %q, want %q", c.j, got, c.want)
		}
	}
}

func TestWriteJSONLine(t *testing.T) {
	t.Parallel()
	mh, err := multihash.Sum([]byte("x"), multihash.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := writeJSONLine(&b, api.Job{Kind: agent.PhaseFetch, CID: cid.NewCidV1(cid.Raw, mh), Done: 1}); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") || strings.Contains(out, `{"/"`) {
		t.Errorf("writeJSONLine printed %q: want one line, CIDs as strings", out)
	}
}
