#!/usr/bin/env bash
# ringcast against the tokio baseline (examples/tokio_baseline.rs) and Redis,
# on the same machine, alternating servers, RUNS runs each (default 3),
# medians and ratios. Writes bench-results/compare.json and refreshes
# the table in bench-results/README.md.
source "$(dirname "$0")/lib.sh"
build
python3 "$ROOT/scripts/compare.py" --root "$ROOT" --runs "${RUNS:-3}" --duration "${DURATION:-4}" "$@"
refresh_table
