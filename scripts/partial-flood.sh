#!/usr/bin/env bash
# Memory bound (issue #6): CONNS connections (default 10,000, fewer if
# RLIMIT_NOFILE is lower) each send a maximum-size frame slowly and never
# finish it, against the release server with its defaults (max_partial_bytes
# 256 MiB per shard) plus any arguments given here. Prints the flood's
# summary, the server's own stats, and its RSS and peak RSS (VmHWM).
#   scripts/partial-flood.sh [server args...]
#   FLOOD_ARGS="FRAME FIRST STEP ROUND_MS SECS HOLD_SECS" (see examples/partial_flood.rs)
source "$(dirname "$0")/lib.sh"
PORT=${PORT:-19110}
ulimit -n "$(ulimit -Hn)"
LIMIT=$(ulimit -n)
WANT=${CONNS:-10000}
CONNS=$(( WANT < LIMIT - 500 ? WANT : LIMIT - 500 ))
if [ "$CONNS" -lt "$WANT" ]; then
  echo "RLIMIT_NOFILE is $LIMIT here: $CONNS connections instead of $WANT" >&2
fi
(cd "$ROOT" && cargo build --release --bin ringcast --example partial_flood 2>&1 | tail -n 2)
FLOOD="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/partial_flood"
RINGCAST="${CARGO_TARGET_DIR:-$ROOT/target}/release/ringcast"
start_server ringcast "$PORT" "$@"
status() { grep -E '^(VmRSS|VmHWM)' "/proc/$SERVER_PID/status" | tr -s ' \t\n' ' '; echo; }
echo "server pid $SERVER_PID, before: $(status)"
start=$(date +%s.%N)
# shellcheck disable=SC2086
"$FLOOD" "127.0.0.1:$PORT" "$CONNS" ${FLOOD_ARGS:-}
echo "flood took $(echo "$(date +%s.%N) - $start" | bc) s"
echo "server after: $(status)"
echo "machine: $(machine)"
stop_server
