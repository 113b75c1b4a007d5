package ovcachetest_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
)

func TestAppBehavesAsOpenVINOsCache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	app := ovcachetest.App{CacheDir: dir, Build: ovcachetest.Build, Model: []byte("model"),
		Properties: map[string]string{"DEVICE_ARCHITECTURE": "4000"},
		Trailer:    ovcachetest.Trailer(compat.OVVersion{Major: 2026, Minor: 1}, 7, 4), PayloadSize: 5000}
	run := func(a ovcachetest.App, want ovcachetest.Result) {
		t.Helper()
		got, err := a.CompileModel(ctx)
		if err != nil || got != want {
			t.Fatalf("CompileModel = %+v, %v; want %+v", got, err, want)
		}
	}
	name := app.Name()
	if !ovcache.ValidName(name) {
		t.Fatalf("name %q is not an entry name", name)
	}
	run(app, ovcachetest.Result{Name: name, Compiled: true})
	path := filepath.Join(dir, name)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o440 {
		t.Fatalf("entry %v, %v; want mode 0440", st, err)
	}
	run(app, ovcachetest.Result{Name: name, Hit: true})

	// Every input changes the name.
	for _, a := range []ovcachetest.App{
		func() ovcachetest.App { b := app; b.Build = "2026.1.0-other"; return b }(),
		func() ovcachetest.App { b := app; b.Model = []byte("model2"); return b }(),
		func() ovcachetest.App {
			b := app
			b.Properties = map[string]string{"DEVICE_ARCHITECTURE": "5010"}
			return b
		}(),
	} {
		if a.Name() == name {
			t.Errorf("%+v has the same name as %+v", a, app)
		}
	}

	// A plugin that cannot import removes the entry and compiles.
	bad := app
	bad.ImportFails, bad.Seed = true, 9
	run(bad, ovcachetest.Result{Name: name, Removed: true, Compiled: true})

	// An entry of another build or a malformed file under the name is removed.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	other := app
	other.Build = "2026.1.0-other"
	e := ovcachetest.Entry(ovcache.Header{Build: other.Build, FileInfo: "0"}, false, ovcachetest.Blob(app.Trailer, 100, 1))
	for _, content := range [][]byte{e, []byte("garbage\n")} {
		if err := os.WriteFile(path, content, 0o640); err != nil {
			t.Fatal(err)
		}
		run(app, ovcachetest.Result{Name: name, Removed: true, Compiled: true})
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}
