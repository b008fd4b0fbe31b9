#!/usr/bin/env bash
# ringcast over TLS against the tokio-rustls baseline (examples/tokio_baseline.rs
# with --tls-addr), in one run: small echo P32 and P1, 64 KiB echo, and new
# connections per second (connect workload: connect + handshake + one ping).
# Both servers run side by side (the idle one costs nothing); for every case
# the servers alternate, 3 runs each; prints every run, then the medians and
# the ratio of each server to the last one named (the baseline).
#
# Besides msgs/s, each run records the server's CPU time (utime + stime from
# /proc/PID/stat) over the whole bench command, and prints it per message
# (warm-up included on both sides: CPU / (msgs/s x (seconds + warm-up))).
# On a shared, noisy machine that figure moves less than the throughput.
#
#   scripts/bench-tls-compare.sh [seconds per run, default 3]
#
# Environment:
#   SERVERS   which servers, in order (default "ringcast-tls tokio-tls"); the
#             ratio column divides by the last. Also: ringcast-plain,
#             tokio-plain, and alt-tls / alt-plain (ALT_BIN, a second ringcast
#             binary, e.g. built with another crypto provider).
#   CASES     which cases (default "echo32_p32 echo32_p1 echo64k connect"; also
#             bcast100 and bcast1000: 1 publisher (P8, 32 B) to 100 or 1,000
#             subscribers, where msgs/s are deliveries/s and the CPU column
#             is server CPU per delivery)
#   RUNS      runs per case and server (default 3)
#   RINGCAST_BIN, BASELINE_BIN  the binaries (default: $CARGO_TARGET_DIR or
#             target, release/ringcast and release/examples/tokio_baseline);
#             RINGCAST_BIN is also the load generator.
# A throwaway ECDSA P-256 certificate is made in a temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh # wait_port (its EXIT trap is replaced below)
SECS=${1:-3}
WARMUP=1
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
RUNS=${RUNS:-3}
TARGET="${CARGO_TARGET_DIR:-target}"
BIN=${RINGCAST_BIN:-$TARGET/release/ringcast}
BASE=${BASELINE_BIN:-$TARGET/release/examples/tokio_baseline}
SERVERS=${SERVERS:-ringcast-tls tokio-tls}
CASES=${CASES:-echo32_p32 echo32_p1 echo64k connect}
TCK=$(getconf CLK_TCK)
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
CERT=(--tls-cert "$DIR/cert.pem" --tls-key "$DIR/key.pem")

declare -A PID
# Each server process serves plain on 71xx and TLS on 74xx.
"$BIN" server --addr 127.0.0.1:7101 --tls-addr 127.0.0.1:7401 "${CERT[@]}" --no-pin \
  --idle-timeout-secs 0 --stats-interval-secs 0 2>"$DIR/ringcast.log" &
PID[ringcast]=$!
PIDS+=("$!")
"$BASE" --addr 127.0.0.1:7102 --tls-addr 127.0.0.1:7402 "${CERT[@]}" >"$DIR/tokio.log" 2>&1 &
PID[tokio]=$!
PIDS+=("$!")
case " $SERVERS " in *" alt-"*)
  "${ALT_BIN:?ALT_BIN is needed for alt-*}" server --addr 127.0.0.1:7103 --tls-addr 127.0.0.1:7403 \
    "${CERT[@]}" --no-pin --idle-timeout-secs 0 --stats-interval-secs 0 2>"$DIR/alt.log" &
  PID[alt]=$!
  PIDS+=("$!")
  wait_port 7403
  ;;
esac
wait_port 7401
wait_port 7402

transport_args() { # server name -> generator args
  case "$1" in
    ringcast-plain) echo "--addr 127.0.0.1:7101" ;;
    tokio-plain) echo "--addr 127.0.0.1:7102" ;;
    alt-plain) echo "--addr 127.0.0.1:7103" ;;
    ringcast-tls) echo "--addr 127.0.0.1:7401 --tls-ca $DIR/cert.pem" ;;
    tokio-tls) echo "--addr 127.0.0.1:7402 --tls-ca $DIR/cert.pem" ;;
    alt-tls) echo "--addr 127.0.0.1:7403 --tls-ca $DIR/cert.pem" ;;
    *) echo "unknown server $1" >&2; exit 1 ;;
  esac
}
cpu_of() { awk -v t="$TCK" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
declare -A ARGS=(
  [echo32_p32]="--workload echo --size 32 -c 64 -P 32"
  [echo32_p1]="--workload echo --size 32 -c 64 -P 1"
  [echo64k]="--workload echo --size 65536 -c 16 -P 4"
  [connect]="--workload connect --threads 1"
  # Not in the default CASES: msgs = deliveries, so the CPU column is
  # server CPU per delivery (the publish amortised over the recipients).
  [bcast100]="--workload broadcast --publishers 1 --subscribers 100 -P 8 --size 32"
  [bcast1000]="--workload broadcast --publishers 1 --subscribers 1000 -P 8 --size 32"
)

echo "machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "servers: $SERVERS; $RUNS runs x ${SECS} s (+${WARMUP} s warm-up); HEAD $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
for c in $CASES; do
  for i in $(seq 1 "$RUNS"); do
    for s in $SERVERS; do
      pid=${PID[${s%-*}]}
      before=$(cpu_of "$pid")
      # shellcheck disable=SC2046,SC2086
      "$BIN" bench $(transport_args "$s") ${ARGS[$c]} -d "$SECS" --warmup "$WARMUP" -q \
        --json "$DIR/run.json" >/dev/null
      after=$(cpu_of "$pid")
      python3 - "$c" "$s" "$i" "$before" "$after" "$SECS" "$WARMUP" "$DIR/run.json" <<'PY'
import json, sys
c, s, i, before, after, secs, warm, path = sys.argv[1:]
r = json.load(open(path))
cpu = float(after) - float(before)
msgs = r["msgs_per_sec"] * (float(secs) + float(warm))
us = cpu * 1e6 / msgs if msgs else float("nan")
print(c, s, i, f"{r['msgs_per_sec']:.0f}", f"{r['mb_per_sec']:.1f}", r["latency_us"]["p50"], r["latency_us"]["p99"], r["errors"], f"{us:.3f}")
PY
    done
  done
done | tee "$DIR/all.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$DIR/all.txt" $SERVERS <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
servers = sys.argv[2:]
base = servers[-1]
print(f"\ncase         server           msgs/s median (runs)               MB/s   p50 µs  p99 µs  errors  srv CPU µs/msg  msgs/s and CPU/msg ratios to {base}")
for case in dict.fromkeys(r[0] for r in rows):
    m = {}
    for s in servers:
        rs = [r for r in rows if r[0] == case and r[1] == s]
        m[s] = {k: st.median(float(r[k]) for r in rs) for k in (3, 4, 5, 6, 8)}
        m[s]["runs"] = ", ".join(f"{float(r[3]):.0f}" for r in rs)
        m[s]["errors"] = sum(int(r[7]) for r in rs)
    for s in servers:
        x = m[s]
        ratio = f"      {x[3] / m[base][3]:.2f}  {x[8] / m[base][8]:.2f}" if s != base else ""
        print(f"{case:12} {s:15} {x[3]:>11.0f} ({x['runs']:28}) {x[4]:7.1f} {x[5]:7.0f} {x[6]:7.0f} {x['errors']:6}  {x[8]:10.3f}{ratio}")
PY
