# npu-agent. `make demo` runs the main job, `make test` runs the tests (what CI runs).
GO      ?= go
BIN     := bin/npu-agent
PKGS    := ./...
# Fuzz time per target for `make fuzz`.
FUZZTIME ?= 20s

.PHONY: all build test test-short vet demo bench-store bench-fetch bench-fetch-inproc bench-api bench-fleet bench-scale bench-scale-1000 bench-scale-5000 test-scale test-scale-100 test-scale-ns test-faults fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/npu-agent

# vet: gofmt, then go vet for this system and for darwin and windows (the Linux-only test harnesses, internal/netlab,
# internal/fleetbench and internal/e2e, are excluded there by build constraints; everything else must build).
vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet $(PKGS)
	GOOS=darwin $(GO) vet $(PKGS)
	GOOS=windows $(GO) vet $(PKGS)

# The test suite CI runs: race detector on, fuzz seeds run as unit tests, namespace tests when root.
test: vet
	$(GO) test -race -timeout 12m $(PKGS)

test-short:
	$(GO) test -short -timeout 5m $(PKGS)

demo: build
	bash scripts/demo.sh
	bash scripts/demo-fleet.sh

# Store put/export of a 1 GiB blob against plain file write/copy, ratios from one run.
bench-store:
	$(GO) test -run '^$$' -bench 'Store' -benchtime 1x -timeout 30m ./blobstore/badgerstore

# What a user runs: `npu-agent fetch --out` of a 1 GiB blob (NPU_BENCH_SIZE bytes) on a daemon that gets it from
# another daemon (separate processes on loopback, fleet key on), against a bare libp2p stream with the same
# security between two processes, same run: fetch/stream, the post-transfer phase, the receiver's peak RSS and CPU,
# disk used. NPU_BENCH_PROFILE=DIR also records `perf record -g` of both daemons (and NPU_BENCH_TRACE=1 their slow syscalls).
bench-fetch:
	$(GO) test -run '^$$' -bench 'BenchmarkFetchOut' -benchtime 1x -timeout 30m ./internal/e2e

# The swarm protocol alone: two nodes in one process (no fleet key), fetch into the store, against a plain stream.
bench-fetch-inproc:
	$(GO) test -run '^$$' -bench 'BenchmarkFetch' -benchtime 4x -timeout 30m ./p2p

# Ensure latency of a stored blob (p50/p99 over the unix socket) and a 1 GiB blob handed to a loader against cat.
bench-api:
	$(GO) test -run '^$$' -bench 'EnsureLatency|HandBlob' -benchtime 3x -timeout 30m ./cmd/npu-agent

clean:
	rm -rf bin

# Simulated fleets (internal/fleetsim): the real membership, records and flight of 1,000 and 5,000 members on
# libp2p's mocknet in one process, 3 bootstrap peers each; figures in docs/benchmarks.md. FLEETSIM_NODES to vary,
# FLEETSIM_REFRESH for the member refresh (default the node's 30 s), FLEETSIM_TIMEOUT per phase (default 10m).
# FLEETSIM_IDLE: members idle after full membership before the flight (default none). After the flight and the
# steady phase (FLEETSIM_STEADY, default 15s) FLEETSIM_JOINS members (default 5) join one every FLEETSIM_JOIN_GAP
# (5s); the figures give each record's hops, pulls and rounds to the last member (bootstrap, refreshes, joins).
# FLEETSIM_LOSS: share of gossip messages lost; FLEETSIM_DIAL_ANY=1: any member may dial any other (a LAN);
# FLEETSIM_BOOTSTRAP: bootstrap list length (default 3); FLEETSIM_LATENCY: one-way link delay (default 5ms);
# FLEETSIM_PIPE=1: that delay on the members' streams without holding the writer (the mocknet's holds each write:
# about two gossipsub RPCs per latency on a stream), needed for latencies of 100ms or more; FLEETSIM_WINDOW: the
# flight's window (default 1s; above the gossip's delivery delay, e.g. 3s at 250ms); FLEETSIM_STEADY_LATENCY (with
# FLEETSIM_PIPE=1): the links' delay from full membership on (the overlay forms at FLEETSIM_LATENCY).
# FLEETSIM_LATE_FILL=1: the overlay fill held until full membership, then released (an experiment, benchmarks.md).
# Signatures are checked once per distinct (key, data, signature) in the process (internal/fleetsim/verify.go);
# the figures report how many checks each member asked for.
FLEETSIM_NODES ?= 1000,5000
bench-scale:
	FLEETSIM_NODES=$(FLEETSIM_NODES) $(GO) test -count=1 -v -run '^TestScale$$' -timeout 90m ./internal/fleetsim

# At 1,000 the one process is CPU-bound and a gossip hop takes it about 100 ms, so over 5 ms links a record's
# first copy often comes the long way: from full membership on the links are 250 ms (FLEETSIM_STEADY_LATENCY,
# FLEETSIM_PIPE=1; flight window 3s), so that the hops measure the overlay (benchmarks.md, wave 10).
# FLEETSIM_PIPE=0 FLEETSIM_STEADY_LATENCY=0 FLEETSIM_WINDOW=1s: the runs of waves 4-9.
bench-scale-1000:
	FLEETSIM_NODES=1000 FLEETSIM_REFRESH=$(or $(FLEETSIM_REFRESH),5m) FLEETSIM_TIMEOUT=$(or $(FLEETSIM_TIMEOUT),15m) \
	FLEETSIM_PIPE=$(or $(FLEETSIM_PIPE),1) FLEETSIM_STEADY_LATENCY=$(or $(FLEETSIM_STEADY_LATENCY),250ms) \
	FLEETSIM_WINDOW=$(or $(FLEETSIM_WINDOW),3s) $(GO) test -count=1 -v -run '^TestScale$$' -timeout 60m ./internal/fleetsim

bench-scale-5000:
	FLEETSIM_NODES=5000 FLEETSIM_REFRESH=$(or $(FLEETSIM_REFRESH),5m) FLEETSIM_TIMEOUT=$(or $(FLEETSIM_TIMEOUT),50m) $(GO) test -count=1 -v -run '^TestScale$$' -timeout 60m ./internal/fleetsim

# Real daemons on loopback (internal/e2e TestScaleLoopback): 40, then 100, each bootstrapped with 3 static peers,
# mDNS off, a fleet key; membership within 30 s, one compile per class, connections, idle RSS.
test-scale:
	NPU_TEST_SCALE=40 $(GO) test -count=1 -v -run '^TestScaleLoopback$$' -timeout 15m ./internal/e2e

# The 100-daemon variant (about 2 GiB of RAM); SCALE_WINDOW sets flight.window (default the daemon's).
test-scale-100:
	NPU_TEST_SCALE=100 NPU_TEST_SCALE_WINDOW=$(SCALE_WINDOW) $(GO) test -count=1 -v -run '^TestScaleLoopback$$' -timeout 15m ./internal/e2e

# mDNS only: SCALE_NS daemons (default 30), each in its own network namespace on one simulated LAN (root).
SCALE_NS ?= 30
test-scale-ns:
	NPU_TEST_SCALE_NS=$(SCALE_NS) $(GO) test -count=1 -v -run '^TestScaleNamespaces$$' -timeout 15m ./internal/e2e

# Every fuzz target for FUZZTIME each (seeds also run as plain tests in `make test`).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

# Debian package: a static bin/npu-agent and dist/npu-agent_<version>_amd64.deb, built with nfpm from the Go
# module proxy. `make test-deb` checks the package in a scratch directory (nothing is installed).
NFPM        ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.44.0
DEB_VERSION ?= $(shell packaging/version.sh)
DEB         := dist/npu-agent_$(DEB_VERSION)_amd64.deb

.PHONY: deb test-deb

deb:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(DEB_VERSION)' -o $(BIN) ./cmd/npu-agent
	rm -rf dist/gendocs && mkdir -p dist
	$(BIN) gendocs dist/gendocs && gzip -9n dist/gendocs/man/man1/*.1
	VERSION='$(DEB_VERSION)' $(NFPM) package --config packaging/nfpm.yaml --packager deb --target $(DEB)

test-deb: deb
	bash packaging/test-deb.sh $(DEB)

# Fleet distribution benchmark in network namespaces (root): npu-agent, nginx and aria2 from one seed to N hosts.
# BENCH_FLAGS e.g. "-hosts 12 -size 128MiB -rate 100mbit".
bench-fleet:
	bash scripts/bench-fleet.sh $(BENCH_FLAGS)

# Process-level fault tests, long versions: SIGKILL mid-write at random points (seed logged), full tmpfs disks.
# Root is needed for the tmpfs mounts (they are skipped otherwise). Short versions run in `make test`.
# Then network fault scenarios at full size (root, network namespaces): real daemons with the seed killed
# mid-transfer, a peer serving corrupt chunks, a partition that heals, and the compiling host killed during a
# fleet single flight; short versions of the first and third run in `make test`.
# Then the threat floods against real daemons at the issue's sizes (1280 chunk streams per hostile member,
# 10,200 FIFO requests, 2,000 stalled uploads and headers, ...); each logs a `threat-figures` line (peak RSS,
# threads, fds) for docs/design.md section 9. Short versions run in `make test`.
test-faults:
	NPU_TEST_FAULTS=long $(GO) test -race -count=1 -run Fault -timeout 30m ./internal/faults/... ./blobstore/...
	NPU_TEST_FAULTS=long $(GO) test -race -count=1 -timeout 35m -run '^Test(Fault|FleetCompilerKilled)' ./internal/e2e/
	NPU_TEST_FAULTS=long $(GO) test -race -count=1 -timeout 20m -v -run '^TestThreatDaemon' ./internal/e2e/
