// Package server is the daemon's local HTTP API server: it serves an api.Agent and api.Rollouts on a unix socket
// and optionally a loopback TCP address, answering errors through api's error table. Service adapts an
// *agent.Agent to api.Agent. Endpoints and wire formats are described in docs/operations.md.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/compile"
)

const (
	// MaxJSONBody bounds a JSON request body; a real one is a few hundred bytes.
	MaxJSONBody = 1 << 20
	// maxHeaderBytes bounds request headers and the URL (which carries the profile of an upload).
	maxHeaderBytes = 64 << 10
	// shutdownGrace is how long handlers get to answer once in-flight requests are cancelled.
	shutdownGrace = 10 * time.Second
	// maxSocketPath is sun_path's size on Linux minus its terminating NUL.
	maxSocketPath = 107

	// SocketMode and SocketDirMode are the permissions of the socket and of a directory ListenUnix creates:
	// the daemon's user and group (add local users to the group to let them use the API).
	SocketMode    fs.FileMode = 0o660
	SocketDirMode fs.FileMode = 0o750
)

// ErrDaemonRunning reports that another daemon answers on the socket.
var ErrDaemonRunning = errors.New("another daemon is listening")

// Options configures a Server.
type Options struct {
	Socket   string              // unix socket path; "" for none
	TCP      string              // loopback host:port; "" for none
	Gatherer prometheus.Gatherer // served on /metrics; nil: /metrics answers 404
	Logger   *slog.Logger        // nil: slog.Default()
	Rollouts api.Rollouts        // nil: the rollout endpoints answer ErrRolloutsDisabled

	// Token, when set, opens the whole API to TCP clients that send "Authorization: Bearer <Token>"; without it
	// TCP serves only /metrics and /v1/healthz (ReadToken reads api.token_file).
	Token string
	// Deny lists the daemon's own paths (data and runtime directories, config, key files): no client's model path
	// may lead into them, whatever the client's rights (compile.Caller).
	Deny []string
	// MaxUpload bounds a POST /v1/blobs body; 0 means blobstore.MaxBlobSize.
	MaxUpload int64
	// BodyIdleTimeout fails a request whose body sends nothing this long; 0 means DefaultBodyIdleTimeout.
	BodyIdleTimeout time.Duration
	// MaxPerClient bounds each client's requests in progress; 0 means DefaultMaxPerClient.
	MaxPerClient int
}

// Server serves an Agent over HTTP.
type Server struct {
	agent api.Agent
	opts  Options
	log   *slog.Logger
	mux   *http.ServeMux
	deny  []string // opts.Deny, symlinks resolved
	limit limiter
}

// NewServer returns a server for a; Run or Serve starts it.
func NewServer(a api.Agent, opts Options) *Server {
	s := &Server{agent: a, opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.opts.MaxUpload <= 0 || s.opts.MaxUpload > blobstore.MaxBlobSize {
		s.opts.MaxUpload = blobstore.MaxBlobSize
	}
	if s.opts.BodyIdleTimeout <= 0 {
		s.opts.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if s.opts.MaxPerClient <= 0 {
		s.opts.MaxPerClient = DefaultMaxPerClient
	}
	s.limit.max = s.opts.MaxPerClient
	s.deny = compile.ResolveDeny(s.opts.Deny...)
	s.mux.HandleFunc("POST /v1/ensure", s.handleEnsure)
	s.mux.HandleFunc("GET /v1/blobs/{cid}", s.handleGetBlob)
	s.mux.HandleFunc("POST /v1/blobs", s.handlePutBlob)
	s.mux.HandleFunc("GET /v1/status", s.handleStatus)
	s.mux.HandleFunc("GET /v1/jobs", s.handleJobs)
	s.mux.HandleFunc("GET /v1/healthz", s.handleHealth)
	s.mux.HandleFunc("POST /v1/rollouts/sources", s.handleAddSource)
	s.mux.HandleFunc("POST /v1/rollouts", s.handlePublishRollout)
	s.mux.HandleFunc("GET /v1/rollouts", s.handleListRollouts)
	s.mux.HandleFunc("GET /v1/rollouts/{name}", s.handleGetRollout)
	s.mux.HandleFunc("GET /v1/store/blobs", s.handleStoreBlobs) // store.go
	s.mux.HandleFunc("POST /v1/store/gc", s.handleStoreGC)
	s.mux.HandleFunc("POST /v1/store/verify", s.handleStoreVerify)
	s.mux.HandleFunc("POST /v1/store/pin", s.handleStorePin)
	s.mux.HandleFunc("POST /v1/store/rm", s.handleStoreRemove)
	s.mux.HandleFunc("GET /v1/cache/entries", s.handleCacheEntries) // cache.go
	s.mux.HandleFunc("POST /v1/cache/prune", s.handleCachePrune)
	if opts.Gatherer != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{
			ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
			ErrorHandling: promhttp.ContinueOnError,
		}))
	}
	s.mux.HandleFunc("/", s.handleUnknown)
	return s
}

// Handler returns the API's handler (tests, or embedding in another server).
func (s *Server) Handler() http.Handler { return s }

// ServeHTTP guards TCP requests against browsers and requires the token there, bounds each client's requests
// in progress and each body's idle time, opens model paths with the client's rights only (compile.Caller) and
// logs each request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	defer s.logRequest(r, rec, start)
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && la.Network() == "tcp" {
		if err := checkLoopbackRequest(r); err != nil {
			s.fail(rec, r, err)
			return
		}
		if !openOverTCP(r.URL.Path) {
			if err := s.checkToken(r); err != nil {
				s.fail(rec, r, err)
				return
			}
		}
	}
	key := clientKey(r)
	if !s.limit.acquire(key) {
		w.Header().Set("Connection", "close")
		s.fail(rec, r, fmt.Errorf("%w (at most %d)", api.ErrBusy, s.opts.MaxPerClient))
		return
	}
	defer s.limit.release(key)
	r = r.WithContext(compile.WithCaller(r.Context(), s.caller(r)))
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: s.opts.BodyIdleTimeout}
	}
	s.mux.ServeHTTP(rec, r)
}

func (s *Server) logRequest(r *http.Request, rec *statusRecorder, start time.Time) {
	level := slog.LevelDebug
	if rec.status >= 500 {
		level = slog.LevelWarn
	}
	s.log.Log(r.Context(), level, "api request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
		"bytes", rec.bytes, "duration", time.Since(start))
}

// Run listens on the configured socket and TCP address and serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	if s.opts.Socket != "" {
		ln, err := ListenUnix(s.opts.Socket)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	if s.opts.TCP != "" {
		ln, err := ListenTCP(s.opts.TCP)
		if err != nil {
			closeAll()
			return err
		}
		lns = append(lns, ln)
	}
	if len(lns) == 0 {
		return errors.New("api: neither a socket nor a TCP address to listen on")
	}
	return s.Serve(ctx, lns...)
}

// Serve serves on lns until ctx is done, then cancels in-flight requests, lets them answer and closes lns
// (which removes a unix socket file). It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context, lns ...net.Listener) error {
	// Requests live under their own context so that shutdown can tell them why they were cancelled.
	base, stop := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stop(nil)
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ConnContext:       connContext,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		s.log.Info("api listening", "network", ln.Addr().Network(), "addr", ln.Addr().String())
		go func() { errc <- srv.Serve(ln) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("api: %w", err)
	}
	stop(api.ErrShuttingDown)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		srv.Close()
	}
	return err
}

// ListenUnix listens on a unix socket at path with mode SocketMode, creating its directory with SocketDirMode
// if it does not exist. A socket file left by a dead daemon is replaced; a live one is ErrDaemonRunning.
func ListenUnix(path string) (net.Listener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("api: socket path %s is longer than %d bytes", path, maxSocketPath)
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, SocketDirMode); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
		if err := os.Chmod(dir, SocketDirMode); err != nil { // MkdirAll's mode is subject to the umask
			return nil, fmt.Errorf("api: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("api: socket directory %s is not a directory", dir)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	// The directory's mode keeps others out in the moment between bind and chmod.
	if err := os.Chmod(path, SocketMode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	return ln, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("api: %s exists and is not a socket; refusing to replace it", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("api: %s: %w", path, ErrDaemonRunning)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("api: cannot tell whether a daemon listens on %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("api: removing stale socket: %w", err)
	}
	return nil
}

// ListenTCP listens on a loopback host:port; other addresses are refused (browsers and other hosts are kept out
// by address; the token only stands in for the socket's file permissions).
func ListenTCP(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("api: %q must be a loopback host:port such as 127.0.0.1:4800", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	return ln, nil
}

// checkLoopbackRequest refuses what a web page could send to a loopback port: a request naming another host (DNS
// rebinding) or carrying an Origin header (cross-site requests; local programs do not send one).
func checkLoopbackRequest(r *http.Request) error {
	if r.Header.Get("Origin") != "" {
		return fmt.Errorf("%w: requests from web pages are not accepted", api.ErrForbidden)
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%w: Host %q is not a loopback name", api.ErrForbidden, r.Host)
	}
	return nil
}

func (s *Server) handleEnsure(w http.ResponseWriter, r *http.Request) {
	var req api.EnsureRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := api.CheckModelProfile(req.Model, req.Profile); err != nil {
		s.fail(w, r, err)
		return
	}
	resp, err := s.agent.Ensure(r.Context(), req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleGetBlob(w http.ResponseWriter, r *http.Request) {
	c, err := cid.Decode(r.PathValue("cid"))
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: blob CID: %w", api.ErrBadRequest, err))
		return
	}
	rd, err := s.agent.OpenBlob(r.Context(), c)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer rd.Close()
	etag := `"` + c.String() + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatUint(rd.Size(), 10))
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		h.Del("Content-Length")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, rd); err != nil { // uses rd.WriteTo
		// The status is sent; abort the connection so the client sees a short body, never a wrong one.
		s.log.Warn("api: streaming blob failed", "cid", c, "err", err)
		panic(http.ErrAbortHandler)
	}
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

func (s *Server) handlePutBlob(w http.ResponseWriter, r *http.Request) {
	req, err := parsePutQuery(r.URL.RawQuery)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := checkContentType(r, "application/octet-stream"); err != nil {
		s.fail(w, r, err)
		return
	}
	if r.ContentLength > s.opts.MaxUpload {
		w.Header().Set("Connection", "close")
		s.fail(w, r, fmt.Errorf("%w: blob of %d bytes is over the limit of %d", api.ErrTooLarge, r.ContentLength, s.opts.MaxUpload))
		return
	}
	if g, ok := s.agent.(interface{ CheckSpace(uint64) error }); ok && r.ContentLength > 0 {
		if err := g.CheckSpace(uint64(r.ContentLength)); err != nil {
			w.Header().Set("Connection", "close")
			s.fail(w, r, err)
			return
		}
	}
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxUpload)
	resp, err := s.agent.PutBlob(r.Context(), req, body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, resp)
}

// parsePutQuery reads ?model=PATH&profile=JSON, each exactly once, nothing else.
func parsePutQuery(raw string) (api.PutRequest, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return api.PutRequest{}, fmt.Errorf("%w: query: %w", api.ErrBadRequest, err)
	}
	for k, v := range q {
		if k != "model" && k != "profile" {
			return api.PutRequest{}, fmt.Errorf("%w: unknown query parameter %q", api.ErrBadRequest, k)
		}
		if len(v) != 1 {
			return api.PutRequest{}, fmt.Errorf("%w: query parameter %q must be given once", api.ErrBadRequest, k)
		}
	}
	req := api.PutRequest{Model: q.Get("model")}
	if p := q.Get("profile"); p == "" {
		return req, fmt.Errorf("%w: query parameter profile is missing", api.ErrBadRequest)
	} else if err := decodeStrict(strings.NewReader(p), &req.Profile); err != nil {
		return req, fmt.Errorf("%w: profile: %w", api.ErrBadRequest, err)
	}
	if err := api.CheckModelProfile(req.Model, req.Profile); err != nil {
		return req, err
	}
	return req, nil
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.agent.Status(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleJobs(w http.ResponseWriter, r *http.Request) {
	jobs, err := s.agent.Jobs(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if jobs == nil {
		jobs = []api.Job{}
	}
	s.writeJSON(w, http.StatusOK, api.JobsResponse{Jobs: jobs})
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, api.Health{Status: "ok"})
}

// handleUnknown answers 405 for a known path with another method, else 404, in the API's error format.
func (s *Server) handleUnknown(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, pattern := s.mux.Handler(r2); pattern != "/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		s.writeError(w, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed,
			fmt.Sprintf("%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", ")))
		return
	}
	s.writeError(w, http.StatusNotFound, api.CodeNoSuchEndpoint, fmt.Sprintf("%s %s: no such endpoint", r.Method, r.URL.Path))
}

func checkContentType(r *http.Request, want string) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != want {
		// Also keeps browsers out: these types need a CORS preflight, which this API never grants.
		return fmt.Errorf("%w: Content-Type must be %s, got %q", api.ErrBadRequest, want, ct)
	}
	return nil
}

// decodeJSON reads one JSON value, at most MaxJSONBody bytes, rejecting unknown fields and trailing data.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if err := checkContentType(r, "application/json"); err != nil {
		return err
	}
	if err := decodeStrict(http.MaxBytesReader(w, r.Body, MaxJSONBody), v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("%w: JSON body over %d bytes", api.ErrTooLarge, MaxJSONBody)
		}
		return fmt.Errorf("%w: %w", api.ErrBadRequest, err)
	}
	return nil
}

func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

// fail answers err as JSON with the status and code of its row in api's error table.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && errors.Is(context.Cause(r.Context()), api.ErrShuttingDown) {
		err = fmt.Errorf("%w: %w", api.ErrShuttingDown, err)
	}
	status, code := api.ErrorStatus(err)
	if status >= 500 {
		s.log.Warn("api request failed", "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	}
	s.writeError(w, status, code, err.Error())
}

func (s *Server) writeError(w http.ResponseWriter, status int, code, msg string) {
	s.writeJSON(w, status, api.ErrorBody{Error: msg, Code: code})
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("api: encoding response", "err", err)
		status, b = http.StatusInternalServerError, []byte(`{"error":"encoding the response failed","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// statusRecorder remembers the status and size of a response for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *statusRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
