//go:build linux

package netlab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// DialContext connects to address from inside host i's namespace, so the caller's own process can talk to the lab
// (a test querying an agent's API, say). The connection belongs to the host's namespace for its whole life.
func (l *Lab) DialContext(ctx context.Context, i int, network, address string) (net.Conn, error) {
	var c net.Conn
	err := l.inNS(i, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen listens on address inside host i's namespace.
func (l *Lab) Listen(ctx context.Context, i int, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := l.inNS(i, func() error {
		var err error
		var lc net.ListenConfig
		ln, err = lc.Listen(ctx, network, address)
		return err
	})
	return ln, err
}

// HTTPClient returns an HTTP client whose connections are made from inside host i's namespace.
func (l *Lab) HTTPClient(i int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.DialContext(ctx, i, network, addr)
		},
		DisableKeepAlives: true,
		Proxy:             nil, // never a proxy from the environment: lab traffic stays in the lab
	}}
}

// inNS runs fn on an OS thread switched into host i's network namespace. Sockets keep the namespace they were
// created in, so fn may create them and hand them out. The work runs on a goroutine of its own, locked to its
// thread: if switching back fails, that goroutine exits still locked and the runtime throws the thread away rather
// than reuse it in the wrong namespace.
func (l *Lab) inNS(i int, fn func() error) error {
	l.mu.Lock()
	h, err := l.host(i)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	target, err := os.Open(filepath.Join(netnsDir, h.NS))
	if err != nil {
		return fmt.Errorf("netlab: open namespace of %s: %w", h.Name, err)
	}
	defer target.Close()

	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netlab: open own namespace: %w", err)
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netlab: enter namespace of %s: %w", h.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("netlab: leave namespace of %s: %w", h.Name, err) // thread stays locked: discarded
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}
