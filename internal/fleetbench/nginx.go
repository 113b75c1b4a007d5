//go:build linux

package fleetbench

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// httpPort is where the seed's HTTP server listens.
const httpPort = 8080

// Nginx is central HTTP distribution: nginx on the seed serves the blob and every receiver downloads it at the
// same moment with curl. Receivers take nothing from each other, so the seed's uplink carries all N copies.
type Nginx struct {
	env    Env
	url    string
	server *proc
}

var _ System = (*Nginx)(nil)

// Name implements System.
func (*Nginx) Name() string { return "nginx" }

// nginxConf is a self-contained configuration: every path under the run's directory, nothing from /etc/nginx.
// Workers run as root so they can read the blob wherever the harness put it; sendfile keeps copies out of user
// space, as a production file server would.
const nginxConf = `daemon off;
master_process on;
worker_processes auto;
user root;
pid {{dir}}/nginx.pid;
error_log {{dir}}/error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	default_type application/octet-stream;
	client_body_temp_path {{dir}}/body;
	proxy_temp_path {{dir}}/proxy;
	fastcgi_temp_path {{dir}}/fastcgi;
	uwsgi_temp_path {{dir}}/uwsgi;
	scgi_temp_path {{dir}}/scgi;
	server {
		listen {{addr}};
		root {{root}};
		location / { }
	}
}
`

// Setup implements System: it starts nginx on the seed and waits until a receiver can see the blob.
func (n *Nginx) Setup(ctx context.Context, env Env) error {
	if err := requireTools("nginx", "curl"); err != nil {
		return err
	}
	n.env = env
	dir := filepath.Join(env.Dir, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	addr := netip.AddrPortFrom(env.Lab.Hosts[SeedHost].IP, httpPort).String()
	conf := strings.NewReplacer("{{dir}}", dir, "{{addr}}", addr, "{{root}}", filepath.Dir(env.Seed.Path)).Replace(nginxConf)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("fleetbench: %w", err)
	}
	var err error
	n.server, err = start(ctx, env.Lab, SeedHost, filepath.Join(dir, "stderr.log"),
		"nginx", "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return err
	}
	n.url = "http://" + addr + "/" + filepath.Base(env.Seed.Path)
	ready, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return waitHTTP(ready, env.Lab, 1, http.MethodHead, n.url, n.server, func(r *http.Response, _ []byte) bool {
		return r.StatusCode == http.StatusOK && r.ContentLength == env.Seed.Size
	})
}

// Run implements System: every receiver runs curl at once; a host is done when its curl exits successfully.
func (n *Nginx) Run(ctx context.Context) ([]HostResult, error) {
	receivers := len(n.env.Lab.Hosts) - 1
	procs := make([]*proc, 0, receivers)
	defer func() { stopAll(procs) }()
	results := make([]HostResult, receivers)
	errs := make([]error, receivers)
	dirs, err := receiverDirs(n.env)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 1; i <= receivers; i++ {
		dir := dirs[i]
		path := filepath.Join(dir, "blob")
		p, err := start(ctx, n.env.Lab, i, filepath.Join(dir, "curl.log"),
			"curl", "--silent", "--show-error", "--fail", "--noproxy", "*", "--output", path, n.url)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		wg.Go(func() {
			err := <-p.done
			p.done <- err
			results[i-1] = HostResult{Host: i, Elapsed: time.Since(t0), Path: path}
			if err != nil {
				errs[i-1] = fmt.Errorf("host %d: curl: %w: %s", i, err, strings.TrimSpace(p.tail()))
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return results, nil
}

// receiverDirs creates a directory for each receiver; dirs[i] is host i's.
func receiverDirs(env Env) ([]string, error) {
	dirs := make([]string, len(env.Lab.Hosts))
	for i := 1; i < len(dirs); i++ {
		dirs[i] = filepath.Join(env.Dir, "h"+strconv.Itoa(i))
		if err := os.MkdirAll(dirs[i], 0o755); err != nil {
			return nil, fmt.Errorf("fleetbench: %w", err)
		}
	}
	return dirs, nil
}

// Close implements System.
func (n *Nginx) Close() error { return n.server.stop() }
