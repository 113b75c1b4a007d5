package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/npu-agent/npu-agent/api"
)

// A waiting fetch polls GET /v1/jobs; a daemon older than it answers no_such_endpoint, and the jobs then come from
// its status, which is asked from then on without trying /v1/jobs again.
func TestDaemonJobsFallsBackToStatus(t *testing.T) {
	t.Parallel()
	job := api.Job{Kind: "fetch", ProfileID: "p", Done: 5, Total: 10}
	for _, c := range []struct {
		name                 string
		hasJobs              bool
		wantLean             bool
		wantJobs, wantStatus int32 // requests after two polls
	}{
		{"current daemon", true, true, 2, 0},
		{"older daemon", false, false, 1, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var jobsCalls, statusCalls atomic.Int32
			mux := http.NewServeMux()
			mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, _ *http.Request) {
				jobsCalls.Add(1)
				if !c.hasJobs {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusNotFound)
					json.NewEncoder(w).Encode(api.ErrorBody{Error: "no such endpoint", Code: api.CodeNoSuchEndpoint})
					return
				}
				json.NewEncoder(w).Encode(api.JobsResponse{Jobs: []api.Job{job}})
			})
			mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
				statusCalls.Add(1)
				json.NewEncoder(w).Encode(api.Status{Jobs: []api.Job{job}})
			})
			socket := filepath.Join(t.TempDir(), "api.sock")
			ln, err := net.Listen("unix", socket)
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: mux}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			client := api.NewClient(socket)
			t.Cleanup(func() { client.Close() })
			lean := true
			for range 2 {
				jobs, err := daemonJobs(context.Background(), client, &lean)
				if err != nil || len(jobs) != 1 || jobs[0] != job {
					t.Fatalf("jobs %+v, %v", jobs, err)
				}
			}
			if lean != c.wantLean || jobsCalls.Load() != c.wantJobs || statusCalls.Load() != c.wantStatus {
				t.Errorf("lean %v, %d jobs and %d status requests; want %v, %d and %d", lean, jobsCalls.Load(),
					statusCalls.Load(), c.wantLean, c.wantJobs, c.wantStatus)
			}
		})
	}
}
