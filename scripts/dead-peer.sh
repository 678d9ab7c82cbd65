#!/usr/bin/env bash
# dead-peer.sh: does a peer that dies without a word (kill -9, its QUIC
# connections left to time out) stall its neighbours' anti-entropy?
#
# Starts four daemons on 127.0.0.1 with --sync-interval 1s, kills one with
# SIGKILL, and samples a survivor's meshnode_sync_rounds_total every second
# for 35 s. Before the per-step idle bound (SyncIdle) and the skip of stale
# peers, the counter stood still for about 26 s after the kill (every sync
# worker waited on the dead peer until QUIC's 30 s idle timeout).
#
# BIN=path uses that binary instead of building this tree.
#
# Prints one line per second ("t=<s> rounds=<n> +<delta>") and a summary:
# the longest run of seconds with no new session, and PASS when it is
# under 10 s, FAIL otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
bin=${BIN:-$dir/meshnode} # BIN: a binary to test instead (an older build, for the baseline)
[ -n "${BIN:-}" ] || go build -o "$bin" ./cmd/meshnode
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

start() { # name port [extra...]
	local name=$1 port=$2
	shift 2
	"$bin" run --data "$dir/$name" --name "$name" --port "$port" --api "127.0.0.1:$((port + 1))" \
		--mdns=false --sync-interval 1s --log-level warn "$@" >"$dir/$name.log" 2>&1 &
	pids+=($!)
}
wait_file() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "no $1" >&2; exit 1; }

start a 4810
wait_file "$dir/a/api.addr"
sleep 1
token=$("$bin" fleet token --data "$dir/a")
boot=$("$bin" status --data "$dir/a" --json | grep -o '"/ip4/127.0.0.1/udp/[^"]*quic-v1[^"]*' | head -1 | tr -d '"')
start b 4820 --join "$token" --bootstrap "$boot"
start c 4830 --join "$token" --bootstrap "$boot"
start d 4840 --join "$token" --bootstrap "$boot"
for n in b c d; do wait_file "$dir/$n/api.addr"; done
sleep 8 # the fleet forms; QUIC mesh links open

rounds() {
	curl -s -H "Authorization: Bearer $(cat "$dir/b/api.token")" "http://$(cat "$dir/b/api.addr")/metrics" |
		awk '/^meshnode_sync_rounds_total/ {print $2}'
}
kill -9 "${pids[3]}" # d dies without a word
prev=$(rounds)
longest=0 still=0
for t in $(seq 1 35); do
	sleep 1
	now=$(rounds)
	delta=$((${now%.*} - ${prev%.*}))
	echo "t=$t rounds=${now%.*} +$delta"
	if [ "$delta" -eq 0 ]; then still=$((still + 1)); else still=0; fi
	[ "$still" -gt "$longest" ] && longest=$still
	prev=$now
done
echo "longest stretch with no new anti-entropy session on b: ${longest} s"
if [ "$longest" -lt 10 ]; then echo "RESULT PASS"; else echo "RESULT FAIL"; exit 1; fi
