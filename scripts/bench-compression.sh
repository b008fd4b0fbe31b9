#!/usr/bin/env bash
# Negotiated compression against plain, on one server (issue 16): small
# echo (32 B, under the threshold: must cost nothing), and telemetry-like
# JSON echoes of 16 KiB and 64 KiB, and a 16 KiB telemetry broadcast to 100
# subscribers. Variants plain / deflate / zstd alternate within each round;
# ROUNDS rounds (default 3), medians. Per run: msgs/s, p99, bytes on the
# wire per message (both directions, from the generator), and the server's
# CPU per message (utime+stime of the server process across the run, over
# the responses the generator counted).
#
#   scripts/bench-compression.sh            # DURATION=4 ROUNDS=3
# Environment: RINGCAST_BIN, DURATION, ROUNDS, PORT.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="${RINGCAST_BIN:-$TARGET/release/ringcast}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-4}"
PORT="${PORT:-19600}"
TCK=$(getconf CLK_TCK)
TMP="$(mktemp -d /tmp/ringcast-compress.XXXXXX)"
trap 'stop_server; rm -rf "$TMP"' EXIT INT TERM

echo "machine: $(machine)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); repo HEAD: $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null)"
"$BIN" server --addr "127.0.0.1:$PORT" --idle-timeout-secs 0 --no-pin --stats-interval-secs 0 \
  >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
wait_port "$PORT"

cpu() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

declare -A CASES=(
  [small32_p32]="--workload echo --size 32 -c 64 -P 32"
  [telemetry16k]="--workload echo --content telemetry --size 16384 -c 16 -P 4"
  [telemetry64k]="--workload echo --content telemetry --size 65536 -c 16 -P 4"
  [bcast16k_100]="--workload broadcast --content telemetry --size 16384 --subscribers 100 -P 1"
)
ORDER="small32_p32 telemetry16k telemetry64k bcast16k_100"
: >"$TMP/rows"
for r in $(seq 1 "$ROUNDS"); do
  for c in $ORDER; do
    for v in plain deflate zstd; do
      extra=()
      [ "$v" = plain ] || extra=(--compress "$v")
      before=$(cpu)
      # shellcheck disable=SC2086
      "$BIN" bench --addr "127.0.0.1:$PORT" ${CASES[$c]} "${extra[@]}" -d "$DURATION" --warmup 1 -q \
        --json "$TMP/r.json" >/dev/null 2>"$TMP/bench.err" || { cat "$TMP/bench.err"; exit 1; }
      after=$(cpu)
      python3 - "$TMP/r.json" "$c" "$v" "$r" "$before" "$after" "$TCK" >>"$TMP/rows" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
c, v, r = sys.argv[2:5]
cpu_s = (float(sys.argv[6]) - float(sys.argv[5])) / float(sys.argv[7])
# Broadcast: per delivery; echo: per response.
rate = j.get("deliveries_per_sec") or j["msgs_per_sec"]
n = max(j["messages"], 1)
wire = j.get("bytes_sent", 0) + j.get("bytes_received", 0)
# Server CPU over the whole run (the 1 s warm-up included) per message at
# the measured rate.
cpu_us = cpu_s * 1e6 / max(rate * (j["seconds"] + 1), 1)
print(c, v, r, round(rate), j["latency_us"]["p99"], round(wire / n), round(cpu_us, 2))
EOF
      tail -1 "$TMP/rows"
    done
  done
done
echo
python3 - "$TMP/rows" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
cases = []
for r in rows:
    if r[0] not in cases:
        cases.append(r[0])
print("| case | codec | msgs/s | vs plain | p99 µs | wire bytes/msg | vs plain | server CPU µs/msg | vs plain |")
print("|---|---|---|---|---|---|---|---|---|")
for c in cases:
    med = {}
    for v in ("plain", "deflate", "zstd"):
        sel = [r for r in rows if r[0] == c and r[1] == v]
        med[v] = [st.median(float(r[i]) for r in sel) for i in (3, 4, 5, 6)]
    p = med["plain"]
    for v in ("plain", "deflate", "zstd"):
        m = med[v]
        print(f"| {c} | {v} | {m[0]:,.0f} | {m[0]/p[0]:.2f} | {m[1]:,.0f} | {m[2]:,.0f} | {m[2]/p[2]:.2f} | {m[3]:.2f} | {m[3]/p[3]:.2f} |")
EOF
