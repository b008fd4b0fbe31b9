#!/usr/bin/env bash
# Broadcast storm with and without one stalled subscriber (issue #6): does a
# client that never reads slow down everyone else?
#
# One publisher at a fixed rate (open loop, so every run offers the same load)
# broadcasts SIZE-byte messages to 100 reading subscribers; latency is publish
# -> delivery at each reader. In the "with" runs, one more client with a 4 KiB
# receive window connects first and never reads, until the server cuts it with
# `slow_consumer` (after max_pending_bytes, 8 MiB by default, is owed to it:
# about 3 s at the defaults here). Runs alternate without/with, ROUNDS times,
# on one server; prints the readers' p50/p99/p99.9 per run, the medians, the
# with/without ratio of the p99 medians, and whether every staller was cut.
#
#   scripts/bench-slow-consumer.sh                   # RATE=5000 SIZE=512 DURATION=8 ROUNDS=3
#   RATE=2000 ROUNDS=5 scripts/bench-slow-consumer.sh
#
# Writes bench-results/slow-consumer.json. Everything on 127.0.0.1; bounded
# by ROUNDS x 2 x (DURATION + ~4 s).
source "$(dirname "$0")/lib.sh"
RATE=${RATE:-5000}
SIZE=${SIZE:-512}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-19107}
OUT="$(mktemp -d /tmp/ringcast-slow.XXXXXX)"
trap 'stop_server; rm -rf "$OUT"' EXIT INT TERM

build
start_server ringcast "$PORT"

# A subscriber that never reads: connects with a 4 KiB receive buffer and
# holds the connection for the run (the server cuts it when it owes it
# max_pending_bytes; get_stats' slow_consumer_disconnects tells).
staller() { # seconds_to_stall ready_file
  python3 - "$PORT" "$1" "$2" <<'EOF'
import socket, sys, time
port, stall, ready = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
open(ready, "w").close()
time.sleep(stall)
EOF
}

# The server's slow_consumer_disconnects, from get_stats.
slow_cuts() {
  python3 - "$PORT" <<'EOF'
import json, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
req = json.dumps({"type": "get_stats"}).encode()
s.sendall(struct.pack(">I", len(req)) + req)
def exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("closed")
        b += c
    return b
(n,) = struct.unpack(">I", exact(4))
print(json.loads(exact(n))["slow_consumer_disconnects"])
EOF
}

run_bench() { # mode round
  "$RINGCAST" bench --addr "127.0.0.1:$PORT" --workload broadcast --publishers 1 \
    --subscribers 100 --rate "$RATE" --size "$SIZE" -d "$DURATION" --warmup 1 -q \
    --label "broadcast 1->100 at $RATE/s, $1 stalled subscriber" --json "$OUT/$1-$2.json" >/dev/null
}

for round in $(seq 1 "$ROUNDS"); do
  before=$(slow_cuts)
  run_bench without "$round"
  staller $((DURATION + 3)) "$OUT/ready-$round" &
  stall_pid=$!
  for _ in $(seq 1 100); do [ -e "$OUT/ready-$round" ] && break; sleep 0.05; done
  between=$(slow_cuts)
  run_bench with "$round"
  after=$(slow_cuts)
  wait "$stall_pid"
  # Cuts during each run: none expected without the staller, one with it.
  echo "$((between - before)) $((after - between))" >"$OUT/cuts-$round"
  echo "round $round done (slow_consumer cuts without/with: $(cat "$OUT/cuts-$round"))" >&2
done

python3 - "$OUT" "$ROUNDS" "$RESULTS/slow-consumer.json" "$(machine)" <<'EOF'
import json, statistics, sys
out, rounds, dest, machine = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {"without": [], "with": []}
cuts = []
for r in range(1, rounds + 1):
    for mode in ("without", "with"):
        d = json.load(open(f"{out}/{mode}-{r}.json"))
        lat = d["latency_us"]
        runs[mode].append({"round": r, "deliveries_per_sec": d["deliveries_per_sec"],
                           "p50_us": lat["p50"], "p99_us": lat["p99"], "p999_us": lat["p999"],
                           "errors": d["errors"]})
    cuts.append(open(f"{out}/cuts-{r}").read().split())
for mode in ("without", "with"):
    for x in runs[mode]:
        print(f"{mode:8} round {x['round']}: {x['deliveries_per_sec']:>10,.0f} deliveries/s  "
              f"p50 {x['p50_us']:>6} us  p99 {x['p99_us']:>6} us  p99.9 {x['p999_us']:>6} us  errors {x['errors']}")
med = {m: statistics.median(x["p99_us"] for x in runs[m]) for m in ("without", "with")}
ratio = med["with"] / med["without"] if med["without"] else float("inf")
print(f"median p99: without {med['without']} us, with {med['with']} us, ratio {ratio:.2f} "
      f"(target <= 1.2); slow_consumer cuts per round (without, with): {cuts}")
print(f"machine: {machine}")
json.dump({"runs": runs, "slow_consumer_cuts": cuts, "median_p99_us": med, "ratio": ratio,
           "machine": machine},
          open(dest, "w"), indent=2)
EOF
