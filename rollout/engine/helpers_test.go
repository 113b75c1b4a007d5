package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/npu-agent/npu-agent/agent"
	"github.com/npu-agent/npu-agent/blobstore"
	"github.com/npu-agent/npu-agent/blobstore/badgerstore"
	"github.com/npu-agent/npu-agent/compat"
	"github.com/npu-agent/npu-agent/compile"
)

// The agent is what the daemon hands the engine.
var (
	_ Ensurer = (*agent.Agent)(nil)
	_ Store   = (blobstore.Store)(nil)
)

// lnl is a Lunar Lake host with the compiler in the OpenVINO plugin.
func lnl() compat.Fingerprint {
	return compat.Fingerprint{
		OpenVINO: "2026.1.0", Arch: "4000", DriverVersion: "1747152000", CompilerType: "PLUGIN",
		CompilerVersion: "7.4", MaxTiles: 6, Stepping: 4, FirmwareMI: "11.4", OS: "linux", CPUArch: "amd64",
	}
}

// countingBackend counts compiles of a real backend.
type countingBackend struct {
	compile.Backend
	n atomic.Int32
}

func (c *countingBackend) Compile(ctx context.Context, req compile.Request) (*compile.Result, error) {
	c.n.Add(1)
	return c.Backend.Compile(ctx, req)
}

func openStore(t *testing.T) blobstore.Store {
	t.Helper()
	s, err := badgerstore.Open(t.TempDir(), badgerstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newAgent(t *testing.T, s blobstore.Store, fp compat.Fingerprint, compileTime time.Duration) (*agent.Agent, *countingBackend) {
	t.Helper()
	sim, err := compile.NewSim(fp, compile.SimOptions{CompileTime: compileTime, PayloadSize: 3<<20 + 5})
	if err != nil {
		t.Fatal(err)
	}
	b := &countingBackend{Backend: sim}
	a, err := agent.New(agent.Options{Store: s, Backend: b, Host: fp, Producer: "test", WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// testClock is the engine's clock in tests: it stands still until the test moves it.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
