#!/usr/bin/env bash
# Broadcast fan-out: 1 publisher -> 1,000 subscribers, 32-byte content,
# publisher pipeline 8. Latency is publish -> delivery at each subscriber.
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-5}
PORT=${PORT:-19103}
build
start_server ringcast "$PORT"
"$RINGCAST" bench --addr "127.0.0.1:$PORT" --workload broadcast --publishers 1 --subscribers 1000 \
  -P 8 --size 32 -d "$DURATION" --warmup 1 -q --label "ringcast broadcast 1->1000" \
  --json "$RESULTS/broadcast.json" --hgrm "$RESULTS/broadcast.hgrm" --plot "$RESULTS/broadcast.svg"
stop_server
refresh_table
