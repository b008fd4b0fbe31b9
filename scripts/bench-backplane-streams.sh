#!/usr/bin/env bash
# Backplane stream layouts (issue 13): one Redis stream for every node's
# publishes (what src/cluster does) against one stream per channel hash slot
# (S = 16, 64), with readers that read every slot stream or only the slots
# their node has subscribers in (--every 2: half the channels), and a
# per-slot variant whose readers merge by sender sequence to keep one
# sender's order (--merge). examples/backplane_streams plays 3 nodes'
# writers (XADD pipelines of up to 512, MAXLEN ~ 100000) and readers (XREAD
# COUNT 512 BLOCK 500) against a throwaway redis-server started here.
#
# Two passes, layouts alternating within each round, ROUNDS rounds, medians:
#   closed loop: ENTRIES entries as fast as Redis and the readers take them
#                (writers pause while a reader is > 250 ms behind);
#   open loop:   OPEN_ENTRIES entries at RATE entries/s (latency below
#                saturation).
# Raw lines: bench-results/backplane-streams/runs.txt. Stops what it starts;
# gives up after MAX_SECS (default 1200) and each run after 120 s.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RESULTS="$ROOT/bench-results/backplane-streams"
ROUNDS=${ROUNDS:-3}
ENTRIES=${ENTRIES:-300000}
OPEN_ENTRIES=${OPEN_ENTRIES:-60000}
RATE=${RATE:-15000}
NODES=${NODES:-3}
CHANNELS=${CHANNELS:-"10 1000"}
MAX_SECS=${MAX_SECS:-1200}
BIN=${BIN:-}
mkdir -p "$RESULTS"
RAW="$RESULTS/runs.txt"
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build --release --example backplane_streams 2>&1 | tail -n 1)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/backplane_streams"
fi
PORT=${REDIS_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
RPID=
cleanup() { [ -n "$RPID" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null; RPID=; true; }
trap cleanup EXIT INT TERM
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
RPID=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.05; done

START=$(date +%s)
{
  echo "# $(date -u +%FT%TZ) $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(redis-server --version | cut -d' ' -f3)"
  echo "# uptime at start: $(uptime)"
} | tee "$RAW"

# label | example arguments
VARIANTS_CLOSED=(
  "one|--layout one"
  "slots16|--layout slots --streams 16"
  "slots64|--layout slots --streams 64"
  "slots16-half|--layout slots --streams 16 --every 2"
  "slots64-half|--layout slots --streams 64 --every 2"
  "slots64-merge|--layout slots --streams 64 --merge"
)
VARIANTS_OPEN=(
  "one|--layout one"
  "slots16|--layout slots --streams 16"
  "slots64|--layout slots --streams 64"
  "slots64-half|--layout slots --streams 64 --every 2"
  "slots64-merge|--layout slots --streams 64 --merge"
)
one_run() { # mode label channels round args...
  local mode=$1 label=$2 ch=$3 round=$4; shift 4
  if [ $(($(date +%s) - START)) -gt "$MAX_SECS" ]; then echo "MAX_SECS reached, stopping" >&2; return 1; fi
  local extra=(--entries "$ENTRIES")
  [ "$mode" = open ] && extra=(--entries "$OPEN_ENTRIES" --rate "$RATE")
  timeout 120 "$BIN" --redis "redis://127.0.0.1:$PORT" --redis-pid "$RPID" --clk-tck "$(getconf CLK_TCK)" \
    --nodes "$NODES" --channels "$ch" --prefix "bps$round$mode$label$ch" \
    --label "$mode/$label/ch$ch/r$round" "${extra[@]}" "$@" | tee -a "$RAW"
}
for round in $(seq 1 "$ROUNDS"); do
  for ch in $CHANNELS; do
    for v in "${VARIANTS_CLOSED[@]}"; do
      # shellcheck disable=SC2086
      one_run closed "${v%%|*}" "$ch" "$round" ${v#*|} || break 3
    done
    for v in "${VARIANTS_OPEN[@]}"; do
      # shellcheck disable=SC2086
      one_run open "${v%%|*}" "$ch" "$round" ${v#*|} || break 3
    done
  done
done
echo "# uptime at end: $(uptime)" | tee -a "$RAW"
cleanup

python3 - "$RAW" <<'PY'
import sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("label="):
        continue
    kv = dict(f.split("=", 1) for f in line.split())
    mode, variant, ch, _ = kv["label"].split("/")
    rows.setdefault((mode, ch, variant), []).append(kv)
def med(rs, k, fmt="{:.0f}"):
    v = [float(r[k]) for r in rs if r[k] != "na"]
    if not v:
        return "na"
    m = st.median(v)
    return fmt.format(m) + (f" ({fmt.format(min(v))}–{fmt.format(max(v))})" if len(v) > 1 else "")
order = ["one", "slots16", "slots64", "slots16-half", "slots64-half", "slots64-merge"]
for mode in ("closed", "open"):
    print(f"\n{mode} loop (medians of {max(len(r) for r in rows.values())} runs, range in brackets)")
    print("| channels | layout | keys per XREAD | written/s | delivered/s | p50 ms | p99 ms | Redis CPU µs/entry | client CPU µs/entry | out of order | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (m, ch, variant) in sorted(rows, key=lambda k: (int(k[1][2:]), order.index(k[2]))):
        if m != mode:
            continue
        rs = rows[(m, ch, variant)]
        p50 = med([{**r, "x": float(r["p50_us"]) / 1000} for r in rs], "x", "{:.1f}")
        p99 = med([{**r, "x": float(r["p99_us"]) / 1000} for r in rs], "x", "{:.1f}")
        print(f"| {ch[2:]} | {variant} | {rs[0]['keys_read_per_reader']} | {med(rs, 'written_per_s')} | {med(rs, 'delivered_per_s')} "
              f"| {p50} | {p99} | {med(rs, 'redis_cpu_us_per_entry', '{:.1f}')} | {med(rs, 'client_cpu_us_per_entry', '{:.1f}')} "
              f"| {med(rs, 'out_of_order')} | {sum(int(r['lost']) for r in rs)} |")
PY
