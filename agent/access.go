package agent

import (
	"github.com/ipfs/go-cid"

	"github.com/npu-agent/npu-agent/compat"
)

// What adapters above the agent (the API server) need of it and cannot reach otherwise.

// Use marks blob c in use, so that gc keeps it, until the returned release is called (more than once is fine).
func (a *Agent) Use(c cid.Cid) (release func()) { return a.use(c) }

// ScratchDir is a directory for temporary files on the store's file system, emptied when an Agent is created.
func (a *Agent) ScratchDir() string { return a.scratchDir }

// Class is this host's compatibility class under the agent's rules, or "" if the rules cannot place it.
func (a *Agent) Class() string {
	class, _ := compat.Class(a.opts.Rules, a.opts.Host, "")
	return class
}

// CompilerName names the compiler backend, or "" when the agent has none.
func (a *Agent) CompilerName() string {
	if a.opts.Backend == nil {
		return ""
	}
	return a.opts.Backend.Name()
}
