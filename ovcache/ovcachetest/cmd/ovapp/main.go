// Command ovapp is a stand-in OpenVINO application for tests and demos (ovcachetest.App): it "compiles" one
// model for the NPU with CACHE_DIR set, loading the entry when it is usable and otherwise removing it, compiling
// and writing its own, and prints what it did as one JSON line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/ovcache/ovcachetest"
)

type props map[string]string

func (p props) String() string { return fmt.Sprint(map[string]string(p)) }

func (p props) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not KEY=VALUE", s)
	}
	p[k] = v
	return nil
}

func main() {
	app := ovcachetest.App{Properties: props{}}
	var model, ov string
	var compMajor, compMinor uint
	var seed uint
	flag.StringVar(&app.CacheDir, "cache-dir", "", "CACHE_DIR")
	flag.StringVar(&app.Build, "build", ovcachetest.Build, "this application's OpenVINO build string")
	flag.StringVar(&model, "model", "model", "the serialized model's bytes")
	flag.Var(props(app.Properties), "prop", "a caching property KEY=VALUE (repeatable)")
	flag.StringVar(&ov, "ov", "2026.1.0", "OpenVINO version in the blob's trailer")
	flag.UintVar(&compMajor, "compiler-major", 7, "compiler major version in the trailer")
	flag.UintVar(&compMinor, "compiler-minor", 4, "compiler minor version in the trailer")
	flag.IntVar(&app.PayloadSize, "payload", 1<<20, "bytes of the compiled blob's payload")
	flag.UintVar(&seed, "seed", 0, "seed of the compiled bytes (0-255)")
	flag.DurationVar(&app.CompileTime, "compile-time", 0, "how long a compile takes")
	flag.BoolVar(&app.ImportFails, "import-fails", false, "the plugin refuses every entry (as a driver that cannot import it)")
	flag.Parse()
	var v compat.OVVersion
	_, err := fmt.Sscanf(ov, "%d.%d.%d", &v.Major, &v.Minor, &v.Patch)
	if err != nil || app.CacheDir == "" || seed > 255 || compMajor > 0xffff || compMinor > 0xffff {
		fmt.Fprintln(os.Stderr, "ovapp: -cache-dir is required; -ov must be a version; -seed 0-255; compiler versions 16 bits:", err)
		os.Exit(2)
	}
	app.Model, app.Seed = []byte(model), byte(seed)
	app.Trailer = ovcachetest.Trailer(v, uint16(compMajor), uint16(compMinor))
	r, err := app.CompileModel(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "ovapp:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
