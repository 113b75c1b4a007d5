package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/compile"
)

const (
	// DefaultBodyIdleTimeout is how long a request body may send nothing before the request fails.
	DefaultBodyIdleTimeout = 30 * time.Second
	// DefaultMaxPerClient bounds the requests one client (a uid on the socket; all TCP clients together) has in
	// progress; more are answered 429 at once.
	DefaultMaxPerClient = 64
	// readHeaderTimeout bounds the request line and headers.
	readHeaderTimeout = 10 * time.Second
	// maxTokenFile bounds an API token file.
	maxTokenFile = 4 << 10
)

// peer is the client at the other end of a connection.
type peer struct {
	uid, gid uint32
	groups   []uint32
	known    bool // credentials from SO_PEERCRED; false: TCP or unknown, an anonymous caller
}

type peerKey struct{}

// connContext records the client's credentials once per connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	p, _ := peerCred(c)
	return context.WithValue(ctx, peerKey{}, p)
}

// caller is the compile.Caller model paths are opened for: the socket client's credentials, or anonymous.
func (s *Server) caller(r *http.Request) *compile.Caller {
	p, _ := r.Context().Value(peerKey{}).(peer)
	if !p.known {
		return &compile.Caller{Anonymous: true, Deny: s.deny}
	}
	return &compile.Caller{UID: p.uid, GID: p.gid, Groups: p.groups, Deny: s.deny}
}

// clientKey names the bucket of the per-client request limit.
func clientKey(r *http.Request) string {
	if p, _ := r.Context().Value(peerKey{}).(peer); p.known {
		return p.String()
	}
	return "anonymous"
}

// openOverTCP are the endpoints served on TCP without a token.
func openOverTCP(path string) bool { return path == "/metrics" || path == "/v1/healthz" }

// checkToken requires "Authorization: Bearer <token>" matching the configured token (compared in constant time,
// over digests so the length leaks nothing either).
func (s *Server) checkToken(r *http.Request) error {
	if s.opts.Token == "" {
		return fmt.Errorf("%w: only /metrics and /v1/healthz are served over TCP without api.token_file", api.ErrUnauthorized)
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	want := sha256.Sum256([]byte(s.opts.Token))
	have := sha256.Sum256([]byte(strings.TrimSpace(got)))
	if !ok || subtle.ConstantTimeCompare(want[:], have[:]) != 1 {
		return fmt.Errorf("%w: missing or wrong bearer token", api.ErrUnauthorized)
	}
	return nil
}

// ReadToken reads the API token from path: a file the daemon's group may read and others may not.
func ReadToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("api.token_file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("api.token_file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("api.token_file: %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("api.token_file: %s is accessible by others (mode %v); chmod o-rwx it", path, st.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("api.token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(b) > maxTokenFile || len(tok) < 16 || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("api.token_file: %s must hold one token of 16 to %d printable bytes", path, maxTokenFile)
	}
	return tok, nil
}

// limiter bounds the requests in progress per client.
type limiter struct {
	mu  sync.Mutex
	max int
	n   map[string]int
}

func (l *limiter) acquire(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	if l.n[key] >= l.max {
		return false
	}
	l.n[key]++
	return true
}

func (l *limiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[key]--; l.n[key] <= 0 {
		delete(l.n, key)
	}
}

// idleBody fails a request body that sends nothing for idle: each read extends the connection's read deadline.
// A stalled upload thus holds its connection (and spool file) at most idle after its last byte.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle)) // not supported (HTTP/2, tests' recorders): no deadline
	n, err := b.ReadCloser.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w: the request body sent nothing for %v", api.ErrRequestTimeout, b.idle)
	}
	return n, err
}

// checkSpace is the store's free-space guard for n more bytes in its file system (the scratch directory is on
// it), if the store has one.
func checkSpace(store any, n uint64) error {
	g, ok := store.(interface{ CheckSpace(n uint64) error })
	if !ok {
		return nil
	}
	if err := g.CheckSpace(n); err != nil {
		return fmt.Errorf("%w: %w", api.ErrNoSpace, err)
	}
	return nil
}

// spoolCheckEvery is how many bytes an upload spools between two free-space checks.
const spoolCheckEvery = 64 << 20

// spool copies r to w, checking the free-space guard before every spoolCheckEvery bytes; ctx ends it.
func spool(ctx context.Context, w io.Writer, r io.Reader, guard func(n uint64) error) (int64, error) {
	buf := make([]byte, 1<<20)
	var total, sinceCheck int64
	if err := guard(spoolCheckEvery); err != nil {
		return 0, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := r.Read(buf)
		if n > 0 {
			if sinceCheck+int64(n) > spoolCheckEvery {
				if gerr := guard(spoolCheckEvery); gerr != nil {
					return total, gerr
				}
				sinceCheck = 0
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			sinceCheck += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
