package server

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/metrics"
)

// Service serves an *agent.Agent through the local API.
type Service struct {
	Agent   *agent.Agent
	Version string
	PeerID  string
	Quota   uint64
	Metrics *metrics.Metrics // its store gauges are set on each status; nil: none
	// Peers lists connected fleet members; nil when running alone.
	Peers func() []api.Peer
	// PeerHostname names one peer's host from its member record ("" if unknown); nil when running alone.
	PeerHostname func(id string) string

	// PeerServing is api.Status.PeerServing (the fleet's).
	PeerServing string
	// Hostname and Tags are this host's, as status and rollout status show them.
	Hostname string
	Tags     []string

	models modelCache
}

var _ api.Agent = (*Service)(nil)

// Ensure loads the model from its path, ensures a blob and materialises it for the loader.
func (s *Service) Ensure(ctx context.Context, req api.EnsureRequest) (api.EnsureResponse, error) {
	m, err := s.models.load(ctx, req.Model)
	if err != nil {
		return api.EnsureResponse{}, err
	}
	r, err := s.Agent.Ensure(ctx, m, req.Profile, nil)
	if err != nil {
		return api.EnsureResponse{}, err
	}
	return s.response(ctx, r)
}

func (s *Service) response(ctx context.Context, r agent.Result) (api.EnsureResponse, error) {
	path, err := s.Agent.Materialize(ctx, r.CID)
	if err != nil {
		return api.EnsureResponse{}, err
	}
	from := r.WaitedFor
	if r.Source == agent.SourcePeer && from == "" {
		from = r.Record.Producer
	}
	return api.EnsureResponse{
		CID: r.CID, Path: path, Source: r.Source, Size: r.Record.Size, SHA256: r.SHA256,
		ModelID: r.Record.ModelID, ProfileID: r.Record.ProfileID, From: from, CompileTime: r.Record.CompileTime,
	}, nil
}

// OpenBlob streams a stored blob and marks it used.
func (s *Service) OpenBlob(ctx context.Context, c cid.Cid) (blobstore.Reader, error) {
	release := s.Agent.Use(c)
	r, err := s.Agent.Store().Open(ctx, c)
	if err != nil {
		release()
		return nil, err
	}
	_ = s.Agent.Store().Touch(ctx, c)
	return inUseReader{r, release}, nil
}

// inUseReader keeps its blob from gc until closed.
type inUseReader struct {
	blobstore.Reader
	release func()
}

func (r inUseReader) Close() error {
	r.release()
	return r.Reader.Close()
}

// PutBlob spools the upload to a scratch file (the trailer sits at its end), then registers it like `put`. The
// store's free-space guard is asked before the spool starts and before every 64 MiB of it.
func (s *Service) PutBlob(ctx context.Context, req api.PutRequest, blob io.Reader) (api.EnsureResponse, error) {
	m, err := s.models.load(ctx, req.Model)
	if err != nil {
		return api.EnsureResponse{}, err
	}
	f, err := os.CreateTemp(s.Agent.ScratchDir(), "upload-*.blob")
	if err != nil {
		return api.EnsureResponse{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := spool(ctx, f, blob, s.CheckSpace); err != nil {
		return api.EnsureResponse{}, fmt.Errorf("receiving blob: %w", err)
	}
	r, err := s.Agent.Put(ctx, f.Name(), m, req.Profile, nil)
	if err != nil {
		return api.EnsureResponse{}, err
	}
	return s.response(ctx, r)
}

// CheckSpace is the store's free-space guard for n more bytes (api.ErrNoSpace), if the store has one.
func (s *Service) CheckSpace(n uint64) error { return checkSpace(s.Agent.Store(), n) }

// job describes an activity for status: bytes, chunks and the mean rate of a fetch.
func job(act agent.Activity, now time.Time) api.Job {
	j := api.Job{Kind: act.Phase, ModelID: act.Model, ProfileID: act.Profile, CID: act.CID, Started: act.Started,
		Done: uint64(max(act.Done, 0)), Total: uint64(max(act.Total, 0)), From: act.From, Peers: act.Peers}
	if j.Total > 0 {
		j.Chunks = (j.Total + blobstore.ChunkSize - 1) / blobstore.ChunkSize
		j.ChunksDone = min(j.Chunks, (j.Done+blobstore.ChunkSize-1)/blobstore.ChunkSize)
	}
	if d := now.Sub(act.Started).Seconds(); d > 0 && j.Done > 0 {
		j.Rate = uint64(float64(j.Done) / d)
	}
	return j
}

// Jobs reports the jobs under way, each peer named by its host where its member record says.
func (s *Service) Jobs(context.Context) ([]api.Job, error) { return s.jobs(), nil }

func (s *Service) jobs() []api.Job {
	now := time.Now()
	jobs := []api.Job{}
	for _, act := range s.Agent.Activities() {
		j := job(act, now)
		if j.From != "" && s.PeerHostname != nil {
			j.FromHostname = s.PeerHostname(j.From)
		}
		jobs = append(jobs, j)
	}
	return jobs
}

// Status reports the store, the jobs under way and the peers.
func (s *Service) Status(ctx context.Context) (api.Status, error) {
	a := s.Agent
	st := api.Status{Version: s.Version, PeerID: s.PeerID, Hostname: s.Hostname, Tags: s.Tags, Class: a.Class(),
		Compiler: a.CompilerName(), Jobs: []api.Job{}, Peers: []api.Peer{}}
	st.Fingerprint, _ = a.Host().Canonical() // agent.New checked that it encodes
	infos, err := a.Store().List(ctx)
	if err != nil {
		return st, err
	}
	recs, err := a.Store().Records(ctx, "", "")
	if err != nil {
		return st, err
	}
	st.Store = api.StoreStatus{Quota: s.Quota, Records: len(recs), List: infos}
	for _, in := range infos {
		if in.Complete {
			st.Store.Blobs++
		} else {
			st.Store.Partial++
		}
		st.Store.Bytes += in.Size
	}
	s.Metrics.SetStore(st.Store.Bytes, st.Store.Blobs)
	st.Jobs = s.jobs()
	if s.Peers != nil {
		st.Peers = s.Peers()
	}
	st.PeerServing = s.PeerServing
	return st, nil
}
