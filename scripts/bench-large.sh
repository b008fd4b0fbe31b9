#!/usr/bin/env bash
# Large messages: 64 KiB echo content, 16 connections, pipeline 4.
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-5}
PORT=${PORT:-19102}
build
start_server ringcast "$PORT"
"$RINGCAST" bench --addr "127.0.0.1:$PORT" --workload echo --size 65536 -c 16 -P 4 \
  -d "$DURATION" --warmup 1 -q --label "ringcast large 64KiB" \
  --json "$RESULTS/large.json" --hgrm "$RESULTS/large.hgrm" --plot "$RESULTS/large.svg"
stop_server
refresh_table
