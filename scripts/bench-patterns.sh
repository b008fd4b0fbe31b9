#!/usr/bin/env bash
# Issue 25: deliveries/s with pattern subscriptions against the same with
# exact channels. 1,000 subscriber connections each hold 10 subscriptions
# (10,000 in all: 1,000 channels x 10 subscribers, --subscriptions 10);
# "exact" subscribes bench-N and publishes to bench-N, "pattern" subscribes
# bench-N.* and publishes to bench-N.x (each pattern matches one channel, so
# the deliveries are the same). Alternating, a fresh server per run; prints
# each run and the medians, with the server's CPU per delivery.
#
#   scripts/bench-patterns.sh            # ROUNDS=3 DURATION=5 PUBLISHERS=4 P=8
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${RINGCAST_BIN:-$TARGET/release/ringcast}"
ROUNDS="${ROUNDS:-3}" DURATION="${DURATION:-5}" PUBLISHERS="${PUBLISHERS:-4}" P="${P:-8}"
PORT="${PORT:-19700}"
TCK=$(getconf CLK_TCK)
TMP="$(mktemp -d /tmp/ringcast-patterns.XXXXXX)"
trap 'stop_server; rm -rf "$TMP"' EXIT INT TERM
echo "machine: $(machine)"
echo "repo HEAD: $(git -C "$ROOT" rev-parse --short=12 HEAD); $ROUNDS rounds x ${DURATION} s; $PUBLISHERS publishers, P$P, 1,000 channels x 10 subscribers, 10 subscriptions per connection"
: >"$TMP/rows"
for i in $(seq 1 "$ROUNDS"); do
  for v in exact pattern; do
    PORT=$((PORT + 1))
    "$BIN" server --addr "127.0.0.1:$PORT" --idle-timeout-secs 0 --no-pin >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$PORT"
    extra=()
    [ "$v" = pattern ] && extra=(--pattern)
    "$BIN" bench --addr "127.0.0.1:$PORT" --workload pubsub --publishers "$PUBLISHERS" \
      --channels 1000 --subscribers 10 --subscriptions 10 -P "$P" --size 32 "${extra[@]}" \
      -d "$DURATION" --warmup 1 -q --json "$TMP/bench.json" >/dev/null
    cpu=$(awk -v t="$TCK" '{print ($14 + $15) / t}' "/proc/$SERVER_PID/stat")
    stop_server
    python3 - "$i" "$v" "$cpu" "$TMP/bench.json" <<'PY' | tee -a "$TMP/rows"
import json, sys
i, v, cpu, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
b = json.load(open(path))
p99 = (b.get('latency_us') or {}).get('p99', 0)
print(f"round {i} {v} deliveries/s {b['deliveries_per_sec']:.0f} errors {b['errors']} p99_us {p99:.0f} server_cpu_s {cpu:.2f}")
PY
  done
done
python3 - "$TMP/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {v: statistics.median(float(r[4]) for r in rows if r[2] == v) for v in ("exact", "pattern")}
p99 = {v: statistics.median(float(r[8]) for r in rows if r[2] == v) for v in ("exact", "pattern")}
for v in med:
    print(f"{v:8} median deliveries/s {med[v]:>12,.0f}   p99 µs {p99[v]:>8,.0f}")
print(f"pattern / exact: {med['pattern'] / med['exact']:.3f}")
PY
