#!/usr/bin/env bash
# The router issue's before/after: the message paths that routing touches,
# the binary before the change (BEFORE_BIN) against this tree's (RINGCAST_BIN),
# alternating in one run (scripts/cpu-per-message.sh: a fresh server per run,
# server CPU per request from /proc, medians of ROUNDS, default 3).
#
#   BEFORE_BIN=/tmp/ringcast-before scripts/bench-router.sh | tee out.txt
#
# Workloads: broadcast 1 -> 1,000 (P8, 32 B), pubsub (6 publishers, 100
# channels x 10 subscribers, P8, 32 B), echo P32 and P1 (32 B, 64 conns),
# echo 64 KiB (16 conns, P4). For broadcast and pubsub, "CPU per request"
# is per publish: divide by the deliveries per publish (broadcast: 1,000
# recipients; pubsub: 10 subscribers per channel) for CPU per delivery.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
export VARIANTS="${VARIANTS:-before uring}" ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-4}"
run() {
  echo; echo "=== $1"; shift
  bash "$here/cpu-per-message.sh" "$@" 2>&1 | grep -v '^round' || true
}
run "broadcast 1 -> 1,000, P8, 32 B" --workload broadcast --publishers 1 --subscribers 1000 -P 8 --size 32
run "pubsub: 6 publishers, 100 channels x 10 subscribers, P8, 32 B" --workload pubsub --publishers 6 --channels 100 --subscribers 10 -P 8 --size 32
run "echo 32 B, 64 conns, P32" --workload echo --size 32 -c 64 -P 32
run "echo 32 B, 64 conns, P1" --workload echo --size 32 -c 64 -P 1
run "echo 64 KiB, 16 conns, P4" --workload echo --size 65536 -c 16 -P 4
