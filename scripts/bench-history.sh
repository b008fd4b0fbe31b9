#!/usr/bin/env bash
# Issue 24's one-node history figures, ROUNDS rounds (default 3), medians:
#   1. pubsub deliveries/s with history off against on (a fresh server for
#      each, alternating within every round, so each round gives one ratio
#      measured under the same load); the "on" server keeps HISTORY_SIZE
#      publications per channel (it fills up and evicts during the run);
#   2. bytes held per retained publication: get_stats history.bytes /
#      history.publications after each "on" run (the report's `history`);
#   3. recovery of MISSED (default 1,000) missed publications: the recover
#      workload (subscribers cut by a reset, resumed with `recover` while a
#      publisher keeps publishing at RECOVER_RATE/s); time from `subscribe`
#      sent to the last replayed publication received, p50/p99.
# With PROFILE=1, then once per variant (off, on) the same pubsub run with
# the server watched: `perf stat` software events (task-clock, context
# switches, migrations, page faults) and, in a second run, `strace -c -f`
# syscall counts; both divided by the publishes the server counted
# (profile-{off,on}.txt, and a line each in the summary).
# Writes bench-results/history-runs/<UTC date-time>/: one JSON report per
# run (pubsub-off-N, pubsub-on-N, recover-N, with recover-N.hgrm) and
# summary.txt; prints the summary. Stops what it starts.
#
#   scripts/bench-history.sh            # RINGCAST_BIN=... to use another binary
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
HISTORY_SIZE=${HISTORY_SIZE:-1000}
MISSED=${MISSED:-1000}
RECOVER_RATE=${RECOVER_RATE:-20000}
RINGCAST=${RINGCAST_BIN:-$RINGCAST}
PORT=${PORT:-7461}
PUBSUB=(--workload pubsub --publishers 4 --channels 100 --subscribers 10 -P 8 --size 32)
# 4 channels x 2 subscribers, each missing >= MISSED; the server replays up
# to 10 x MISSED (what arrives while a subscriber reconnects adds a few).
RECOVER=(--workload recover --publishers 1 --channels 4 --subscribers 2 -P 8 --size 32
         --rate "$RECOVER_RATE" --missed "$MISSED")
if [ -z "${RINGCAST_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin ringcast 2>&1 | tail -n 1)
fi
OUT="$RESULTS/history-runs/$(date -u +%Y-%m-%d-%H%M)"
mkdir -p "$OUT"
{
  echo "# $(date -u +%FT%TZ) $(machine)"
  echo "# load at start: $(cut -d' ' -f1-3 /proc/loadavg) (other engineers compile on these cores)"
  echo "# pubsub: ${PUBSUB[*]}, ${DURATION}s; history on: --history-size $HISTORY_SIZE"
  echo "# recover: ${RECOVER[*]}, ${DURATION}s; server --history-size $((MISSED * 10)) --history-recover-limit $((MISSED * 10))"
} >"$OUT/summary.txt"

bench() { # name args...
  local name=$1; shift
  "$RINGCAST" bench --addr "127.0.0.1:$PORT" -q -d "$DURATION" --warmup 1 \
    --json "$OUT/$name.json" "$@" >"$OUT/$name.txt" 2>&1 || {
    echo "run $name failed:" >&2; cat "$OUT/$name.txt" >&2; return 1; }
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  start_server ringcast "$PORT"
  bench "pubsub-off-$round" "${PUBSUB[@]}"
  stop_server
  start_server ringcast "$PORT" --history-size "$HISTORY_SIZE"
  bench "pubsub-on-$round" "${PUBSUB[@]}" --history
  stop_server
  start_server ringcast "$PORT" --history-size $((MISSED * 10)) \
    --history-recover-limit $((MISSED * 10))
  bench "recover-$round" "${RECOVER[@]}" --hgrm "$OUT/recover-$round.hgrm"
  stop_server
done

python3 - "$OUT" "$ROUNDS" >>"$OUT/summary.txt" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
med = statistics.median
off = [load(f"pubsub-off-{r}") for r in range(1, rounds + 1)]
on = [load(f"pubsub-on-{r}") for r in range(1, rounds + 1)]
rec = [load(f"recover-{r}") for r in range(1, rounds + 1)]
d_off = [r["deliveries_per_sec"] for r in off]
d_on = [r["deliveries_per_sec"] for r in on]
ratios = [b / a for a, b in zip(d_off, d_on)]
print("pubsub deliveries/s, history off: " + " ".join(f"{v:.0f}" for v in d_off) + f"  median {med(d_off):.0f}")
print("pubsub deliveries/s, history on:  " + " ".join(f"{v:.0f}" for v in d_on) + f"  median {med(d_on):.0f}")
print("on/off per round: " + " ".join(f"{v:.3f}" for v in ratios) + f"  median {med(ratios):.3f} (target >= 0.85)")
p50_off = [r["latency_us"]["p50"] for r in off]
p50_on = [r["latency_us"]["p50"] for r in on]
print(f"pubsub delivery latency p50 us: off {med(p50_off):.0f}, on {med(p50_on):.0f}")
bpp = [r["history"]["bytes_per_publication"] for r in on]
held = [r["history"]["publications"] for r in on]
print("bytes per retained publication (32 B content): " + " ".join(f"{v:.1f}" for v in bpp)
      + f"  median {med(bpp):.1f} ({med(held):.0f} publications held)")
for key, what in (("p50", "p50"), ("p99", "p99"), ("max", "max")):
    vals = [r["latency_us"][key] for r in rec]
    print(f"recovery catch-up {what} us: " + " ".join(str(v) for v in vals) + f"  median {med(vals):.0f}")
f = [r["recover"] for r in rec]
print("recoveries per run: " + " ".join(str(x["recoveries"]) for x in f)
      + "; missed per recovery: " + " ".join(f"{x['missed_per_recovery']:.0f}" for x in f))
print("recovered/s over the run: " + " ".join(f"{x['recovered_per_sec']:.0f}" for x in f)
      + f"  median {med([x['recovered_per_sec'] for x in f]):.0f}")
print("replay rate while catching up (publications/s): "
      + " ".join(f"{x['replay_per_sec']:.0f}" for x in f)
      + f"  median {med([x['replay_per_sec'] for x in f]):.0f}")
print("refused, lost, duplicates, errors: "
      + " ".join(f"{x['refused']}/{x['lost']}/{x['duplicates']}/{r['errors']}" for x, r in zip(f, rec)))
EOF
publishes() { # the server's publish count (get_stats over a fresh connection)
  python3 - "$PORT" <<'PY'
import json, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = b'{"type":"get_stats"}'
s.sendall(struct.pack(">I", len(body)) + body)
def read(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("server closed")
        b += c
    return b
print(json.loads(read(struct.unpack(">I", read(4))[0]))["publishes"])
PY
}

if [ "${PROFILE:-0}" = 1 ]; then
  for v in off on; do
    extra=(); hist=(); [ $v = on ] && extra=(--history-size "$HISTORY_SIZE") && hist=(--history)
    prof="$OUT/profile-$v.txt"; : >"$prof"
    start_server ringcast "$PORT" "${extra[@]}"
    perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p "$SERVER_PID" \
      -o "$OUT/.perf-$v" -- sleep $((DURATION + 1)) &
    perfpid=$!
    bench "profile-perf-$v" "${PUBSUB[@]}" "${hist[@]}"
    wait "$perfpid" || true
    n=$(publishes); echo "perf stat over ${DURATION}s + warm-up; publishes $n" >>"$prof"
    cat "$OUT/.perf-$v" >>"$prof"; rm -f "$OUT/.perf-$v"
    stop_server
    start_server ringcast "$PORT" "${extra[@]}"
    timeout $((DURATION + 3)) strace -c -f -p "$SERVER_PID" -o "$OUT/.strace-$v" &
    stpid=$!
    bench "profile-strace-$v" "${PUBSUB[@]}" "${hist[@]}"
    kill -INT "$stpid" 2>/dev/null || true; wait "$stpid" 2>/dev/null || true
    m=$(publishes); echo "strace -c -f (slows the server); publishes $m" >>"$prof"
    cat "$OUT/.strace-$v" >>"$prof"; rm -f "$OUT/.strace-$v"
    stop_server
    python3 - "$prof" "$n" "$m" "$v" >>"$OUT/summary.txt" <<'PY'
import re, sys
text, n, m, v = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = []
for ev in ("task-clock", "context-switches", "cpu-migrations", "page-faults"):
    g = re.search(r"([\d.,]+)\s+(?:msec\s+)?" + ev, text)
    if g:
        val = float(g.group(1).replace(",", ""))
        out.append(f"{ev} {val / max(n, 1) * (1000 if ev == 'task-clock' else 1):.2f}" + (" us" if ev == "task-clock" else ""))
calls = {}
for line in text.splitlines():
    f = line.split()
    if len(f) >= 5 and f[-1].isidentifier() and f[-1] != "total" and f[3].isdigit():
        calls[f[-1]] = int(f[3])
top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
out.append("syscalls per publish: " + ", ".join(f"{k} {c / max(m, 1):.2f}" for k, c in top))
print(f"profile {v} (per publish, {n} / {m} publishes): " + "; ".join(out))
PY
  done
fi
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/summary.txt"
cat "$OUT/summary.txt"
echo "written: $OUT" >&2
