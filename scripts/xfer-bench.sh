#!/usr/bin/env bash
# Two-process transfer benchmark (issue 14): `meshnode get` between two real
# daemons on 127.0.0.1, each figure beside a baseline measured in the same
# run (tar | tar; sync, a raw libp2p stream between the same two daemons,
# into nothing and to a file on the receiver's disk, fsynced, find | xargs
# cat). Builds meshnode from this tree, then runs
# scripts/xferbench; its flags pass through:
#
#   scripts/xfer-bench.sh                              # every case, 3 runs
#   scripts/xfer-bench.sh -runs 1 -cases small,big-tcp
#   scripts/xfer-bench.sh -dir /var/tmp/xb -keep       # keep the trees for the next time
#
# Cases: small (20,000 x 4 KiB), medium (2,000 x 256 KiB), big-tcp and
# big-quic (one 1 GiB file), scan (the holder's first scan of the 20,000
# files). The work dir must be on the disk to measure (default: under
# $TMPDIR or /tmp); it needs about 2 GB for the trees, 1 GB for a received
# big tree, 1 GB for a raw stream's file (-raw-bytes), and 1.2 GB per run
# of small and medium together (their copies
# are deleted only at the end: on ext4 without a journal, creating files
# right after deleting many is several times slower, so give the disk a
# few minutes after deleting large trees before measuring).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/meshnode" ./cmd/meshnode
go build -o "$tmp/xferbench" ./scripts/xferbench
"$tmp/xferbench" -bin "$tmp/meshnode" "$@"
