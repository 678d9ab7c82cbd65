#!/usr/bin/env bash
# Fleet benchmark (issue 15): as many real meshnode processes as this
# machine holds, on 127.0.0.1. Starts a rendezvous and N-1 nodes that join
# it (mDNS off), measures idle CPU and RSS per node, the mesh cap held and
# how fast a change written on one node reaches all the others; then kills
# the rendezvous and -kill random nodes (SIGKILL) and measures again among
# the survivors. Baseline in the same run: a lone node and a 3-process
# fleet. Builds meshnode from this tree, then runs scripts/fleetbench; its
# flags pass through:
#
#   scripts/fleet-bench.sh                       # 50 processes, kill 1 + 10
#   scripts/fleet-bench.sh -n 10 -kill 2         # a quick run
#   scripts/fleet-bench.sh -dir /tmp/fb -keep    # keep data dirs and logs
#
# Exits 1 when a change does not reach every node within -bound (60 s),
# when a node holds more mesh slots than --max-mesh-peers, or a node dies
# unasked; the last line of output starts with RESULT.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/meshnode" ./cmd/meshnode
go build -o "$tmp/fleetbench" ./scripts/fleetbench
"$tmp/fleetbench" -bin "$tmp/meshnode" "$@"
