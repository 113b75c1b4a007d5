#!/usr/bin/env bash
# Scripted demo of npu-agent on one machine with the simulated compiler (no NPU or OpenVINO needed):
# a first fetch compiles, a second returns the byte-identical blob from the store, and hosts whose NPU stack
# differs reuse the blob or compile again exactly as the compatibility rules say.
set -euo pipefail
# The demo's daemons and CLI use the demo's own config and sockets, not an operator's environment.
unset NPU_AGENT_SOCKET NPU_AGENT_CONFIG
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/npu-agent}
work=$(mktemp -d /tmp/npu-agent-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The demo's hosts run in-process; a daemon of this machine (the package's) must not answer for them.
export NPU_AGENT_SOCKET="$work/no-daemon.sock"

# A small IR model (content is what identifies it, not the path).
printf '<?xml version="1.0"?><net name="demo" version="11"/>' >"$work/model.xml"
head -c 2000000 /dev/zero | tr '\0' '\7' >"$work/model.bin"

# Fingerprint overrides stand in for four machines' NPU stacks (Lunar Lake, compiler in the OpenVINO plugin).
host() { # name, then extra "key: value" lines that override the base
  local f="$work/$1.yaml"; shift
  printf '%s\n' 'openvino: "2026.1.0"' 'arch: "4000"' 'driver_version: "1747152000"' 'compiler_type: PLUGIN' \
    'compiler_version: "7.4"' 'max_tiles: 6' 'stepping: 4' 'firmware_mi: "11.4"' >"$f"
  local kv
  for kv in "$@"; do
    sed -i "/^${kv%%:*}:/d" "$f"
    echo "$kv" >>"$f"
  done
}
host a
host b 'driver_version: "1750000000"' 'firmware_mi: "11.6"' # newer driver and firmware: MI 11.4 blobs still load
host c 'firmware_mi: "11.3"'                                # older firmware minor: cannot load an 11.4 blob
host d 'arch: "5010"'                                       # another NPU architecture

agent() { # host, then arguments
  local h=$1
  shift
  "$BIN" --data-dir "$work/data" --compiler sim --fingerprint-override "$work/$h.yaml" "$@"
}
fetch() { # host, out file -> prints "source cid"
  agent "$1" --json fetch --model "$work/model.xml" --shape input=1,3,224,224 --out "$2" 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["source"], r["cid"])'
}

echo "== host A fetches the model twice"
read -r src1 cid1 < <(fetch a "$work/a1.blob")
echo "A first:  $src1 $cid1"
read -r src2 cid2 < <(fetch a "$work/a2.blob")
echo "A second: $src2 $cid2"
if [ "$src1" != compiled ] || [ "$src2" != store ] || [ "$cid1" != "$cid2" ]; then
  echo "FAIL: expected compiled, then the same blob from the store"
  exit 1
fi
cmp "$work/a1.blob" "$work/a2.blob" && echo "byte-identical, sha256 $(sha256sum <"$work/a2.blob" | cut -c1-16)…"

echo "== hosts with other NPU stacks, same store"
for h in b c d; do
  read -r src cid < <(fetch "$h" "$work/$h.blob")
  printf '%s: %-8s %s  differs from A in: %s\n' "$h" "$src" "$cid" "$(diff "$work/a.yaml" "$work/$h.yaml" | sed -n 's/^> //p' | paste -sd' ')"
  case $h in
  b) want=store ;;
  *) want=compiled ;;
  esac
  if [ "$src" != "$want" ] || { [ "$want" = store ] && [ "$cid" != "$cid1" ]; }; then
    echo "FAIL: host $h should have been served from: $want"
    exit 1
  fi
done

echo "== what the rules say about A's blob on host C"
# inspect exits 4 for a blob this host cannot load.
code=0; agent c inspect "$work/a1.blob" > "$work/inspect.out" 2>&1 || code=$?
grep -E 'this host|reason' "$work/inspect.out"
[ "$code" -eq 4 ] || { echo "inspect exited $code, want 4 (incompatible)"; exit 1; }
echo "== the store"
agent a ls
agent a verify
echo "demo OK"
