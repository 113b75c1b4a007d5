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
