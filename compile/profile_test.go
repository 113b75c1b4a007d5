package compile

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestProfileCanonical(t *testing.T) {
	t.Parallel()
	base := Profile{
		Device:     "NPU",
		Properties: map[string]string{"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "YES"},
		Shapes:     map[string][]int64{"input": {1, 3, 224, 224}},
	}
	baseID, err := base.ID()
	if err != nil {
		t.Fatal(err)
	}
	same := []struct {
		name string
		p    Profile
	}{
		{"spelling", Profile{
			Device:     " npu ",
			Properties: map[string]string{" performance_hint ": " LATENCY ", "npu_turbo": "true"},
			Shapes:     map[string][]int64{" input ": {1, 3, 224, 224}},
		}},
		{"runtime-only dropped", Profile{
			Device: "NPU",
			Properties: map[string]string{"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "Yes", "CACHE_DIR": "/tmp/x",
				"LOG_LEVEL": "LOG_DEBUG", "DEVICE_ID": "0"},
			Shapes: map[string][]int64{"input": {1, 3, 224, 224}},
		}},
		{"case duplicates agree", Profile{
			Device:     "NPU",
			Properties: map[string]string{"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "YES", "npu_turbo": "TRUE"},
			Shapes:     map[string][]int64{"input": {1, 3, 224, 224}},
		}},
	}
	for _, tc := range same {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, err := tc.p.ID()
			if err != nil {
				t.Fatal(err)
			}
			if id != baseID {
				a, _ := base.CanonicalJSON()
				b, _ := tc.p.CanonicalJSON()
				t.Fatalf("ID %s != %s\n%s\n%s", id, baseID, a, b)
			}
		})
	}
	different := []struct {
		name string
		p    Profile
	}{
		{"shape", Profile{Device: "NPU", Properties: base.Properties, Shapes: map[string][]int64{"input": {1, 3, 256, 256}}}},
		{"boolean", Profile{Device: "NPU", Properties: map[string]string{"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "NO"}, Shapes: base.Shapes}},
		{"unknown key kept", Profile{Device: "NPU", Properties: map[string]string{"PERFORMANCE_HINT": "LATENCY", "NPU_TURBO": "YES", "NPU_SOMETHING_NEW": "1"}, Shapes: base.Shapes}},
		{"value case", Profile{Device: "NPU", Properties: map[string]string{"PERFORMANCE_HINT": "latency", "NPU_TURBO": "YES"}, Shapes: base.Shapes}},
		{"kind", Profile{Device: "NPU", Properties: base.Properties, Shapes: base.Shapes, Kind: "llm"}},
		{"device", Profile{Device: "NPU.1", Properties: base.Properties, Shapes: base.Shapes}},
	}
	for _, tc := range different {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, err := tc.p.ID()
			if err != nil {
				t.Fatal(err)
			}
			if id == baseID {
				t.Fatalf("same ID %s", id)
			}
		})
	}
}

func TestProfileCanonicalJSONGolden(t *testing.T) {
	t.Parallel()
	p := Profile{Device: "npu", Properties: map[string]string{"b": "no", "A": "x"}, Shapes: map[string][]int64{"y": {2}, "x": {1, 3}}}
	b, err := p.CanonicalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"device":"NPU","properties":{"A":"x","B":"NO"},"shapes":{"x":[1,3],"y":[2]}}`
	if string(b) != want {
		t.Fatalf("canonical JSON\n got %s\nwant %s", b, want)
	}
	id, _ := p.ID()
	if id != rawCID([]byte(want)) {
		t.Fatalf("ID %s does not hash the canonical JSON", id)
	}
	min, _ := Profile{Device: "NPU"}.CanonicalJSON()
	if string(min) != `{"device":"NPU"}` {
		t.Fatalf("minimal profile = %s", min)
	}
}

func TestProfileInvalid(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", maxNameLen+1)
	tests := []struct {
		name string
		p    Profile
		want string
	}{
		{"no device", Profile{}, "device is empty"},
		{"dynamic dim", Profile{Device: "NPU", Shapes: map[string][]int64{"x": {1, -1}}}, "not static"},
		{"zero dim", Profile{Device: "NPU", Shapes: map[string][]int64{"x": {0}}}, "not static"},
		{"huge dim", Profile{Device: "NPU", Shapes: map[string][]int64{"x": {1 << 40}}}, "not static"},
		{"rank 0", Profile{Device: "NPU", Shapes: map[string][]int64{"x": {}}}, "rank 0"},
		{"rank 17", Profile{Device: "NPU", Shapes: map[string][]int64{"x": make([]int64, 17)}}, "rank 17"},
		{"empty input name", Profile{Device: "NPU", Shapes: map[string][]int64{" ": {1}}}, "empty input name"},
		{"duplicate input", Profile{Device: "NPU", Shapes: map[string][]int64{"x": {1}, " x": {2}}}, "given twice"},
		{"empty key", Profile{Device: "NPU", Properties: map[string]string{" ": "1"}}, "empty property key"},
		{"conflict", Profile{Device: "NPU", Properties: map[string]string{"a": "1", "A": "2"}}, "different values"},
		{"control char", Profile{Device: "NPU", Properties: map[string]string{"A": "1\x00"}}, "control"},
		{"long key", Profile{Device: "NPU", Properties: map[string]string{long: "1"}}, "at most"},
		{"long value", Profile{Device: "NPU", Properties: map[string]string{"A": strings.Repeat("v", maxValueLen+1)}}, "at most"},
		{"kind", Profile{Device: "NPU", Kind: "diffusion"}, "kind"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := tc.p.ID()
			if !errors.Is(err, ErrInvalidProfile) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidProfile containing %q", err, tc.want)
			}
		})
	}
}

func TestParseShape(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		name string
		dims []int64
		ok   bool
	}{
		{"input=1,3,224,224", "input", []int64{1, 3, 224, 224}, true},
		{" input_ids = [1, 128] ", "input_ids", []int64{1, 128}, true},
		{"a=b=4", "a=b", []int64{4}, true},
		{"x=1,-1", "", nil, false},
		{"x=1,?", "", nil, false},
		{"x=", "", nil, false},
		{"x=[]", "", nil, false},
		{"=1", "", nil, false},
		{"1,2,3", "", nil, false},
		{"x=1,,2", "", nil, false},
		{"x=0", "", nil, false},
	}
	for _, tc := range tests {
		name, dims, err := ParseShape(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("ParseShape(%q) err = %v", tc.in, err)
			continue
		}
		if !tc.ok {
			if !errors.Is(err, ErrInvalidProfile) {
				t.Errorf("ParseShape(%q) err = %v, want ErrInvalidProfile", tc.in, err)
			}
			continue
		}
		if name != tc.name || !reflect.DeepEqual(dims, tc.dims) {
			t.Errorf("ParseShape(%q) = %q %v, want %q %v", tc.in, name, dims, tc.name, tc.dims)
		}
	}
}

func TestParseProperty(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, k, v string }{
		{"PERFORMANCE_HINT=LATENCY", "PERFORMANCE_HINT", "LATENCY"},
		{"npu_turbo=true", "NPU_TURBO", "YES"},
		{" perf_count = False ", "PERF_COUNT", "NO"},
		{"NPU_COMPILATION_MODE_PARAMS=a=b c=d", "NPU_COMPILATION_MODE_PARAMS", "a=b c=d"},
		{"EMPTY=", "EMPTY", ""},
	}
	for _, tc := range tests {
		k, v, err := ParseProperty(tc.in)
		if err != nil || k != tc.k || v != tc.v {
			t.Errorf("ParseProperty(%q) = %q %q %v, want %q %q", tc.in, k, v, err, tc.k, tc.v)
		}
	}
	for _, in := range []string{"NOEQUALS", "=x", " =x"} {
		if _, _, err := ParseProperty(in); !errors.Is(err, ErrInvalidProfile) {
			t.Errorf("ParseProperty(%q) err = %v, want ErrInvalidProfile", in, err)
		}
	}
}

func TestLoadProfile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	want := Profile{
		Device:     "NPU",
		Properties: map[string]string{"NPU_TURBO": "YES", "NPU_TILES": "2", "PERFORMANCE_HINT": "LATENCY"},
		Shapes:     map[string][]int64{"input": {1, 3, 224, 224}},
	}
	good := map[string]string{
		"p.json": `{"device":"npu","properties":{"npu_turbo":true,"NPU_TILES":2,"PERFORMANCE_HINT":"LATENCY"},"shapes":{"input":[1,3,224,224]}}`,
		"p.yaml": "device: npu\nproperties:\n  npu_turbo: yes\n  NPU_TILES: 2\n  PERFORMANCE_HINT: LATENCY\n  CACHE_DIR: /var/cache\nshapes:\n  input: [1, 3, 224, 224]\n",
		"p.yml":  "device: NPU\nproperties: {NPU_TURBO: 'true', NPU_TILES: '2', PERFORMANCE_HINT: LATENCY}\nshapes: {input: [1, 3, 224, 224]}\n",
		"p.conf": ` {"device":"NPU","properties":{"NPU_TURBO":"YES","NPU_TILES":"2","PERFORMANCE_HINT":"LATENCY"},"shapes":{"input":[1,3,224,224]}}`,
	}
	for name, content := range good {
		p, err := LoadProfile(writeFile(t, filepath.Join(dir, name), content))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("%s: got %+v, want %+v", name, p, want)
		}
	}
	bad := map[string]string{
		"unknown.json":  `{"device":"NPU","devcie":"NPU"}`,
		"unknown.yaml":  "device: NPU\nshape: {x: [1]}\n",
		"trailing.json": `{"device":"NPU"} {}`,
		"twodocs.yaml":  "device: NPU\n---\ndevice: NPU\n",
		"empty.yaml":    "",
		"nested.json":   `{"device":"NPU","properties":{"A":{"b":1}}}`,
		"nested.yaml":   "device: NPU\nproperties:\n  A: [1]\n",
		"dynamic.yaml":  "device: NPU\nshapes: {x: [1, -1]}\n",
		"huge.json":     `{"device":"NPU","properties":{"A":"` + strings.Repeat("x", MaxProfileFileSize) + `"}}`,
		"nulls.json":    `null`,
	}
	for name, content := range bad {
		_, err := LoadProfile(writeFile(t, filepath.Join(dir, name), content))
		if !errors.Is(err, ErrInvalidProfile) {
			t.Errorf("%s: err = %v, want ErrInvalidProfile", name, err)
		}
	}
	if _, err := LoadProfile(filepath.Join(dir, "missing.json")); !errors.Is(err, ErrInvalidProfile) {
		t.Errorf("missing file: err = %v", err)
	}
}

// FuzzDecodeProfile: any document either fails cleanly or yields a canonical profile that is a fixed point.
func FuzzDecodeProfile(f *testing.F) {
	f.Add([]byte(`{"device":"npu","properties":{"npu_turbo":true,"NPU_TILES":2},"shapes":{"input":[1,3,224,224]}}`), true)
	f.Add([]byte("device: npu\nproperties:\n  npu_turbo: yes\nshapes:\n  input: [1, 3, 224, 224]\nkind: llm\n"), false)
	f.Add([]byte(`{"device":"NPU","shapes":{"x":[1,-1]}}`), true)
	f.Add([]byte("device: NPU\nproperties: &a {A: *a}\n"), false)
	f.Add([]byte(`{"device":"NPU","properties":{"a":"1","A":"2"}}`), true)
	f.Fuzz(func(t *testing.T, b []byte, isJSON bool) {
		p, err := DecodeProfile(b, isJSON)
		if err != nil {
			if !errors.Is(err, ErrInvalidProfile) {
				t.Fatalf("error without ErrInvalidProfile: %v", err)
			}
			return
		}
		c, err := p.Canonical()
		if err != nil {
			t.Fatalf("canonical profile does not canonicalise: %v", err)
		}
		if !reflect.DeepEqual(c, p) {
			t.Fatalf("canonical form is not a fixed point: %+v -> %+v", p, c)
		}
		j, err := p.CanonicalJSON()
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeProfile(j, true)
		if err != nil {
			t.Fatalf("canonical JSON %s does not decode: %v", j, err)
		}
		if !reflect.DeepEqual(back, p) {
			t.Fatalf("round trip changed the profile: %+v -> %+v", p, back)
		}
	})
}

func FuzzParseShape(f *testing.F) {
	for _, s := range []string{"input=1,3,224,224", "a=b=[4]", "x=1,-1", "x=", " y = [ 2 , 3 ] "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, dims, err := ParseShape(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidProfile) {
				t.Fatalf("error without ErrInvalidProfile: %v", err)
			}
			return
		}
		p := Profile{Device: "NPU", Shapes: map[string][]int64{name: dims}}
		c, err := p.Canonical()
		if err != nil {
			t.Fatalf("parsed shape %q %v is not canonical: %v", name, dims, err)
		}
		if !reflect.DeepEqual(c.Shapes[name], dims) {
			t.Fatalf("canonical form changed %q %v", name, dims)
		}
	})
}
