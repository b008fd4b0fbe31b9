#!/usr/bin/env bash
# Connection scale: open 50,000 connections over 8 source addresses, hold
# them, ping a sample of 1,000, and read the server's RSS growth per connection.
source "$(dirname "$0")/lib.sh"
PORT=${PORT:-19104}
ulimit -n "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Both the server and the generator hold one descriptor per connection. Where
# the hard RLIMIT_NOFILE cannot be raised (no CAP_SYS_RESOURCE, as on the
# development VM: 20,000), hold as many as the limit allows and say so.
LIMIT=$(ulimit -n)
WANT=${CONNS:-50000}
CONNS=$(( WANT < LIMIT - 500 ? WANT : LIMIT - 500 ))
if [ "$CONNS" -lt "$WANT" ]; then
  echo "RLIMIT_NOFILE is $LIMIT here: holding $CONNS connections instead of $WANT" >&2
fi
build
start_server ringcast "$PORT" --max-connections $((CONNS + 100))
"$RINGCAST" bench --addr "127.0.0.1:$PORT" --workload connections -c "$CONNS" --source-ips 8 \
  -d 2 -q --label "ringcast $CONNS connections" \
  --json "$RESULTS/connections.json" --hgrm "$RESULTS/connections.hgrm" --plot "$RESULTS/connections.svg"
stop_server
refresh_table
