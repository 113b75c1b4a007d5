#!/usr/bin/env bash
# A small local fleet on one machine: six npu-agent daemons on loopback (static peers, no mDNS, a fleet key),
# simulated NPU stacks of two compatibility classes. One model is requested on all six at the same moment: each
# class compiles exactly once and every other agent fetches the blob from its peers.
set -euo pipefail
# The demo's daemons and CLI use the demo's own config and sockets, not an operator's environment.
unset NPU_AGENT_SOCKET NPU_AGENT_CONFIG
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/npu-agent}
work=$(mktemp -d /tmp/npu-agent-fleet.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

printf '<?xml version="1.0"?><net name="fleet-demo" version="11"/>' >"$work/model.xml"
head -c 3000000 /dev/zero | tr '\0' '\3' >"$work/model.bin"
# Fleet key (libp2p private network): only holders can connect.
printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$work/fleet.key"

# name, class label, arch, firmware MI, driver
hosts=(
  "a1 A 4000 11.4 1747152000"
  "a2 A 4000 11.6 1750000000"
  "a3 A 4000 11.6 1747152000"
  "b1 B 5010 12.1 1747152000"
  "b2 B 5010 12.1 1747152000"
  "b3 B 5010 12.1 1747152000"
)
peers=()
port=47310
for h in "${hosts[@]}"; do
  read -r name class arch mi driver <<<"$h"
  port=$((port + 1))
  dir="$work/$name"
  mkdir -p "$dir"
  printf '%s\n' 'openvino: "2026.1.0"' "arch: \"$arch\"" "driver_version: \"$driver\"" 'compiler_type: PLUGIN' \
    'compiler_version: "7.4"' 'max_tiles: 6' 'stepping: 4' "firmware_mi: \"$mi\"" >"$dir/fp.yaml"
  {
    echo "data_dir: $dir/data"
    echo "runtime_dir: $dir/run"
    echo "fingerprint_override: $dir/fp.yaml"
    echo "compiler: {backend: sim, sim: {compile_time: 3s, blob_size: 32MiB}}"
    echo "flight: {window: 300ms, lease_ttl: 5s}"
    echo "p2p:"
    echo "  listen: [/ip4/127.0.0.1/tcp/$port]"
    echo "  mdns: false"
    echo "  allow_loopback: true"
    echo "  fleet_key_file: $work/fleet.key"
    echo "  peers: [$(IFS=,; echo "${peers[*]:-}")]"
  } >"$dir/config.yaml"
  "$BIN" daemon --config "$dir/config.yaml" >"$dir/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    id=$("$BIN" --config "$dir/config.yaml" --json status 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])' 2>/dev/null) && break
    sleep 0.1
  done
  [ -n "${id:-}" ] || { echo "daemon $name did not start:"; cat "$dir/log"; exit 1; }
  peers+=("/ip4/127.0.0.1/tcp/$port/p2p/$id")
  echo "started $name (class $class, arch $arch, MI $mi) as ${id:0:16}…"
done

# Wait until every agent sees the other five.
for _ in $(seq 100); do
  ok=1
  for h in "${hosts[@]}"; do
    read -r name _ <<<"$h"
    n=$("$BIN" --config "$work/$name/config.yaml" --json peers | python3 -c 'import json,sys; print(len(json.load(sys.stdin) or []))')
    [ "$n" -ge 5 ] || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.2
done

echo "== the model is requested on all six agents at once"
fetches=()
for h in "${hosts[@]}"; do
  read -r name _ <<<"$h"
  "$BIN" --config "$work/$name/config.yaml" --json fetch --model "$work/model.xml" --shape input=1,3,224,224 \
    >"$work/$name/fetch.json" 2>"$work/$name/fetch.err" &
  fetches+=($!)
done
for p in "${fetches[@]}"; do wait "$p" || true; done
printf '%-4s %-6s %-9s %s\n' HOST CLASS SOURCE SHA256
declare -A compiled
for h in "${hosts[@]}"; do
  read -r name class _ <<<"$h"
  if [ ! -s "$work/$name/fetch.json" ]; then
    echo "FAIL: fetch on $name: $(cat "$work/$name/fetch.err")"
    exit 1
  fi
  read -r src sha < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["source"], r["sha256"])' "$work/$name/fetch.json")
  printf '%-4s %-6s %-9s %s…\n' "$name" "$class" "$src" "${sha:0:16}"
  [ "$src" = compiled ] && compiled[$class]=$((${compiled[$class]:-0} + 1))
done
for c in A B; do
  [ "${compiled[$c]:-0}" = 1 ] || { echo "FAIL: class $c compiled ${compiled[$c]:-0} times, want 1"; exit 1; }
done
echo "fleet demo OK: one compile per class, every other agent fetched from its peers"
