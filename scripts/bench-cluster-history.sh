#!/usr/bin/env bash
# Issue 24's cluster figures for channel history held in Redis, ROUNDS
# rounds (default 3), medians, each variant with a fresh redis-server and
# fresh nodes:
#   1. pubsub deliveries/s, closed loop: one node with history (no
#      backplane) against three nodes with history through Redis (connections
#      dealt round robin over the nodes); Redis CPU per publication;
#   2. the wait for Redis's offset: open-loop pubsub latency on three nodes,
#      history off against on (on a history channel even the publisher's own
#      node delivers only what it reads back from Redis);
#   3. recovery across nodes: the recover workload with --missed 1000,
#      every resume on the next node (time from subscribe to the last
#      replayed publication).
# Everything on 127.0.0.1; stops what it starts. RINGCAST=path overrides
# the binary. Writes bench-results/cluster-history/<UTC date-time>/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RINGCAST=${RINGCAST:-}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
REDIS_PORT=${REDIS_PORT:-19400}
BASE_PORT=${BASE_PORT:-19401}
OUT="$ROOT/bench-results/cluster-history/$(date -u +%Y-%m-%d-%H%M)"
mkdir -p "$OUT"
if [ -z "$RINGCAST" ]; then
  (cd "$ROOT" && cargo build --release --bin ringcast 2>&1 | tail -n 1)
  RINGCAST="$ROOT/target/release/ringcast"
fi
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT INT TERM
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
cpu_secs() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }

# run nodes history(0/N) label bench-args...
run() {
  local nodes=$1 hist=$2 label=$3; shift 3
  redis-server --port "$REDIS_PORT" --save '' --appendonly no --bind 127.0.0.1 >/dev/null 2>&1 &
  local rpid=$!; PIDS+=("$rpid"); wait_port "$REDIS_PORT"
  local shards=$((nodes == 1 ? 2 : 1)) addrs=() h=()
  [ "$hist" -gt 0 ] && h=(--history-size "$hist" --history-recover-limit "$hist")
  for i in $(seq 0 $((nodes - 1))); do
    local port=$((BASE_PORT + i)) bp=()
    [ "$nodes" -gt 1 ] && bp=(--backplane "redis://127.0.0.1:$REDIS_PORT")
    "$RINGCAST" server --addr "127.0.0.1:$port" --shards "$shards" --no-pin --idle-timeout-secs 0 \
      "${bp[@]}" "${h[@]}" >/dev/null 2>&1 &
    PIDS+=("$!"); wait_port "$port"
    [ "$i" -gt 0 ] && addrs+=(--node "127.0.0.1:$port")
  done
  sleep 2 # heartbeats: every node knows the others before the load
  local c0; c0=$(cpu_secs "$rpid")
  "$RINGCAST" bench --addr "127.0.0.1:$BASE_PORT" "${addrs[@]}" "$@" \
    -d "$DURATION" --warmup 1 -q --label "$label" --json "$OUT/$label.json" >/dev/null
  local c1; c1=$(cpu_secs "$rpid")
  echo "$label $c0 $c1" >>"$OUT/redis-cpu.txt"
  cleanup
}

PUBSUB=(--workload pubsub --publishers 6 --channels 10 --subscribers 6 -P 8 --size 32)
RATE=(--workload pubsub --publishers 6 --channels 10 --subscribers 6 --rate 6000 --size 32)
RECOVER=(--workload recover --publishers 2 --channels 4 --subscribers 2 --missed 1000 --size 32)
{
  echo "machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "# binary: $(git -C "$ROOT" rev-parse --short HEAD), ${DURATION}s runs, $ROUNDS rounds"
} >"$OUT/machine.txt"
for round in $(seq 1 "$ROUNDS"); do
  run 1 10000 "pubsub-1n-history-r$round" "${PUBSUB[@]}" --history
  run 3 10000 "pubsub-3n-history-r$round" "${PUBSUB[@]}" --history
  run 3 0 "rate-3n-plain-r$round" "${RATE[@]}"
  run 3 10000 "rate-3n-history-r$round" "${RATE[@]}" --history
  run 1 20000 "recover-1n-r$round" "${RECOVER[@]}"
  run 3 20000 "recover-3n-r$round" "${RECOVER[@]}"
done
python3 - "$OUT" "$DURATION" <<'PY' | tee "$OUT/summary.txt"
import json, sys, glob, os, statistics as st
out, dur = sys.argv[1], float(sys.argv[2])
cpu = {l.split()[0]: float(l.split()[2]) - float(l.split()[1]) for l in open(f"{out}/redis-cpu.txt")}
def runs(prefix):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{prefix}-r*.json"))]
print(open(f"{out}/machine.txt").read().strip())
one = runs("pubsub-1n-history"); three = runs("pubsub-3n-history")
d1 = st.median(r["deliveries_per_sec"] for r in one); d3 = st.median(r["deliveries_per_sec"] for r in three)
print(f"pubsub with history, deliveries/s: 1 node {d1:.0f}, 3 nodes {d3:.0f}: {d3/d1:.2f}x")
per_pub = [cpu[r["label"]] / max(r["messages"], 1) * 1e6 for r in three]
print(f"redis CPU per publication (3 nodes, history): median {st.median(per_pub):.1f} us")
for kind in ("plain", "history"):
    rs = runs(f"rate-3n-{kind}")
    p50 = st.median(r["latency_us"]["p50"] for r in rs); p99 = st.median(r["latency_us"]["p99"] for r in rs)
    print(f"3 nodes, open loop 6,000/s, {kind}: p50 {p50:.0f} us, p99 {p99:.0f} us")
for n in ("1n", "3n"):
    rs = runs(f"recover-{n}")
    p50 = st.median(r["latency_us"]["p50"] for r in rs); p99 = st.median(r["latency_us"]["p99"] for r in rs)
    lost = sum(r["recover"]["lost"] + r["recover"]["duplicates"] for r in rs if "recover" in r)
    print(f"recover 1,000 missed, {n}: catch-up p50 {p50:.0f} us, p99 {p99:.0f} us (lost+duplicates {lost})")
PY
