package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/blobstore"
)

const (
	// dialTimeout bounds connecting to the socket: a live daemon accepts at once.
	dialTimeout = time.Second
	// availableTimeout bounds Dial's and Available's health check once the socket accepted the connection: a
	// missing or dead daemon fails at the connect, so this only waits for a live daemon that is busy (on a loaded
	// box the answer can take seconds, and working without the daemon then only meets its store lock).
	availableTimeout = 30 * time.Second
	// maxResponseJSON bounds a JSON answer; a status with a long blob list stays far below it.
	maxResponseJSON = 16 << 20
	// maxErrorBody bounds how much of an error answer is read.
	maxErrorBody = 64 << 10
	// baseURL's host is only a label: the transport always dials the socket.
	baseURL = "http://npu-agent"
)

// Client talks to a running daemon over its unix socket. Its methods mirror Agent; errors answered by the
// daemon are *Error, which errors.Is matches against the same sentinels the agent returns.
type Client struct {
	socket string // the socket path, or the TCP address of a NewTCPClient
	tr     *http.Transport
	hc     *http.Client
	token  string // sent as a bearer token when set (TCP)
	base   string // baseURL, or http://<addr> on TCP (the daemon refuses a Host that is not a loopback name)
}

// TokenFileEnv names the environment variable holding the path of the API token file (api.token_file's
// override): NewTCPClient sends its token.
const TokenFileEnv = "NPU_AGENT_API_TOKEN_FILE"

// NewTCPClient returns a client for the daemon's loopback TCP address (api.tcp). It sends the token of the file
// TokenFileEnv names, if set and readable (without a token the daemon serves only /metrics and /v1/healthz on
// TCP); SetToken overrides it.
func NewTCPClient(addr string) *Client {
	c := NewClient(addr)
	c.base = "http://" + addr
	c.tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := net.Dialer{Timeout: dialTimeout}
		return d.DialContext(ctx, "tcp", addr)
	}
	if path := os.Getenv(TokenFileEnv); path != "" {
		if tok, err := ReadTokenFile(path); err == nil {
			c.token = tok
		}
	}
	return c
}

// SetToken makes c send token as "Authorization: Bearer <token>" with every request.
func (c *Client) SetToken(token string) { c.token = token }

// ReadTokenFile reads an API token file: one line, surrounding white space ignored.
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4<<10))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// NewClient returns a client for the daemon listening on socketPath. It does not connect; see Dial.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:       4,
		IdleConnTimeout:    30 * time.Second,
		DisableCompression: true,
	}
	// No overall timeout: an Ensure may compile for an hour. Callers bound calls with ctx.
	return &Client{socket: socketPath, tr: tr, hc: &http.Client{Transport: tr}, base: baseURL}
}

// Dial returns a client once the daemon on socketPath answers a health check, or ErrNoDaemon within about two
// seconds when none does.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	c := NewClient(socketPath)
	if err := c.ping(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Available reports whether the daemon answers a health check (see availableTimeout).
func (c *Client) Available(ctx context.Context) bool { return c.ping(ctx) == nil }

// ping is ErrNoDaemon only when nothing listens on the socket; a daemon that accepted the connection and did not
// answer in time is an error of its own, so that callers do not go on without a daemon that is running.
func (c *Client) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, availableTimeout)
	defer cancel()
	if err := c.Health(ctx); err != nil {
		if errors.Is(err, ErrNoDaemon) || errors.Is(err, fs.ErrPermission) {
			return err
		}
		return fmt.Errorf("npu-agent daemon on %s is running but did not answer its health check: %w", c.socket, err)
	}
	return nil
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// Ensure asks the daemon for a compiled blob of req.Model with req.Profile; see Agent.Ensure.
func (c *Client) Ensure(ctx context.Context, req EnsureRequest) (EnsureResponse, error) {
	var resp EnsureResponse
	if err := CheckModelProfile(req.Model, req.Profile); err != nil {
		return resp, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	err = c.doJSON(ctx, http.MethodPost, "/v1/ensure", "application/json", bytes.NewReader(body), &resp)
	return resp, err
}

// Blob streams a stored blob from the daemon. The caller closes the reader; a body cut short reads as an error.
func (c *Client) Blob(ctx context.Context, id cid.Cid) (blobstore.Reader, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/blobs/"+id.String(), "", nil)
	if err != nil {
		return nil, err
	}
	etag := `"` + id.String() + `"`
	if got := resp.Header.Get("ETag"); got != etag || resp.ContentLength < 0 {
		resp.Body.Close()
		return nil, fmt.Errorf("npu-agent daemon: unexpected answer for blob %s (ETag %q, length %d)", id, got, resp.ContentLength)
	}
	return &blobBody{body: resp.Body, size: uint64(resp.ContentLength)}, nil
}

// Put uploads a blob compiled elsewhere for req.Model and req.Profile; see Agent.PutBlob.
func (c *Client) Put(ctx context.Context, req PutRequest, blob io.Reader) (EnsureResponse, error) {
	var resp EnsureResponse
	if err := CheckModelProfile(req.Model, req.Profile); err != nil {
		return resp, err
	}
	profile, err := json.Marshal(req.Profile)
	if err != nil {
		return resp, err
	}
	q := url.Values{"model": {req.Model}, "profile": {string(profile)}}
	err = c.doJSON(ctx, http.MethodPost, "/v1/blobs?"+q.Encode(), "application/octet-stream", blob, &resp)
	return resp, err
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.doJSON(ctx, http.MethodGet, "/v1/status", "", nil, &st)
	return st, err
}

// Jobs returns the daemon's jobs in progress (GET /v1/jobs). A daemon older than the endpoint answers 404
// no_such_endpoint; Status has the same jobs.
func (c *Client) Jobs(ctx context.Context) ([]Job, error) {
	var r JobsResponse
	err := c.doJSON(ctx, http.MethodGet, "/v1/jobs", "", nil, &r)
	return r.Jobs, err
}

// Health returns nil when the daemon answers its health check.
func (c *Client) Health(ctx context.Context) error {
	var h Health
	if err := c.doJSON(ctx, http.MethodGet, "/v1/healthz", "", nil, &h); err != nil {
		return err
	}
	if h.Status != "ok" {
		return fmt.Errorf("npu-agent daemon: health %q", h.Status)
	}
	return nil
}

func (c *Client) doJSON(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	resp, err := c.do(ctx, method, path, contentType, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxResponseJSON))
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("npu-agent daemon: decoding answer to %s %s: %w", method, path, err)
	}
	return nil
}

// do sends a request and returns a 2xx response; other statuses become *Error.
func (c *Client) do(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" && errors.Is(op.Err, fs.ErrPermission) {
			// The socket is there but not ours to use: that is not "no daemon" (and no reason to work without it).
			return nil, fmt.Errorf("cannot use the daemon's socket %s: %w (users of the API must be in the socket's group: "+
				"sudo usermod -aG npu-agent $USER, then log in again)", c.socket, op.Err)
		}
		if errors.As(err, &op) && op.Op == "dial" && !op.Timeout() {
			return nil, fmt.Errorf("%w on %s: %w", ErrNoDaemon, c.socket, op.Err)
		}
		// A connect that timed out found a listener with its backlog full: a busy daemon, not a missing one.
		return nil, fmt.Errorf("npu-agent daemon: %w", err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var eb ErrorBody
	if json.Unmarshal(raw, &eb) != nil || eb.Code == "" {
		eb = ErrorBody{Code: CodeInternal, Error: fmt.Sprintf("%s: %.200q", resp.Status, raw)}
	}
	return nil, &Error{Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
}

// blobBody is a blob streamed from the daemon.
type blobBody struct {
	body io.ReadCloser
	size uint64
}

var _ blobstore.Reader = (*blobBody)(nil)

func (b *blobBody) Read(p []byte) (int, error) { return b.body.Read(p) }
func (b *blobBody) Close() error               { return b.body.Close() }
func (b *blobBody) Size() uint64               { return b.size }

// WriteTo copies the rest of the blob to w. net/http reports a body shorter than its Content-Length as
// io.ErrUnexpectedEOF.
func (b *blobBody) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, b.body)
}
