#!/usr/bin/env bash
# Soak test: build release, start `ringcast server` on a free 127.0.0.1
# port, drive it with the mixed workload of tests/hostile_soak.rs for
# SOAK_SECS seconds (every request answered exactly once and in order,
# every broadcast delivered exactly once and in order to every live
# subscriber, the server's counters equal to the clients' counts), stop it
# with SIGTERM and check it exits cleanly. Then churn SOAK_CHURN_CONNS
# connections through an in-process server and check no descriptor leaks
# (tests/hostile_floods.rs). Exits non-zero on any discrepancy.
#
#   scripts/soak.sh                     # 60 s, 20,000 churned connections
#   SOAK_SECS=600 scripts/soak.sh
#   SOAK_CHURN_CONNS=0 scripts/soak.sh  # skip the churn part
#
# Environment: SOAK_SECS (default 60), SOAK_CHURN_CONNS (default 20000),
# SOAK_SHARDS (server shards, default 2), CARGO_TARGET_DIR (honoured).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${SOAK_SECS:-60}"
churn="${SOAK_CHURN_CONNS:-20000}"
shards="${SOAK_SHARDS:-2}"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release/ringcast"
log="$(mktemp -t ringcast-soak.XXXXXX.log)"

echo "== building (release)"
cargo build --release --bin ringcast
cargo test --release --test hostile_soak --test hostile_floods --no-run

echo "== starting $bin server (log: $log)"
"$bin" server --addr 127.0.0.1:0 --shards "$shards" --no-pin --log-format json \
    2>"$log" >/dev/null &
pid=$!
cleanup() {
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

addr=""
for _ in $(seq 1 100); do
    addr="$(grep -m1 '"ringcast listening"' "$log" 2>/dev/null |
        sed -n 's/.*"addr":"\([0-9.]*:[0-9]*\)".*/\1/p' || true)"
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "server exited at start:"; cat "$log"; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "server did not report its address:"; cat "$log"; exit 1; }
echo "== server pid $pid on $addr; soaking for ${secs}s"

status=0
# The test bounds every wait itself; the timeout is a last resort.
SOAK_ADDR="$addr" SOAK_SECS="$secs" timeout "$((secs * 2 + 120))" \
    cargo test --release --test hostile_soak -- --nocapture || status=$?

echo "== stopping the server (SIGTERM)"
kill -TERM "$pid"
stopped=0
for _ in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
        stopped=1
        break
    fi
    sleep 0.1
done
if [ "$stopped" -eq 0 ]; then
    echo "FAIL: the server did not exit within 15 s of SIGTERM"
    status=1
else
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "FAIL: the server exited with status $rc"
        status=1
    fi
fi
if grep -q '"level":"ERROR"' "$log"; then
    echo "FAIL: errors in the server log:"
    grep '"level":"ERROR"' "$log" | head -20
    status=1
fi
grep -E '"shard stopped"' "$log" | sed 's/^/server: /' || true

if [ "$churn" -gt 0 ]; then
    echo "== churning $churn connections (in-process server, descriptor count)"
    HOSTILE_CHURN_CONNS="$churn" timeout 600 \
        cargo test --release --test hostile_floods churn_without_descriptor_leak \
        -- --exact --nocapture || status=$?
fi

if [ "$status" -eq 0 ]; then
    echo "== soak passed"
else
    echo "== soak FAILED"
fi
exit "$status"
