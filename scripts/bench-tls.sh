#!/usr/bin/env bash
# TLS against plain on the same server: small echo P32 and P1, 64 KiB echo,
# and new connections per second (connect workload: connect + handshake +
# one ping). Plain and TLS alternate, 3 runs each; prints the medians and
# the machine. A throwaway certificate is made in a temp directory.
# Usage: scripts/bench-tls.sh [seconds per run, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
BIN=${RINGCAST_BIN:-target/release/ringcast}
DIR=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
"$BIN" server --addr 127.0.0.1:7100 --tls-addr 127.0.0.1:7443 --no-pin \
  --tls-cert "$DIR/cert.pem" --tls-key "$DIR/key.pem" --stats-interval-secs 0 \
  2>"$DIR/server.log" &
SERVER=$!
sleep 1
TLS=(--addr 127.0.0.1:7443 --tls-ca "$DIR/cert.pem")
PLAIN=(--addr 127.0.0.1:7100)
run() { # name, transport args..., -- bench args...
  local name=$1; shift
  "$BIN" bench "$@" -d "$SECS" --warmup 1 -q --json "$DIR/$name.json" >/dev/null
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['msgs_per_sec'], r['mb_per_sec'], r['latency_us']['p50'], r['latency_us']['p99'], r['errors'])" "$DIR/$name.json"
}
declare -A CASES=(
  [echo32_p32]="--workload echo --size 32 -c 64 -P 32"
  [echo32_p1]="--workload echo --size 32 -c 64 -P 1"
  [echo64k]="--workload echo --size 65536 -c 16 -P 4"
  [connect]="--workload connect --threads 1"
)
for c in echo32_p32 echo32_p1 echo64k connect; do
  for i in 1 2 3; do
    for t in plain tls; do
      if [ $t = plain ]; then args=("${PLAIN[@]}"); else args=("${TLS[@]}"); fi
      # shellcheck disable=SC2086
      echo "$c $t $i $(run "$c-$t-$i" "${args[@]}" ${CASES[$c]})"
    done
  done
done | tee "$DIR/all.txt"
python3 - "$DIR/all.txt" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
print("\ncase         transport  msgs/s (median of 3)   MB/s   p50 µs  p99 µs  errors")
for case in dict.fromkeys(r[0] for r in rows):
    for t in ("plain", "tls"):
        rs = [r for r in rows if r[0] == case and r[1] == t]
        med = lambda k: st.median(float(r[k]) for r in rs)
        print(f"{case:12} {t:9} {med(3):>12.0f} ({', '.join(f'{float(r[3]):.0f}' for r in rs)})  {med(4):6.1f} {med(5):7.0f} {med(6):7.0f} {sum(int(r[7]) for r in rs):6}")
PY
echo "machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
