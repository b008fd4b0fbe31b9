#!/usr/bin/env bash
# Small messages: 32-byte echo, 64 connections, pipeline 32 and pipeline 1.
# Writes bench-results/small-p32.* and small-p1.* (json, hgrm, svg).
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-5}
PORT=${PORT:-19101}
build
start_server ringcast "$PORT"
for p in 32 1; do
  "$RINGCAST" bench --addr "127.0.0.1:$PORT" --workload echo --size 32 -c 64 -P "$p" \
    -d "$DURATION" --warmup 1 -q --label "ringcast small p$p" \
    --json "$RESULTS/small-p$p.json" --hgrm "$RESULTS/small-p$p.hgrm" --plot "$RESULTS/small-p$p.svg"
done
stop_server
refresh_table
