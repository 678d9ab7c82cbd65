#!/usr/bin/env bash
# Starts a 3-node fleet on this machine (ports 4710/4720/4730, APIs on the
# next port up, data in ${DEMO_DIR:-/tmp/meshnode-demo}), prints the fleet
# as node c sees it, and stops everything on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DEMO_DIR:-/tmp/meshnode-demo}
mkdir -p "$dir"
go build -o "$dir/meshnode" ./cmd/meshnode
bin="$dir/meshnode"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT
"$bin" run --data "$dir/a" --name a --port 4710 --api 127.0.0.1:4711 --mdns=false >"$dir/a.out" 2>"$dir/a.log" &
pids+=($!)
for _ in $(seq 50); do grep -q '/tcp/4710/p2p/' "$dir/a.out" 2>/dev/null && break; sleep 0.2; done
token=$("$bin" fleet token --data "$dir/a")
boot=$(grep -m1 '/ip4/127.0.0.1/tcp/4710/p2p/' "$dir/a.out" | tr -d ' ')
for n in b:4720 c:4730; do
  name=${n%%:*} port=${n##*:}
  "$bin" run --data "$dir/$name" --name "$name" --port "$port" --api "127.0.0.1:$((port + 1))" \
    --mdns=false --join "$token" --bootstrap "$boot" >"$dir/$name.out" 2>"$dir/$name.log" &
  pids+=($!)
done
sleep 8
"$bin" nodes --data "$dir/c"
echo
echo "Logs in $dir/*.log. Try: $bin status --data $dir/b. Ctrl-C stops the fleet."
wait
