# Shared helpers for the benchmark scripts (sourced, not run).
# Everything targets 127.0.0.1 and stops what it starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="$ROOT/bench-results"
RINGCAST="$ROOT/target/release/ringcast"
BASELINE="$ROOT/target/release/examples/tokio_baseline"
mkdir -p "$RESULTS"
SERVER_PID=""

build() {
  (cd "$ROOT" && cargo build --release --bin ringcast --example tokio_baseline 2>&1 | tail -n 2)
}

wait_port() { # port
  for _ in $(seq 1 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "server on port $1 did not come up" >&2
  return 1
}

start_server() { # kind port [extra args...]
  local kind=$1 port=$2; shift 2
  case "$kind" in
    # --no-pin: the generator shares the cores (see bench-results/README.md).
    ringcast) "$RINGCAST" server --addr "127.0.0.1:$port" --idle-timeout-secs 0 --no-pin "$@" >"$RESULTS/.server-$kind.log" 2>&1 & ;;
    baseline) "$BASELINE" --addr "127.0.0.1:$port" "$@" >"$RESULTS/.server-$kind.log" 2>&1 & ;;
    redis) redis-server --port "$port" --save '' --appendonly no --protected-mode no "$@" >"$RESULTS/.server-$kind.log" 2>&1 & ;;
    *) echo "unknown server kind $kind" >&2; return 1 ;;
  esac
  SERVER_PID=$!
  wait_port "$port"
}

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT INT TERM

machine() {
  echo "$(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
}

refresh_table() {
  python3 "$ROOT/scripts/results_table.py" "$RESULTS"
}
