#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/ for a fixed time, one after the other,
# at the lowest CPU priority and with one libFuzzer job, and print a summary
# (executions, exec/s, coverage, corpus size, crashes) per target.
#
#   scripts/fuzz.sh                    # 600 s per target (every target)
#   FUZZ_SECS=60 scripts/fuzz.sh       # 60 s per target
#   scripts/fuzz.sh parse_message      # one target only
#
# Environment:
#   FUZZ_SECS     seconds per target (default 600)
#   FUZZ_MAX_LEN  libFuzzer -max_len (default 8192)
#   FUZZ_WORK     scratch directory for the growing corpus, logs and crash
#                 artifacts (default target/fuzz-runs). New inputs never land
#                 in the seed corpus fuzz/corpus/<target>.
#   FUZZ_TOOLCHAIN  toolchain for cargo-fuzz (default nightly)
#   FUZZ_KEEP_GOING 1: keep fuzzing after a crash for the whole FUZZ_SECS
#                 (libFuzzer -fork=1 -ignore_crashes=1: still one process at
#                 a time), saving every crashing input; 0 (default): stop at
#                 the first crash (-jobs=1).
#
# Needs cargo-fuzz and a nightly toolchain. Exits 1 if any target crashed
# (or its run failed), 0 otherwise. Crashing inputs are left in
# $FUZZ_WORK/<target>/artifacts; reproduce one with
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${FUZZ_SECS:-600}"
max_len="${FUZZ_MAX_LEN:-8192}"
keep_going="${FUZZ_KEEP_GOING:-0}"
work="${FUZZ_WORK:-$root/target/fuzz-runs}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
triple="x86_64-unknown-linux-gnu"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in "$root"/fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 2
}

# The fuzz crate has its own workspace and target dir; a CARGO_TARGET_DIR
# set for the main crate must not redirect it.
fuzz_target_dir="$root/fuzz/target"
cd "$root/fuzz"
for t in "${targets[@]}"; do
    echo "== building $t"
    nice -n 19 cargo "+$toolchain" fuzz build -O --target-dir "$fuzz_target_dir" "$t"
done

status=0
summary=()
for t in "${targets[@]}"; do
    bin="$fuzz_target_dir/$triple/release/$t"
    dir="$work/$t"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    log="$dir/run.log"
    echo "== fuzzing $t for ${secs}s (log: $log)"
    count_artifacts() { find "$dir/artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l; }
    before="$(count_artifacts)"
    rc=0
    if [ "$keep_going" = 1 ]; then
        # Fork mode: one child at a time, crashes recorded and skipped.
        mode=(-fork=1 -ignore_crashes=1)
    else
        # -jobs=1 makes libFuzzer fork one worker whose output goes to
        # fuzz-0.log in the current directory; run from $dir so it lands there.
        mode=(-jobs=1 -workers=1)
    fi
    (
        cd "$dir"
        rm -f fuzz-0.log
        nice -n 19 "$bin" "${mode[@]}" \
            -max_total_time="$secs" -max_len="$max_len" \
            -artifact_prefix="$dir/artifacts/" \
            -print_final_stats=1 \
            "$dir/corpus" "$root/fuzz/corpus/$t"
    ) >"$dir/driver.log" 2>&1 || rc=$?
    if [ "$keep_going" = 1 ]; then
        cp "$dir/driver.log" "$log"
    else
        cat "$dir/fuzz-0.log" >"$log" 2>/dev/null || cp "$dir/driver.log" "$log"
    fi

    runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)"
    eps="$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)"
    last="$(grep -E '^#[0-9]+' "$log" | tail -1 || true)"
    if [ -z "$runs" ]; then
        # Fork mode prints "#<runs>: cov: … exec/s: …" progress lines.
        # (its exec/s is the last child's; average over the whole run).
        runs="$(echo "$last" | grep -oE '^#[0-9]+' | tr -d '#' || true)"
        took="$(echo "$last" | grep -oE 'time: [0-9]+' | grep -oE '[0-9]+' || true)"
        if [ -n "$runs" ] && [ -n "$took" ] && [ "$took" -gt 0 ]; then
            eps=$((runs / took))
        fi
    fi
    cov="$(echo "$last" | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)"
    corp="$(echo "$last" | grep -oE 'corp: [0-9]+(/[0-9]+[a-zA-Z]*)?' || true)"
    crashes=$(($(count_artifacts) - before))
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ] ||
        grep -qE 'ERROR: (libFuzzer|AddressSanitizer)|panicked at|deadly signal' "$log"; then
        status=1
        verdict="FAILED (rc $rc; see $log and $dir/artifacts)"
    else
        verdict="no crash"
    fi
    summary+=("$t: ${secs}s, executions ${runs:-?}, exec/s ${eps:-?}, ${cov:-cov ?}, ${corp:-corp ?}, new crash artifacts ${crashes}, $verdict")
done

echo
echo "== fuzz summary"
for line in "${summary[@]}"; do
    echo "$line"
done
exit "$status"
