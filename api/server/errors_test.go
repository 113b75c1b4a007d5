package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/npu-agent/npu-agent/api"
	"github.com/npu-agent/npu-agent/compile"
)

// TestErrorRoundTrip: every error of the table, answered by the server and read by the client, keeps its status
// and code and exits the CLI as the same error met in-process.
func TestErrorRoundTrip(t *testing.T) {
	t.Parallel()
	agent := newFakeAgent()
	ts := startServer(t, agent, Options{})
	req := api.EnsureRequest{Model: "/m.onnx", Profile: compile.Profile{Device: "NPU"}}
	for _, row := range api.ErrorTable() {
		local := errors.New("disk on fire") // the rows without a sentinel stand for errors no row matches
		if row.Err != nil {
			local = fmt.Errorf("while doing things: %w", row.Err)
		}
		name := row.Code
		if name == "" {
			name = row.Err.Error()
		}
		t.Run(name, func(t *testing.T) {
			// Not parallel: the subtests share the agent's error.
			if got := api.ExitCode(local); got != row.Exit {
				t.Errorf("in-process exit code %d, want the row's %d", got, row.Exit)
			}
			status, code := api.ErrorStatus(local)
			if row.Code == "" { // errors only the CLI meets: the server answers them as internal
				if code != api.CodeInternal {
					t.Errorf("a CLI-side error is answered %d %q", status, code)
				}
				return
			}
			if row.Err == nil && row.Code != api.CodeInternal {
				return // no_such_endpoint, method_not_allowed: answered by the mux, see TestBadRequests
			}
			agent.setErr(local)
			_, remote := ts.client.Ensure(context.Background(), req)
			var ae *api.Error
			if !errors.As(remote, &ae) {
				t.Fatalf("error %v (%T) is not *api.Error", remote, remote)
			}
			if ae.Status != row.Status || ae.Code != row.Code || ae.Message != local.Error() {
				t.Errorf("answered %d %q %q, want %d %q %q", ae.Status, ae.Code, ae.Message, row.Status, row.Code, local)
			}
			if row.Err != nil && !errors.Is(remote, row.Err) {
				t.Errorf("errors.Is(remote, %v) is false", row.Err)
			}
			if got, want := api.ExitCode(fmt.Errorf("fetch: %w", remote)), api.ExitCode(local); got != want {
				t.Errorf("through the daemon exit code %d, in-process %d", got, want)
			}
		})
	}
	agent.setErr(nil)
}
