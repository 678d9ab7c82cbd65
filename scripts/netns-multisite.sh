#!/usr/bin/env bash
# Two sites that cannot route to each other, joined by a relay.
#
# Builds three network namespaces: site A (10.201.1.2), site B (10.201.2.2)
# and a relay with one leg in each (10.201.1.1, 10.201.2.1, no forwarding),
# so A and B can reach the relay but never each other. Starts real meshnode
# processes: the relay (--relay-service, also the rendezvous), a1 and a2 in
# site A, b1 and b2 in site B, each holding a slot on the relay. Shows the
# mesh linking the sites through the relay and the document converging
# across them, then measures document convergence latency: ROUNDS commits
# on a1, the time until a2 (same site, direct) and b1 (other site, through
# the relay) hold each, from the nodes' own event timestamps.
#
# Usage: scripts/netns-multisite.sh [ROUNDS]     (default 30)
# Needs root and iproute2's ip; exits 77 when either is missing. Set
# MULTISITE_BIN to use a built meshnode instead of building one, and
# MULTISITE_KEEP=1 to keep the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-30}

if [ "$(id -u)" != 0 ]; then
  echo "netns-multisite: skipped: needs root to create network namespaces" >&2
  exit 77
fi
if ! command -v ip >/dev/null; then
  echo "netns-multisite: skipped: needs the ip command (iproute2)" >&2
  exit 77
fi

tag="mn$$"
nsR="${tag}r" nsA="${tag}a" nsB="${tag}b"
dir=$(mktemp -d /tmp/meshnode-multisite.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "$nsR" "$nsA" "$nsB"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ "$rc" != 0 ] || [ "${MULTISITE_KEEP:-}" = 1 ]; then
    echo "netns-multisite: logs kept in $dir" >&2
    if [ "$rc" != 0 ]; then tail -n 20 "$dir"/*.log >&2 || true; fi
  else
    rm -rf "$dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "netns-multisite: $*" >&2; exit 1; }

bin=${MULTISITE_BIN:-}
if [ -z "$bin" ]; then
  bin="$dir/meshnode"
  go build -o "$bin" ./cmd/meshnode
fi

# --- the network ---------------------------------------------------------
for ns in "$nsR" "$nsA" "$nsB"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip link add "${tag}ra" netns "$nsR" type veth peer name "${tag}ar" netns "$nsA"
ip link add "${tag}rb" netns "$nsR" type veth peer name "${tag}br" netns "$nsB"
ip -n "$nsR" addr add 10.201.1.1/24 dev "${tag}ra"
ip -n "$nsR" addr add 10.201.2.1/24 dev "${tag}rb"
ip -n "$nsA" addr add 10.201.1.2/24 dev "${tag}ar"
ip -n "$nsB" addr add 10.201.2.2/24 dev "${tag}br"
for l in "$nsR:${tag}ra" "$nsR:${tag}rb" "$nsA:${tag}ar" "$nsB:${tag}br"; do
  ip -n "${l%%:*}" link set "${l##*:}" up
done
ip netns exec "$nsR" sysctl -qw net.ipv4.ip_forward=0

# mn NS NAME ARGS...: run the meshnode CLI against node NAME inside NS.
mn() { local ns=$1 name=$2; shift 2; ip netns exec "$ns" "$bin" "$@" --data "$dir/$name"; }

start() { # start NS NAME PORT ARGS...
  local ns=$1 name=$2 port=$3; shift 3
  ip netns exec "$ns" "$bin" run --data "$dir/$name" --name "$name" --mdns=false \
    --port "$port" --api "127.0.0.1:$((port + 1))" "$@" >"$dir/$name.out" 2>"$dir/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do
    [ -s "$dir/$name/api.addr" ] && return 0
    sleep 0.1
  done
  die "$name did not start"
}

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

json_field() { sed -n "s/^  \"$1\": \"\(.*\)\",\{0,1\}$/\1/p"; }

# --- the fleet -----------------------------------------------------------
start "$nsR" relay 4700 --relay-service
rid=$(mn "$nsR" relay status --json | json_field id)
[ -n "$rid" ] || die "could not read the relay's peer ID"
token=$(mn "$nsR" relay fleet token)
echo "relay $rid at 10.201.1.1 (site A) and 10.201.2.1 (site B)"

site_args() { # the relay's address as site $1 sees it
  local a="/ip4/10.201.$1.1/udp/4700/quic-v1/p2p/$rid"
  echo "--join $token --bootstrap $a --relay $a"
}
# shellcheck disable=SC2046
start "$nsA" a1 4710 $(site_args 1)
# shellcheck disable=SC2046
start "$nsA" a2 4720 $(site_args 1)
# shellcheck disable=SC2046
start "$nsB" b1 4730 $(site_args 2)
# shellcheck disable=SC2046
start "$nsB" b2 4740 $(site_args 2)

id_of() { mn "$1" "$2" status --json | json_field id; }
a1=$(id_of "$nsA" a1) a2=$(id_of "$nsA" a2) b1=$(id_of "$nsB" b1)

# The sites really cannot reach each other.
if ip netns exec "$nsB" bash -c 'exec 3<>/dev/tcp/10.201.1.2/4710' 2>/dev/null; then
  die "site B can reach site A directly; the sites are not separated"
fi

relayed_peers() { mn "$1" "$2" mesh --json | tr -d ' \n' | grep -o '"relayed_peers":\[[^]]*\]'; }
linked_through_relay() { relayed_peers "$nsB" b1 | grep -q -e "$a1" -e "$a2"; }
wait_for 90 "b1 to link to site A through the relay" linked_through_relay
eligible() { [ "$(mn "$nsB" b1 mesh --json | tr -d ' \n' | grep -o '"eligible":\[[^]]*\]' | grep -o 12D3 | wc -l)" -ge 3 ]; }
wait_for 60 "b1 to see a1, a2 and b2 as eligible mesh peers" eligible
sleep 2 # let the pass that follows open its links
echo "b1 reaches site A through the relay: $(relayed_peers "$nsB" b1)"
echo
mn "$nsB" b1 mesh
echo
mn "$nsB" b1 peers

# --- convergence across sites --------------------------------------------
mn "$nsA" a1 room state multisite hello "from site A" >/dev/null
has_hello() { [ "$(mn "$1" "$2" room state multisite hello)" = "from site A" ]; }
wait_for 30 "b1 to hold a1's change" has_hello "$nsB" b1
wait_for 30 "b2 to hold a1's change" has_hello "$nsB" b2
mn "$nsB" b2 room state multisite rebound "from site B" >/dev/null
has_rebound() { [ "$(mn "$nsA" a2 room state multisite rebound)" = "from site B" ]; }
wait_for 30 "a2 to hold b2's change" has_rebound
echo
echo "document converged across sites through the relay"

# --- latency: a1 -> a2 (direct) and a1 -> b1 (through the relay) ----------
for n in "$nsA:a1" "$nsA:a2" "$nsB:b1"; do
  ip netns exec "${n%%:*}" "$bin" events --data "$dir/${n##*:}" >"$dir/${n##*:}.events" 2>&1 &
  pids+=($!)
done
sleep 1
for i in $(seq "$rounds"); do
  mn "$nsA" a1 room state latency "r$i" "$i" >/dev/null
  sleep 0.1
done
last_seen() { [ "$(mn "$1" "$2" room state latency "r$rounds")" = "$rounds" ]; }
wait_for 30 "a2 to hold the last round" last_seen "$nsA" a2
wait_for 30 "b1 to hold the last round" last_seen "$nsB" b1
sleep 0.5

# latencies OBSERVER: for each single-head local commit on a1, the time
# until OBSERVER's document first holds that head, in ms, sorted.
latencies() {
  awk -v obs="$dir/$1.events" '
    function secs(t,   d, c) { split(t, d, "T"); split(d[2], c, ":"); sub("Z", "", c[3]); return c[1] * 3600 + c[2] * 60 + c[3] }
    function heads(line,   m) { if (match(line, /heads=[0-9a-f,]*/)) return substr(line, RSTART + 6, RLENGTH - 6); return "" }
    FILENAME != obs && / doc.changed / && /local=true/ { h = heads($0); if (h !~ /,/) { at[h] = secs($1); order[++n] = h } }
    FILENAME == obs && / doc.changed / && /local=false/ {
      k = split(heads($0), hs, ","); t = secs($1)
      for (j = 1; j <= k; j++) if (!(hs[j] in seen)) seen[hs[j]] = t
    }
    END { for (i = 1; i <= n; i++) if (order[i] in seen) { d = (seen[order[i]] - at[order[i]]) * 1000; if (d < 0) d += 86400000; printf "%.3f\n", d } }
  ' "$dir/a1.events" "$dir/$1.events" | sort -n
}
summary() { # summary LABEL FILE
  awk -v label="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { printf "%-34s no samples\n", label; exit 1 }
    p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1]
    printf "%-34s n=%d  p50 %7.2f ms  p99 %7.2f ms\n", label, NR, p50, p99 }' "$2"
}
latencies a2 >"$dir/direct.ms"
latencies b1 >"$dir/relay.ms"
echo
echo "document convergence latency, $rounds commits on a1:"
summary "a1 -> a2 (same site, direct)" "$dir/direct.ms"
summary "a1 -> b1 (other site, via relay)" "$dir/relay.ms"
awk 'NR == FNR { d[FNR] = $1; nd = FNR; next } { r[FNR] = $1; nr = FNR }
  END { printf "ratio relay/direct: p50 %.2f  p99 %.2f\n", r[int((nr - 1) * 0.5) + 1] / d[int((nd - 1) * 0.5) + 1], r[int((nr - 1) * 0.99) + 1] / d[int((nd - 1) * 0.99) + 1] }' \
  "$dir/direct.ms" "$dir/relay.ms"
echo "multisite: ok"
