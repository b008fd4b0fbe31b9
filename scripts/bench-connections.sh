#!/usr/bin/env bash
# Connection scale: open 50,000 connections over 8 source addresses, hold
# them, ping a sample of 1,000, and read the server's RSS growth per connection.
source "$(dirname "$0")/lib.sh"
CONNS=${CONNS:-50000}
PORT=${PORT:-19104}
ulimit -n "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
build
start_server ringcast "$PORT" --max-connections $((CONNS + 100))
"$RINGCAST" bench --addr "127.0.0.1:$PORT" --workload connections -c "$CONNS" --source-ips 8 \
  -d 2 -q --label "ringcast $CONNS connections" \
  --json "$RESULTS/connections.json" --hgrm "$RESULTS/connections.hgrm" --plot "$RESULTS/connections.svg"
stop_server
refresh_table
