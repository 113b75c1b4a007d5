package rollout

import (
	"crypto/sha256"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

func fakeBlob(s string) string { return blobstore.DigestCID(sha256.Sum256([]byte(s))).String() }

func resolved(t *testing.T, name string, v uint64, bin string, blob string) Resolved {
	t.Helper()
	m := testManifest(t, name, v, "<net/>", bin)
	r := Resolved{Manifest: m}
	if blob != "" {
		ids, err := m.ProfileIDs()
		if err != nil {
			t.Fatal(err)
		}
		r.Blobs = map[string]string{ids[0]: fakeBlob(blob)}
	}
	return r
}

func blobSet(plan PinPlan) []string {
	var bs []string
	for _, p := range plan.Pin {
		bs = append(bs, p.Blob)
	}
	return slices.Compact(bs) // Pin is sorted by blob
}

func sourceBlobs(r Resolved) []string {
	var bs []string
	for _, f := range r.Manifest.Model.Files {
		bs = append(bs, f.Blob)
	}
	return bs
}

func TestPinSet(t *testing.T) {
	t.Parallel()
	v1 := resolved(t, "detector", 1, "A", "compiled-A")
	v2 := resolved(t, "detector", 2, "B", "compiled-B")
	v3 := resolved(t, "detector", 3, "A", "compiled-A") // rollback to A as a new version
	v4 := resolved(t, "detector", 4, "C", "")           // not compiled yet
	cam := resolved(t, "camera", 1, "B", "")            // another rollout of model B, not compiled yet
	cam.Manifest.Profiles = []compile.Profile{{Device: "NPU", Shapes: map[string][]int64{"x": {1, 3}}}}

	t.Run("rollback keeps the older model", func(t *testing.T) {
		t.Parallel()
		plan, err := PinSet([]Resolved{v1, v3, v2}) // any order
		if err != nil {
			t.Fatal(err)
		}
		if want := []Ref{{"detector", 2}, {"detector", 3}}; !reflect.DeepEqual(plan.Keep, want) {
			t.Errorf("Keep = %v, want %v", plan.Keep, want)
		}
		if want := []Ref{{"detector", 1}}; !reflect.DeepEqual(plan.Drop, want) {
			t.Errorf("Drop = %v, want %v", plan.Drop, want)
		}
		if len(plan.Release) != 0 {
			t.Errorf("Release = %v: version 3 uses every blob of version 1", plan.Release)
		}
		want := append(append(sourceBlobs(v1), sourceBlobs(v2)...), fakeBlob("compiled-A"), fakeBlob("compiled-B"))
		slices.Sort(want)
		want = slices.Compact(want) // both models have the same xml: one blob
		if got := blobSet(plan); !reflect.DeepEqual(got, want) {
			t.Errorf("pinned blobs = %v, want %v", got, want)
		}
	})

	t.Run("release what no kept version uses", func(t *testing.T) {
		t.Parallel()
		plan, err := PinSet([]Resolved{v1, v2, v3, v4, cam})
		if err != nil {
			t.Fatal(err)
		}
		if want := []Ref{{"camera", 1}, {"detector", 3}, {"detector", 4}}; !reflect.DeepEqual(plan.Keep, want) {
			t.Errorf("Keep = %v, want %v", plan.Keep, want)
		}
		// Version 2's source model stays: camera uses it. Its compiled blob goes.
		if want := []string{fakeBlob("compiled-B")}; !reflect.DeepEqual(plan.Release, want) {
			t.Errorf("Release = %v, want %v", plan.Release, want)
		}
		for _, b := range sourceBlobs(v2) {
			if !slices.Contains(blobSet(plan), b) {
				t.Errorf("source blob %s of a model camera uses is not pinned", b)
			}
		}
		var compiledA *PinnedBlob
		for i, p := range plan.Pin {
			if p.Blob == fakeBlob("compiled-A") {
				compiledA = &plan.Pin[i]
			}
		}
		if compiledA == nil || compiledA.ModelID != v3.Manifest.Model.ID || compiledA.ProfileID == "" || compiledA.Role != "" {
			t.Errorf("compiled blob pin = %+v", compiledA)
		}
	})

	t.Run("empty history", func(t *testing.T) {
		t.Parallel()
		plan, err := PinSet(nil)
		if err != nil || len(plan.Pin)+len(plan.Release)+len(plan.Keep)+len(plan.Drop) != 0 {
			t.Fatalf("PinSet(nil) = %+v, %v", plan, err)
		}
	})
}

func TestPinSetRejects(t *testing.T) {
	t.Parallel()
	v1 := resolved(t, "detector", 1, "A", "compiled-A")
	otherProfile := resolved(t, "detector", 2, "B", "")
	otherProfile.Blobs = map[string]string{fakeBlob("not a profile of this manifest"): fakeBlob("x")}
	badCID := resolved(t, "detector", 2, "B", "compiled-B")
	for id := range badCID.Blobs {
		badCID.Blobs[id] = "compiled-B"
	}
	tests := map[string][]Resolved{
		"duplicate version":   {v1, resolved(t, "detector", 1, "B", "")},
		"unknown profile":     {v1, otherProfile},
		"blob is not a CID":   {v1, badCID},
		"missing manifest":    {v1, {}},
		"invalid profile set": {{Manifest: &Manifest{Name: "x", Version: 1, Profiles: []compile.Profile{{}}}}},
	}
	for name, h := range tests {
		if _, err := PinSet(h); !errors.Is(err, ErrInvalidHistory) {
			t.Errorf("%s: err = %v, want ErrInvalidHistory", name, err)
		}
	}
}
