#!/usr/bin/env bash
# Cross-node delivery: the same broadcast and pubsub loads against one node
# and against three nodes joined through one redis-server (connections dealt
# round robin over the nodes with `ringcast bench --node`, so 2/3 of every
# delivery crosses Redis). Reports deliveries/s, p99 publish-to-delivery and
# Redis's CPU seconds per run; closed loop (throughput) and open loop at a
# fixed rate below saturation (latency). Everything on 127.0.0.1; stops what it starts.
# RINGCAST=path overrides the binary (default: target/release/ringcast, built).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RESULTS="$ROOT/bench-results/cluster"
RINGCAST=${RINGCAST:-}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
REDIS_PORT=${REDIS_PORT:-19300}
BASE_PORT=${BASE_PORT:-19301}
mkdir -p "$RESULTS"
if [ -z "$RINGCAST" ]; then
  (cd "$ROOT" && cargo build --release --bin ringcast 2>&1 | tail -n 1)
  RINGCAST="$ROOT/target/release/ringcast"
fi
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT INT TERM
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
cpu_secs() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }

run() { # nodes workload label bench-args...
  local nodes=$1 workload=$2 label=$3; shift 3
  redis-server --port "$REDIS_PORT" --save '' --appendonly no --bind 127.0.0.1 >/dev/null 2>&1 &
  local rpid=$!; PIDS+=("$rpid"); wait_port "$REDIS_PORT"
  local shards=$((nodes == 1 ? 2 : 1)) addrs=()
  for i in $(seq 0 $((nodes - 1))); do
    local port=$((BASE_PORT + i)) bp=()
    [ "$nodes" -gt 1 ] && bp=(--backplane "redis://127.0.0.1:$REDIS_PORT")
    "$RINGCAST" server --addr "127.0.0.1:$port" --shards "$shards" --no-pin --idle-timeout-secs 0 "${bp[@]}" >/dev/null 2>&1 &
    PIDS+=("$!"); wait_port "$port"
    [ "$i" -gt 0 ] && addrs+=(--node "127.0.0.1:$port")
  done
  sleep 2 # heartbeats: every node knows the others before the load
  local c0; c0=$(cpu_secs "$rpid")
  "$RINGCAST" bench --addr "127.0.0.1:$BASE_PORT" "${addrs[@]}" --workload "$workload" "$@" \
    -d "$DURATION" --warmup 1 -q --label "$label" --json "$RESULTS/$label.json" >/dev/null
  local c1; c1=$(cpu_secs "$rpid")
  python3 - "$RESULTS/$label.json" "$c0" "$c1" "$DURATION" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); cpu = float(sys.argv[3]) - float(sys.argv[2])
secs = 1 + float(sys.argv[4]) + 0.5  # warm-up and drain included in Redis's CPU window
print(f"{r['label']:<28} {r['deliveries_per_sec']:>12.0f} deliveries/s  p99 {r['latency_us']['p99']:>7} µs"
      f"  errors {r['errors']}  redis CPU {cpu:.2f} s ({100*cpu/secs:.0f} %)")
PY
  cleanup
}

echo "machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for round in $(seq 1 "$ROUNDS"); do
  for nodes in 1 3; do
    run "$nodes" broadcast "broadcast-${nodes}n-r$round" --publishers 3 --subscribers 60 -P 4 --size 32
    run "$nodes" pubsub "pubsub-${nodes}n-r$round" --publishers 6 --channels 10 --subscribers 6 -P 8 --size 32
    # Open loop below saturation: latency without a closed loop's queue.
    run "$nodes" broadcast "broadcast-rate-${nodes}n-r$round" --publishers 3 --subscribers 60 --rate 3000 --size 32
    run "$nodes" pubsub "pubsub-rate-${nodes}n-r$round" --publishers 6 --channels 10 --subscribers 6 --rate 15000 --size 32
  done
done
