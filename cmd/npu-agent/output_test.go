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
