#!/usr/bin/env bash
# ringcast against the tokio baseline (examples/tokio_baseline.rs), the
# ceiling (examples/uring_echo.rs: the same shard-per-core io_uring layout,
# frames echoed byte for byte, no JSON) and Redis, on the same machine, in
# one run: servers alternate (order rotating each run), a fresh server per
# run, RUNS runs each (default 3), medians. Workloads (issue 15): small echo
# P32 (-c 64 -P 32), P1 (-c 64 -P 1; ringcast also at its default settings,
# pinned), 64 KiB echo (-c 16 -P 4), broadcast 1 -> 1,000 (no ceiling: it
# cannot broadcast) and 1,000 connections P1 (ping; Redis with
# redis-benchmark -c 1000 -P 1 -t ping when installed). Then server syscalls
# per message at P32 (strace, scripts/syscalls-per-message.sh). Prints per
# workload the medians and p99s, "ratio to baseline", "of ceiling", and every
# target met or missed; writes bench-results/compare-ceiling.json and
# bench-results/syscalls-p32.json (io_uring, P32).
#
#   scripts/bench-compare.sh                       # everything
#   RUNS=5 DURATION=4 scripts/bench-compare.sh --only small-p32,large
#   NO_SYSCALLS=1 scripts/bench-compare.sh         # skip the strace pass
#   scripts/bench-compare.sh --classic [...]       # issue 5's ringcast vs baseline
#                                                  # (compare.json, README table)
#
# Binaries: RINGCAST_BIN, BASELINE_BIN, CEILING_BIN (default
# $CARGO_TARGET_DIR or target, then release/...); NO_BUILD=1 uses them as
# they are.
source "$(dirname "$0")/lib.sh"
if [ "${1:-}" = "--classic" ]; then
  shift
  [ -n "${NO_BUILD:-}" ] || build
  python3 "$ROOT/scripts/compare.py" --root "$ROOT" --runs "${RUNS:-3}" --duration "${DURATION:-4}" "$@"
  refresh_table
  exit 0
fi
[ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release --bin ringcast --example tokio_baseline --example uring_echo 2>&1 | tail -n 2)
SYSJSON="$RESULTS/syscalls-p32.json"
if [ -z "${NO_SYSCALLS:-}" ]; then
  if command -v strace >/dev/null; then
    # Only io_uring at P32 here (the target); the script's default does
    # both backends and both depths.
    OUT_JSON="$SYSJSON" N="${N:-200000}" BACKENDS="${BACKENDS:-io-uring}" PIPELINES="${PIPELINES:-32}" \
      bash "$ROOT/scripts/syscalls-per-message.sh"
  else
    echo "strace not installed: no syscall figure (apt-get install -y strace)" >&2
  fi
fi
python3 "$ROOT/scripts/compare.py" --root "$ROOT" --ceiling --runs "${RUNS:-3}" --duration "${DURATION:-4}" \
  --syscalls-json "$SYSJSON" "$@"
