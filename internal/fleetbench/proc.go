//go:build linux

package fleetbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/npu-agent/npu-agent/internal/netlab"
)

// stopGrace is how long a stopped process gets to exit after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// proc is a started process and the channel its Wait result arrives on.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan error // receives cmd.Wait's result once
	log  *os.File
}

// start starts name in host i with stdout and stderr to logPath.
func start(ctx context.Context, lab *netlab.Lab, i int, logPath, name string, args ...string) (*proc, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("fleetbench: %w", err)
	}
	cmd := lab.Command(ctx, i, name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	// Processes are stopped explicitly; the context only ends runs that overstay the timeout.
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("fleetbench: start %s on host %d: %w", name, i, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1), log: log}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// stop ends p (SIGTERM, then SIGKILL after stopGrace) and waits for it. Its exit status is not an error: being
// stopped is how long-running servers end.
func (p *proc) stop() error {
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p.log.Close()
}

// tail returns the end of p's log, for error messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.log.Name())
	if err != nil {
		return ""
	}
	const n = 400
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// stopAll stops every process, last started first.
func stopAll(ps []*proc) error {
	var errs []error
	for i := len(ps) - 1; i >= 0; i-- {
		errs = append(errs, ps[i].stop())
	}
	return errors.Join(errs...)
}

// waitHTTP polls url (with method, HEAD for big files) from host i until ready accepts a response, p exits, or ctx ends.
func waitHTTP(ctx context.Context, lab *netlab.Lab, i int, method, url string, p *proc, ready func(*http.Response, []byte) bool) error {
	client := lab.HTTPClient(i)
	client.Timeout = 2 * time.Second
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, method, url, nil)
		if err != nil {
			return fmt.Errorf("fleetbench: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if rerr == nil && ready(resp, body) {
				return nil
			}
			last = fmt.Errorf("not ready: %s: %q", resp.Status, body)
		} else {
			last = err
		}
		select {
		case err := <-p.done:
			p.done <- err // keep it for stop
			return fmt.Errorf("fleetbench: %s exited (%v) before it was ready: %s", p.name, err, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("fleetbench: %s not ready at %s: %w (last: %v)", p.name, url, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// requireTools reports the first of the named programs that is not installed.
func requireTools(names ...string) error {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			return fmt.Errorf("fleetbench: %s not installed (scripts/bench-fleet.sh installs it): %w", n, err)
		}
	}
	return nil
}
