#!/usr/bin/env bash
# Server CPU time per request, ringcast variants alternating: a figure that
# moves less than throughput on a shared, noisy machine (another tenant taking
# the cores lowers msgs/s for whoever runs then, much less the CPU each
# message costs).
#
# Per round and variant: fresh server (--no-pin), `ringcast bench ARGS -d
# DURATION --warmup 1`, then the server's utime+stime from /proc/PID/stat
# divided by the requests it counted (its "ringcast stopped total_messages="
# log line; warm-up included on both sides). Prints every run and the medians
# and the ratio of each variant to the first.
#
#   BEFORE_BIN=/work/bin-before/ringcast scripts/cpu-per-message.sh \
#       --workload echo --size 65536 -c 16 -P 4
#
# BUILD_COMMIT, when set, is printed as the commit the binary was built from.
# Environment: RINGCAST_BIN (default $CARGO_TARGET_DIR or target, then
# release/ringcast; also the generator, default io backend), BEFORE_BIN,
# VARIANTS ("before uring epoll"; uring/epoll = RINGCAST_BIN --io-backend X,
# before = BEFORE_BIN without --io-backend; any other NAME runs the command
# in CMD_NAME, e.g. CMD_big="target/release/ringcast server --recv-buffers 16"),
# ROUNDS (5), DURATION (4), PORT.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="${RINGCAST_BIN:-$TARGET/release/ringcast}"
VARIANTS="${VARIANTS:-before uring epoll}"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-4}"
PORT="${PORT:-19400}"
TCK=$(getconf CLK_TCK)
TMP="$(mktemp -d /tmp/ringcast-cpu.XXXXXX)"
trap 'stop_server; rm -rf "$TMP"' EXIT INT TERM
[ $# -gt 0 ] || set -- --workload echo --size 32 -c 64 -P 32
case " $VARIANTS " in *" before "*) [ -n "${BEFORE_BIN:-}" ] || { echo "BEFORE_BIN is needed for 'before'" >&2; exit 1; } ;; esac

echo "machine: $(machine)"
echo "repo HEAD: $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)${BUILD_COMMIT:+, binaries built from $BUILD_COMMIT}; bench args: $*; $ROUNDS rounds x ${DURATION} s"
: >"$TMP/rows"
for i in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    PORT=$((PORT + 1))
    case "$v" in
      before) cmd=("$BEFORE_BIN" server) ;;
      uring) cmd=("$BIN" server --io-backend io-uring) ;;
      epoll) cmd=("$BIN" server --io-backend epoll) ;;
      *) var="CMD_$v"
         [ -n "${!var:-}" ] || { echo "unknown variant $v (set CMD_$v to its server command)" >&2; exit 1; }
         read -ra cmd <<<"${!var}" ;;
    esac
    "${cmd[@]}" --addr "127.0.0.1:$PORT" --idle-timeout-secs 0 --no-pin >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    wait_port "$PORT"
    env -u RINGCAST_IO_BACKEND "$BIN" bench --addr "127.0.0.1:$PORT" "$@" -d "$DURATION" --warmup 1 -q \
      --json "$TMP/bench.json" >/dev/null
    cpu=$(awk -v t="$TCK" '{print ($14 + $15) / t}' "/proc/$SERVER_PID/stat")
    stop_server
    msgs=$(grep -o 'ringcast stopped total_messages=[0-9]*' "$TMP/server.log" | grep -o '[0-9]*$')
    python3 - "$i" "$v" "$cpu" "$msgs" "$TMP/bench.json" <<'EOF' | tee -a "$TMP/rows"
import json, sys
i, v, cpu, msgs, path = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
b = json.load(open(path))
rate = b.get('deliveries_per_sec') or b['msgs_per_sec']
p99 = (b.get('latency_us') or {}).get('p99', 0)
print(f"round {i} {v} cpu_us/request {cpu * 1e6 / msgs:.4f} msgs/s {rate:.0f} errors {b['errors']} p99_us {p99:.0f} (server cpu {cpu:.2f} s, {msgs} requests)")
EOF
  done
done
python3 - "$TMP/rows" $VARIANTS <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
variants = sys.argv[2:]
cpu = {v: [float(r[4]) for r in rows if r[2] == v] for v in variants}
thr = {v: [float(r[6]) for r in rows if r[2] == v] for v in variants}
p99 = {v: [float(r[10]) for r in rows if r[2] == v] for v in variants}
med = {v: statistics.median(x) for v, x in cpu.items()}
print("\nvariant   server CPU µs/request (median; runs)          msgs/s or deliveries/s (median)   p99 µs (median)   CPU ratio to " + variants[0])
for v in variants:
    print(f"{v:8}  {med[v]:8.4f}  ({', '.join(f'{x:.3f}' for x in cpu[v])})  {statistics.median(thr[v]):>12,.0f}   {statistics.median(p99[v]):>10,.0f}   {med[v] / med[variants[0]]:.3f}")
EOF
