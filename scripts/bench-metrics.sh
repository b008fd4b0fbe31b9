#!/usr/bin/env bash
# Cost of --metrics-addr (request timing on the shards): metrics off and on,
# interleaved, one server run per measurement. Echo 32 B, 64 connections,
# pipeline 32 and 1. Prints msgs/s and the server's CPU time per message
# (utime + stime / messages handled), then the medians. On a shared machine
# run it niced up (nice -n -10) and read the ranges, not just the medians.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
PORT=${PORT:-19121}
MPORT=${MPORT:-19122}
TCK=$(getconf CLK_TCK)
OUT=$(mktemp)
JSON=$(mktemp)
build
echo "machine: $(machine)"
for r in $(seq 1 "$ROUNDS"); do
  for p in 32 1; do
    for mode in off on; do
      extra=()
      [ "$mode" = on ] && extra=(--metrics-addr "127.0.0.1:$MPORT")
      start_server ringcast "$PORT" "${extra[@]}"
      "$RINGCAST" bench --addr "127.0.0.1:$PORT" --workload echo --size 32 -c 64 -P "$p" \
        -d "$DURATION" --warmup 0 -q --json "$JSON" >/dev/null
      cpu=$(awk '{print $14+$15}' "/proc/$SERVER_PID/stat")
      stop_server
      total=$(sed 's/\x1b\[[0-9;]*m//g' "$RESULTS/.server-ringcast.log" | grep 'ringcast stopped' |
        grep -o 'total_messages=[0-9]*' | cut -d= -f2)
      rate=$(python3 -c "import json;print(int(json.load(open('$JSON'))['msgs_per_sec']))")
      line="round=$r P=$p metrics=$mode msgs_per_sec=$rate cpu_ns_per_msg=$(python3 -c "print(round($cpu/$TCK*1e9/$total))")"
      echo "$line" | tee -a "$OUT"
    done
  done
done
python3 - "$OUT" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(lambda: ([], []))
for l in open(sys.argv[1]):
    m = dict(kv.split("=") for kv in l.split())
    d[(int(m["P"]), m["metrics"])][0].append(int(m["msgs_per_sec"]))
    d[(int(m["P"]), m["metrics"])][1].append(int(m["cpu_ns_per_msg"]))
for (p, mode), (rate, cpu) in sorted(d.items(), reverse=True):
    print(f"P{p:<3} metrics {mode:<3}  msgs/s median {int(statistics.median(rate)):>9} "
          f"[{min(rate)}..{max(rate)}]  server CPU ns/msg median {int(statistics.median(cpu))} "
          f"[{min(cpu)}..{max(cpu)}]")
PY
rm -f "$OUT" "$JSON"
