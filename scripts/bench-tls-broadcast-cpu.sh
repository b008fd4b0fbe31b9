#!/usr/bin/env bash
# Server CPU per broadcast delivery, plain against TLS recipients, on one
# ringcast server (plain and TLS listeners): a broadcast is serialised once,
# and each TLS recipient encrypts its own copy, so the difference is the
# per-recipient encryption (and the TLS transport's copies).
#
# Per run: `ringcast bench --workload broadcast` (1 publisher, P8, 32 B, N
# subscribers) against the plain or the TLS port, plain and TLS alternating.
# Once every connection is made (the generator's first "warm-up" progress
# line) and again when it exits, the script reads the server's utime + stime
# (/proc/PID/stat) and its ringcast_broadcast_deliveries_total (/metrics);
# CPU per delivery = dCPU / ddeliveries, so the TLS handshakes of the set-up
# are not counted. Prints every run, then medians.
#
#   scripts/bench-tls-broadcast-cpu.sh [seconds per run, default 4]
#
# Environment: SUBSCRIBERS (default "100 1000"), RUNS (3), RINGCAST_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
SECS=${1:-4}
RUNS=${RUNS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-100 1000}
TARGET="${CARGO_TARGET_DIR:-target}"
BIN=${RINGCAST_BIN:-$TARGET/release/ringcast}
TCK=$(getconf CLK_TCK)
DIR=$(mktemp -d)
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$DIR"' EXIT INT TERM
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
"$BIN" server --addr 127.0.0.1:7121 --tls-addr 127.0.0.1:7421 --metrics-addr 127.0.0.1:7921 \
  --tls-cert "$DIR/cert.pem" --tls-key "$DIR/key.pem" --no-pin \
  --idle-timeout-secs 0 --stats-interval-secs 0 2>"$DIR/server.log" &
SERVER=$!
for _ in $(seq 1 200); do
  (exec 3<>/dev/tcp/127.0.0.1/7421) 2>/dev/null && break
  sleep 0.05
done

sample() { # -> "cpu_seconds deliveries"
  local cpu d
  cpu=$(awk -v t="$TCK" '{print ($14 + $15) / t}' "/proc/$SERVER/stat")
  d=$(python3 -c '
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:7921/metrics").read().decode()
print(sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith("ringcast_broadcast_deliveries_total")))')
  echo "$cpu $d"
}

echo "machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "HEAD $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); $RUNS runs x ${SECS} s; 1 publisher, P8, 32 B"
for n in $SUBSCRIBERS; do
  for i in $(seq 1 "$RUNS"); do
    for t in plain tls; do
      if [ $t = plain ]; then args=(--addr 127.0.0.1:7121); else args=(--addr 127.0.0.1:7421 --tls-ca "$DIR/cert.pem"); fi
      "$BIN" bench "${args[@]}" --workload broadcast --publishers 1 --subscribers "$n" -P 8 --size 32 \
        -d "$SECS" --warmup 1 --json "$DIR/run.json" >/dev/null 2>"$DIR/progress.txt" &
      bench=$!
      until grep -qE 'warm-up|measuring' "$DIR/progress.txt" 2>/dev/null; do
        kill -0 "$bench" 2>/dev/null || break
        sleep 0.02
      done
      read -r cpu0 d0 < <(sample)
      wait "$bench"
      read -r cpu1 d1 < <(sample)
      python3 - "$n" "$t" "$i" "$cpu0" "$d0" "$cpu1" "$d1" "$DIR/run.json" <<'PY'
import json, sys
n, t, i = sys.argv[1:4]
cpu0, d0, cpu1, d1 = map(float, sys.argv[4:8])
r = json.load(open(sys.argv[8]))
dd = d1 - d0
print(n, t, i, f"{(cpu1 - cpu0) * 1e6 / dd:.4f}" if dd else "nan", f"{r['deliveries_per_sec']:.0f}", int(dd), f"{cpu1 - cpu0:.2f}", r["errors"])
PY
    done
  done
done | tee "$DIR/all.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$DIR/all.txt" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
print("\nsubscribers transport  server CPU µs/delivery median (runs)      deliveries/s median")
med = {}
for n in dict.fromkeys(r[0] for r in rows):
    for t in ("plain", "tls"):
        rs = [r for r in rows if r[0] == n and r[1] == t]
        med[n, t] = st.median(float(r[3]) for r in rs)
        runs = ", ".join(r[3] for r in rs)
        print(f"{n:>11} {t:9}  {med[n, t]:8.4f} ({runs:30})  {st.median(float(r[4]) for r in rs):>12,.0f}")
    print(f"{n:>11} TLS - plain: {med[n, 'tls'] - med[n, 'plain']:.4f} µs per delivery ({med[n, 'tls'] / med[n, 'plain']:.2f}x)")
PY
