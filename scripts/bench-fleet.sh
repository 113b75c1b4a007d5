#!/usr/bin/env bash
# Fleet distribution benchmark: time to copy one blob from one seed to every host of a simulated LAN, per system,
# against the physical lower bound. See docs/benchmarks.md.
#
# Usage: scripts/bench-fleet.sh [fleetbench flags]
#   without flags: every scenario (-scenario all: equal, half-rate, 24-hosts, seed-leaves), every system
#   e.g. scripts/bench-fleet.sh -hosts 12 -size 128MiB -rate 100mbit -systems npu-agent,nginx,aria2
#        scripts/bench-fleet.sh -scenario half-rate -systems npu-agent,aria2
#
# Needs root (it builds network namespaces) and Debian/Ubuntu packages it installs with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "bench-fleet: needs root to create network namespaces" >&2
	exit 1
fi

# command:package for everything the harness and the systems run.
tools=(ip:iproute2 tc:iproute2 curl:curl nginx:nginx-light aria2c:aria2 opentracker:opentracker mktorrent:mktorrent)
missing=()
for t in "${tools[@]}"; do
	cmd=${t%%:*} pkg=${t#*:}
	if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $pkg "* ]]; then
		missing+=("$pkg")
	fi
done
if ((${#missing[@]})); then
	echo "bench-fleet: installing ${missing[*]}" >&2
	# The packages would start their own services (nginx on port 80, opentracker) on this machine: forbid
	# service starts for the duration of the install, unless a policy is already in place.
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	rm -f /usr/sbin/policy-rc.d
	trap - EXIT
fi

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	PATH=/usr/local/go/bin:$PATH
fi
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/fleetbench" ./internal/fleetbench/cmd/fleetbench
go build -o "$bin/npu-agent" ./cmd/npu-agent

echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
# Every simulated host shares this machine's CPUs; ahead of unrelated jobs they behave more like hosts with CPUs of
# their own. The table's "bench procs cpu" column says how much CPU the benchmark itself used.
if (($# == 0)); then
	set -- -scenario all
fi
nice -n -10 "$bin/fleetbench" -npu-agent "$bin/npu-agent" "$@"
