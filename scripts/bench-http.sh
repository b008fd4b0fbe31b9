#!/usr/bin/env bash
# The HTTP listener's cost to the message path (issue 26), in one run:
#
#   off     no --http-addr
#   idle    --http-addr, nobody calling it
#   polled  --http-addr, and one dashboard's worth of polling: every second
#           GET /v1/stats, /metrics, /v1/connections?limit=100,
#           /v1/channels?limit=10 and /v1/cluster (what the page fetches),
#           over one keep-alive connection (curl, as a browser does)
#
# The three alternate, a fresh server per run, ROUNDS rounds (default 3) of
# `ringcast bench ARGS` (default: echo 32 B, 64 conns, P32, then the same at
# P1). Per run: msgs/s, p99, and the server's CPU per request (utime+stime
# over the requests it counted: the HTTP thread's work counts too). Prints
# the medians and each variant's ratio to `off`.
#
# Then publishes through POST /v1/publish (keep-alive, an API key set,
# --http-rate-limit 0, one subscriber on the channel reading everything):
# oha (OHA, default oha on PATH then /work/tools/bin/oha) for PUB_SECS
# (default 10) at each of PUB_CONNS (default "1 16 64") connections, or
# Debian's wrk with the same request where oha is missing; publishes/s,
# p50, p99, and the deliveries the server counted beside the tool's count.
#
#   scripts/bench-http.sh
#   ROUNDS=5 DURATION=4 scripts/bench-http.sh
#   NO_PATH=1 scripts/bench-http.sh     # only the publish load
#   NO_PUBLISH=1 scripts/bench-http.sh  # only the message-path comparison
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="${RINGCAST_BIN:-$TARGET/release/ringcast}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-4}"
PORT="${PORT:-19500}"
HPORT="${HPORT:-19590}"
TCK=$(getconf CLK_TCK)
TMP="$(mktemp -d /tmp/ringcast-http.XXXXXX)"
POLLER=""
stop_poller() { if [ -n "$POLLER" ]; then kill "$POLLER" 2>/dev/null || true; wait "$POLLER" 2>/dev/null || true; POLLER=""; fi; }
trap 'stop_poller; stop_server; rm -rf "$TMP"' EXIT INT TERM
[ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release --bin ringcast 2>&1 | tail -n 2)

# One dashboard: the page's five reads once a second, on one connection.
poll_like_the_dashboard() { # http port
  local base="http://127.0.0.1:$1"
  while :; do
    curl -s -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
      "$base/v1/stats" "$base/metrics" "$base/v1/connections?limit=100&sort=pending&order=desc" \
      "$base/v1/channels?limit=10&sort=deliveries" "$base/v1/cluster" || true
    sleep 1
  done
}

echo "machine: $(machine)"
if [ -z "${NO_PATH:-}" ]; then
echo "repo HEAD: $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown); $ROUNDS rounds x ${DURATION} s"
: >"$TMP/rows"
for pipeline in 32 1; do
  for i in $(seq 1 "$ROUNDS"); do
    for v in off idle polled; do
      PORT=$((PORT + 1))
      HPORT=$((HPORT + 1))
      extra=()
      [ "$v" = off ] || extra=(--http-addr "127.0.0.1:$HPORT")
      "$BIN" server --addr "127.0.0.1:$PORT" --idle-timeout-secs 0 --no-pin "${extra[@]}" >"$TMP/server.log" 2>&1 &
      SERVER_PID=$!
      wait_port "$PORT"
      if [ "$v" = polled ]; then
        wait_port "$HPORT"
        poll_like_the_dashboard "$HPORT" &
        POLLER=$!
      fi
      env -u RINGCAST_IO_BACKEND "$BIN" bench --addr "127.0.0.1:$PORT" --workload echo --size 32 -c 64 \
        -P "$pipeline" -d "$DURATION" --warmup 1 -q --json "$TMP/bench.json" >/dev/null
      cpu=$(awk -v t="$TCK" '{print ($14 + $15) / t}' "/proc/$SERVER_PID/stat")
      stop_poller
      stop_server
      msgs=$(grep -o 'ringcast stopped total_messages=[0-9]*' "$TMP/server.log" | grep -o '[0-9]*$')
      python3 - "$pipeline" "$i" "$v" "$cpu" "$msgs" "$TMP/bench.json" <<'EOF' | tee -a "$TMP/rows"
import json, sys
p, i, v, cpu, msgs, path = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
b = json.load(open(path))
p99 = (b.get('latency_us') or {}).get('p99', 0)
print(f"P{p} round {i} {v} cpu_us/request {cpu * 1e6 / msgs:.4f} msgs/s {b['msgs_per_sec']:.0f} p99_us {p99:.0f} errors {b['errors']}")
EOF
    done
  done
done
python3 - "$TMP/rows" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for l in open(sys.argv[1]):
    f = l.split()
    rows[(f[0], f[3])].append((float(f[5]), float(f[7]), float(f[9])))
print("\npipeline variant  msgs/s median (runs)                 ratio  p99 µs median  server CPU µs/request median  ratio")
for p in ("P32", "P1"):
    base = rows[(p, "off")]
    bt, bc = statistics.median(r[1] for r in base), statistics.median(r[0] for r in base)
    for v in ("off", "idle", "polled"):
        rs = rows[(p, v)]
        t, c = statistics.median(r[1] for r in rs), statistics.median(r[0] for r in rs)
        runs = ", ".join(f"{r[1]:,.0f}" for r in rs)
        print(f"{p:8} {v:7} {t:>12,.0f} ({runs})  {t / bt:5.3f}  {statistics.median(r[2] for r in rs):>10,.0f}"
              f"     {c:8.4f}                  {c / bc:5.3f}")
EOF
fi

[ -z "${NO_PUBLISH:-}" ] || exit 0
OHA="${OHA:-$(command -v oha || echo /work/tools/bin/oha)}"
KEY=bench-key
PORT=$((PORT + 1)); HPORT=$((HPORT + 1))
"$BIN" server --addr "127.0.0.1:$PORT" --idle-timeout-secs 0 --no-pin --http-addr "127.0.0.1:$HPORT" \
  --api-key "$KEY" --http-rate-limit 0 >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
wait_port "$PORT"; wait_port "$HPORT"
# One subscriber, reading everything, so each publish is delivered once.
python3 -c '
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = b"{\"type\":\"subscribe\",\"channel\":\"bench\"}"
s.sendall(struct.pack(">I", len(body)) + body)
while s.recv(1 << 20):
    pass
' "$PORT" &
SUB=$!
sleep 0.5
BODY='{"channel":"bench","content":"hello from the HTTP API"}'
# What the subscriber was sent: one delivery per publish that reached it
# (`publishes` in get_stats counts clients' publish requests only).
publishes() {
  curl -s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$HPORT/v1/stats" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["channel_deliveries"])'
}
echo
echo "POST /v1/publish, keep-alive, ${PUB_SECS:-10} s per row; machine: $(machine)"
for c in ${PUB_CONNS:-1 16 64}; do
  before=$(publishes)
  if [ -x "$OHA" ]; then
    "$OHA" -c "$c" -z "${PUB_SECS:-10}s" --no-tui --output-format json -m POST -T application/json \
      -H "Authorization: Bearer $KEY" -d "$BODY" "http://127.0.0.1:$HPORT/v1/publish" >"$TMP/oha.json"
    after=$(publishes)
    python3 -c '
import json, sys
c, before, after, path, ver = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
r = json.load(open(path))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print(f"{ver}: -c {c:<3} publishes/s {s[\"requestsPerSec\"]:>9,.0f}  p50 {p[\"p50\"] * 1e3:.3f} ms  p99 {p[\"p99\"] * 1e3:.3f} ms"
      f"  success {s[\"successRate\"] * 100:.2f} %  statuses {codes}  subscriber got {after - before:,}")
' "$c" "$before" "$after" "$TMP/oha.json" "$("$OHA" --version | head -1)"
  else
    {
      echo 'wrk.method = "POST"'
      echo "wrk.body = '$BODY'"
      echo 'wrk.headers["Content-Type"] = "application/json"'
      echo "wrk.headers[\"Authorization\"] = \"Bearer $KEY\""
    } >"$TMP/post.lua"
    wrk -t $((c < 2 ? 1 : 2)) -c "$c" -d "${PUB_SECS:-10}s" --latency -s "$TMP/post.lua" \
      "http://127.0.0.1:$HPORT/v1/publish" >"$TMP/wrk.txt"
    after=$(publishes)
    echo "wrk (no oha): -c $c $(grep 'Requests/sec' "$TMP/wrk.txt" | tr -s ' ')  p50 $(awk '$1=="50%"{print $2}' "$TMP/wrk.txt")" \
      " p99 $(awk '$1=="99%"{print $2}' "$TMP/wrk.txt")  $(grep -o 'Non-2xx.*' "$TMP/wrk.txt" || echo 'all 2xx')  subscriber got $((after - before))"
  fi
done
kill "$SUB" 2>/dev/null || true
