//go:build linux

package fleetbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/internal/e2e"
	"github.com/npu-agent/npu-agent/internal/netlab"
)

func requireLab(t *testing.T) {
	t.Helper()
	if err := netlab.Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("netlab must run in CI: %v", err)
		}
		t.Skip(err)
	}
}

// goHTTP is a System built from Go's HTTP server and client, to test the harness without external programs.
// fault makes it misbehave the way a broken system would.
type goHTTP struct {
	fault string // "", "corrupt", "drop"
	env   Env
	srv   *http.Server
	url   string
}

func (g *goHTTP) Name() string { return "gohttp" + g.fault }

func (g *goHTTP) Setup(ctx context.Context, env Env) error {
	g.env = env
	ln, err := env.Lab.Listen(ctx, SeedHost, "tcp", netip.AddrPortFrom(env.Lab.Hosts[SeedHost].IP, 0).String())
	if err != nil {
		return err
	}
	g.srv = &http.Server{Handler: http.FileServer(http.Dir(filepath.Dir(env.Seed.Path))), ReadHeaderTimeout: 5 * time.Second}
	go g.srv.Serve(ln)
	g.url = "http://" + ln.Addr().String() + "/" + filepath.Base(env.Seed.Path)
	return nil
}

func (g *goHTTP) Run(ctx context.Context) ([]HostResult, error) {
	dirs, err := receiverDirs(g.env)
	if err != nil {
		return nil, err
	}
	results := make([]HostResult, len(dirs)-1)
	errs := make([]error, len(dirs)-1)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 1; i < len(dirs); i++ {
		wg.Go(func() {
			path := filepath.Join(dirs[i], "blob")
			errs[i-1] = g.fetch(ctx, i, path)
			results[i-1] = HostResult{Host: i, Elapsed: time.Since(t0), Path: path}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if g.fault == "drop" {
		results = results[1:]
	}
	return results, nil
}

func (g *goHTTP) fetch(ctx context.Context, i int, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.url, nil)
	if err != nil {
		return err
	}
	resp, err := g.env.Lab.HTTPClient(i).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("host %d: %s", i, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, io.LimitReader(resp.Body, g.env.Seed.Size))
	if err == nil && g.fault == "corrupt" && i == 1 {
		_, err = f.WriteAt([]byte{'!'}, 0)
	}
	return errors.Join(err, f.Close())
}

func (g *goHTTP) Close() error {
	if g.srv == nil {
		return nil
	}
	return g.srv.Close()
}

func TestRunVerifiesEveryCopy(t *testing.T) {
	t.Parallel()
	requireLab(t)
	cfg := Config{Hosts: 3, Size: 1<<20 + 3, Rate: "200mbit", Dir: t.TempDir(), Timeout: time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	results, err := Run(ctx, cfg, []System{&goHTTP{}, &goHTTP{fault: "corrupt"}, &goHTTP{fault: "drop"}}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 3 {
		t.Fatalf("%d results, want 3", len(results))
	}
	good := results[0]
	if good.Err != nil {
		t.Fatalf("good system failed: %v", good.Err)
	}
	if len(good.Hosts) != 2 || good.Last <= 0 || good.Median > good.Last || good.Bound <= 0 {
		t.Errorf("good result = %+v", good)
	}
	// Two receivers share the seed's 200 Mbit/s uplink: the copies cannot all arrive faster than the bound.
	if good.Last < good.Bound {
		t.Errorf("last host %v beat the lower bound %v", good.Last, good.Bound)
	}
	if !errors.Is(results[1].Err, ErrVerify) {
		t.Errorf("corrupting system: %v, want ErrVerify", results[1].Err)
	}
	if !errors.Is(results[2].Err, ErrIncomplete) {
		t.Errorf("dropping system: %v, want ErrIncomplete", results[2].Err)
	}
	// Each system's directory is removed after its run; the seed stays for the caller to remove.
	for _, r := range results {
		if _, err := os.Stat(filepath.Join(cfg.Dir, r.System)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s directory left: %v", r.System, err)
		}
	}
}

// TestRealSystems runs npu-agent (built from this repository), nginx and aria2 (plain and encrypted) on a small
// fleet; nginx and aria2 only when their programs are installed (scripts/bench-fleet.sh installs them).
func TestRealSystems(t *testing.T) {
	t.Parallel()
	requireLab(t)
	aria2Tools := []string{"aria2c", "opentracker", "mktorrent"}
	for _, s := range []System{&NPUAgent{}, &Nginx{}, &Aria2{}, &Aria2{Encrypt: true}} {
		t.Run(s.Name(), func(t *testing.T) {
			t.Parallel()
			tools := map[string][]string{"nginx": {"nginx", "curl"}, "aria2": aria2Tools, "aria2-mse": aria2Tools}[s.Name()]
			if err := requireTools(tools...); err != nil {
				t.Skip(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if a, ok := s.(*NPUAgent); ok {
				bin, err := e2e.Build(ctx, t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				a.Binary = bin
			}
			cfg := Config{Hosts: 4, Size: 4 << 20, Rate: "200mbit", Dir: t.TempDir(), Timeout: 2 * time.Minute}
			results, err := Run(ctx, cfg, []System{s}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			r := results[0]
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			if len(r.Hosts) != 3 || r.Last < r.Bound {
				t.Errorf("result = %+v", r)
			}
			for _, h := range r.Hosts {
				t.Logf("host %d: %v", h.Host, h.Elapsed)
			}
		})
	}
}

// TestAria2Encrypt: the encrypted variant is its own system and makes every aria2c require RC4 stream
// encryption; the plain one asks for none.
func TestAria2Encrypt(t *testing.T) {
	t.Parallel()
	crypto := []string{"--bt-require-crypto=true", "--bt-min-crypto-level=arc4"}
	for _, tc := range []struct {
		a    *Aria2
		name string
		want bool
	}{
		{&Aria2{}, "aria2", false},
		{&Aria2{Encrypt: true}, "aria2-mse", true},
	} {
		if got := tc.a.Name(); got != tc.name {
			t.Errorf("Name() = %q, want %q", got, tc.name)
		}
		args := strings.Join(tc.a.args(), " ")
		for _, c := range crypto {
			if strings.Contains(args, c) != tc.want {
				t.Errorf("%s: %s in args = %v, want %v", tc.name, c, !tc.want, tc.want)
			}
		}
		if strings.Contains(args, "crypto") && !tc.want {
			t.Errorf("%s: args ask for encryption: %s", tc.name, args)
		}
	}
}
