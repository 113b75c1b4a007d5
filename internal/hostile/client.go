//go:build linux

// The client side: local API clients that do what an attacker would, against real daemons.
package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// maxAnswer bounds how much of an answer a hostile client reads: enough to see leaked bytes, never unbounded.
const maxAnswer = 1 << 20

// Client is a local API client that sends what an honest one would not. Exactly one of Socket and TCP is set.
type Client struct {
	Socket string // the daemon's unix socket
	TCP    string // the daemon's loopback api.tcp address
	Token  string // sent as a bearer token when set
}

// Answer is what the daemon answered.
type Answer struct {
	Status  int
	Code    string // the error body's code, "" on success
	Body    []byte // at most 1 MiB
	Elapsed time.Duration
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	if c.Socket != "" {
		return d.DialContext(ctx, "unix", c.Socket)
	}
	return d.DialContext(ctx, "tcp", c.TCP)
}

func (c *Client) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dial(ctx) },
		DisableKeepAlives: true,
	}}
}

func (c *Client) host() string {
	if c.TCP != "" {
		return c.TCP
	}
	return "npu-agent"
}

// Do sends one request and reads at most 1 MiB of the answer.
func (c *Client) Do(ctx context.Context, method, path, contentType string, body io.Reader) (Answer, error) {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.host()+path, body)
	if err != nil {
		return Answer{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.httpClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return Answer{Elapsed: time.Since(start)}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	a := Answer{Status: resp.StatusCode, Body: b, Elapsed: time.Since(start)}
	if resp.StatusCode/100 != 2 {
		var eb struct{ Code string }
		_ = json.Unmarshal(b, &eb)
		a.Code = eb.Code
	}
	return a, nil
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

// Ensure asks the daemon to ensure a blob of the model at path.
func (c *Client) Ensure(ctx context.Context, path string) (Answer, error) {
	return c.Do(ctx, http.MethodPost, "/v1/ensure", "application/json",
		jsonBody(map[string]any{"model": path, "profile": map[string]any{"device": "NPU"}}))
}

// AddSource asks the daemon to store the model at path as rollout source blobs (the read-through-the-agent
// attack: the stored blob would be served to anyone).
func (c *Client) AddSource(ctx context.Context, path string) (Answer, error) {
	return c.Do(ctx, http.MethodPost, "/v1/rollouts/sources", "application/json", jsonBody(map[string]any{"model": path}))
}

// Put uploads blob as the compiled form of the model at path.
func (c *Client) Put(ctx context.Context, path string, blob io.Reader) (Answer, error) {
	q := url.Values{"model": {path}, "profile": {`{"device":"NPU"}`}}
	return c.Do(ctx, http.MethodPost, "/v1/blobs?"+q.Encode(), "application/octet-stream", blob)
}

// SymlinkModel makes dir/<name>.xml and dir/<name>.bin symlinks to target (or dir/<name>.onnx when onnx): a
// model path that leads to a file the attacker wants the daemon to read.
func SymlinkModel(dir, name, target string, onnx bool) (string, error) {
	if onnx {
		p := filepath.Join(dir, name+".onnx")
		return p, os.Symlink(target, p)
	}
	p := filepath.Join(dir, name+".xml")
	if err := os.Symlink(target, p); err != nil {
		return "", err
	}
	return p, os.Symlink(target, filepath.Join(dir, name+".bin"))
}

// FIFOModel makes dir/<name>.onnx a FIFO nobody writes to: a reader that blocks on it blocks forever.
func FIFOModel(dir, name string) (string, error) {
	p := filepath.Join(dir, name+".onnx")
	return p, syscall.Mkfifo(p, 0o666)
}

// StalledUpload opens a connection and sends the headers of an upload of size bytes plus the first sent bytes
// of its body, then nothing more (slow loris). The caller closes the connection.
func (c *Client) StalledUpload(ctx context.Context, model string, size int64, sent int) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	q := url.Values{"model": {model}, "profile": {`{"device":"NPU"}`}}
	head := "POST /v1/blobs?" + q.Encode() + " HTTP/1.1\r\nHost: " + c.host() + "\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Length: " + strconv.FormatInt(size, 10) + "\r\n"
	if c.Token != "" {
		head += "Authorization: Bearer " + c.Token + "\r\n"
	}
	if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := conn.Write(make([]byte, sent)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// StalledHeaders opens a connection and sends half a request line, then nothing.
func (c *Client) StalledHeaders(ctx context.Context) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(conn, "POST /v1/blobs HTTP/1.1\r\nHost: npu"); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// WaitClosed waits up to limit for the daemon to close conn (a read ends) and returns how long that took.
func WaitClosed(conn net.Conn, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := conn.SetReadDeadline(start.Add(limit)); err != nil {
		return 0, err
	}
	buf := make([]byte, 4096)
	for i := 0; i < 1024; i++ { // an error answer is a few hundred bytes
		_, err := conn.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return time.Since(start), fmt.Errorf("connection still open after %v", limit)
		}
		return time.Since(start), nil
	}
	return time.Since(start), errors.New("the daemon keeps sending")
}

// ZeroReader is an endless body of zeros (an oversized upload without a Content-Length). N is atomic: the HTTP
// client may still be reading the body when a server answers early (413) and the test reads N.
type ZeroReader struct{ N atomic.Int64 }

func (z *ZeroReader) Read(p []byte) (int, error) {
	clear(p)
	z.N.Add(int64(len(p)))
	return len(p), nil
}
