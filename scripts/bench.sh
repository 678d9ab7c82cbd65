#!/usr/bin/env bash
# Runs meshnode's benchmarks. Each benchmark is one experiment that reports
# its figures next to a baseline measured in the same run (see the comments
# on each Benchmark function), so it runs with -benchtime=1x; -count repeats
# it (default 3) because this machine is shared and noisy.
#
#   scripts/bench.sh                 # everything
#   scripts/bench.sh Convergence     # one benchmark (a -bench regexp)
set -euo pipefail
cd "$(dirname "$0")/.."
pattern=${1:-.}
count=${COUNT:-3}
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -srm), $(nproc) cores, $(go version | cut -d' ' -f3)"
echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
go test ./node ./mesh ./transfer -run '^$' -bench "$pattern" -benchtime 1x -count "$count" -timeout 60m
