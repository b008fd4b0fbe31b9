#!/usr/bin/env bash
# Measures which system calls ringcast makes, to build and check the seccomp
# allowlist in deploy/seccomp-ringcast.json.
#
# Runs the release binary under `strace -f` (every thread, from its execve on)
# in several server configurations, drives each with the client and the load
# generator (ping, echo small and 64 KiB, broadcast, get_stats, custom, text,
# 2,000 connections, auth, rate limit, per-IP limit, server_full, a frame too
# large, idle timeout), stops it with SIGTERM (once with SIGINT), and also
# traces the container's health check (ringcast client performance). Prints
# the union of syscall names, one per line; with --diff, also compares it
# with the profile and fails if the profile lacks any of them.
#
# Needs strace and python3. Everything runs on 127.0.0.1; the run takes
# about a minute and a half on 2 cores (strace slows the server down).
#   scripts/seccomp-syscalls.sh          # print the measured set
#   scripts/seccomp-syscalls.sh --diff   # and compare with the profile
BIN_OVERRIDE="${RINGCAST:-}"
# wait_port and ROOT (lib.sh also sets `set -euo pipefail`).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN="${BIN_OVERRIDE:-$ROOT/target/release/ringcast}"
PROFILE="$ROOT/deploy/seccomp-ringcast.json"
OUT="$(mktemp -d /tmp/ringcast-seccomp.XXXXXX)"
PORT="${PORT:-29917}"
ADDR="127.0.0.1:$PORT"
MPORT=$((PORT + 1))
trap '[ -n "${KEEP:-}" ] || rm -rf "$OUT"' EXIT
[ -z "${KEEP:-}" ] || echo "traces kept in $OUT" >&2

[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
command -v strace >/dev/null || { echo "strace is needed (apt-get install strace)" >&2; exit 1; }

# run_case NAME SIGNAL CLIENT_FN SERVER_ARGS...
run_case() {
  local name=$1 sig=$2 drive=$3; shift 3
  strace -f -qq -o "$OUT/$name.trace" "$BIN" server --addr "$ADDR" "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  wait_port "$PORT"
  "$drive"
  # Signal the server itself (strace's child), as a service manager would;
  # strace then exits with the server's status.
  local server
  server="$(cat "/proc/$pid/task/$pid/children")"
  kill -s "$sig" $server
  local rc=0
  wait "$pid" || rc=$?
  echo "case $name: server exit $rc" >&2
  [ "$rc" -eq 0 ] || { cat "$OUT/$name.log" >&2; exit 1; }
}

bench() { "$BIN" bench --addr "$ADDR" -q --warmup 0 "$@" >/dev/null; }

drive_all() {
  "$BIN" client demo --addr "$ADDR" >/dev/null
  printf '/ping\n/echo hi\n/broadcast all\n/stats\n/custom {"k":1}\nplain text\n/exit\n' |
    "$BIN" client interactive --addr "$ADDR" >/dev/null
  bench --workload echo -c 64 -P 8 -d 2
  bench --workload echo --size 65536 -c 8 -P 4 -d 1
  bench --workload broadcast --publishers 2 --subscribers 50 -P 4 -d 1
  bench --workload mixed -c 16 -P 4 -d 1
  bench --workload connections -c 2000 -d 1
  # A frame above --max-frame-bytes (closed with frame_too_large) and a
  # connection left open through the shutdown (drained with shutting_down).
  python3 - "$PORT" <<'EOF'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(struct.pack(">I", 10_000_000))
s.settimeout(5); s.recv(4096); s.close()
EOF
  # The metrics endpoint, where the case turned it on.
  python3 - "$MPORT" <<'EOF' || true
import socket, sys
for path in ("/metrics", "/healthz", "/nope"):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    except OSError:
        break
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()
EOF
  exec 7<>"/dev/tcp/127.0.0.1/$PORT"
}

drive_limits() {
  "$BIN" client demo --addr "$ADDR" --token secret >/dev/null
  bench --workload ping -c 4 -d 1 --token secret
  # Wrong token, over the per-IP limit, over the rate limit, idle timeout.
  "$BIN" client demo --addr "$ADDR" --token wrong >/dev/null 2>&1 || true
  bench --workload connections -c 40 -d 1 --token secret 2>/dev/null || true
  bench --workload ping -c 1 -P 64 -d 1 --token secret 2>/dev/null || true
  exec 7<>"/dev/tcp/127.0.0.1/$PORT"
  sleep 2.5
}

drive_health() {
  # The container's HEALTHCHECK (deploy/Containerfile), traced on its own: it
  # runs inside the container, so the profile must allow it too.
  strace -f -qq -o "$OUT/health.trace" "$BIN" client performance --count 1 --window 1 \
    --timeout 3 --addr "$ADDR" >/dev/null
  "$BIN" client demo --addr "$ADDR" >/dev/null
}

run_case pinned TERM drive_all
exec 7>&-
printf 'shards = 3\npin = false\nstats_interval_secs = 1\n' >"$OUT/ringcast.toml"
run_case nopin TERM drive_all --config "$OUT/ringcast.toml" --wake eventfd --log-format json \
  --metrics-addr "127.0.0.1:$MPORT"
exec 7>&-
run_case limits INT drive_limits --no-pin --shards 1 --auth-token secret --rate-limit 100 \
  --max-connections-per-ip 20 --max-connections 30 --idle-timeout-secs 1
exec 7>&-
run_case health TERM drive_health

# Names from lines like "1234  name(...", "1234  <... name resumed>".
sed -nE 's/^[0-9]+ +(<\.\.\. )?([a-z0-9_]+)(\(| resumed>).*/\2/p' "$OUT"/*.trace | sort -u >"$OUT/measured"

for f in "$OUT"/*.trace; do
  printf '%-8s %3d syscalls\n' "$(basename "$f" .trace)" \
    "$(sed -nE 's/^[0-9]+ +(<\.\.\. )?([a-z0-9_]+)(\(| resumed>).*/\2/p' "$f" | sort -u | wc -l)" >&2
done
cat "$OUT/measured"

if [ "${1:-}" = "--diff" ]; then
  python3 - "$PROFILE" "$OUT/measured" <<'EOF'
import json, sys
profile = json.load(open(sys.argv[1]))
entries = profile["syscalls"]
allowed = {n for e in entries if e["action"] == "SCMP_ACT_ALLOW" for n in e["names"]}
# Answered on purpose with an error the caller handles: clone3 gets ENOSYS
# (glibc falls back to clone, whose flags the profile checks).
answered = {n for e in entries if e["action"] != "SCMP_ACT_ALLOW" for n in e["names"]}
# Denied on purpose: the client's isatty(stdout) check (ioctl TCGETS) reads
# EPERM as "not a terminal", and ioctl is too broad to allow for that.
denied_ok = {"ioctl"}
measured = set(open(sys.argv[2]).read().split())
missing = sorted(measured - allowed - answered - denied_ok)
print("measured, answered with an errno on purpose:", " ".join(sorted(measured & (answered | denied_ok))) or "none", file=sys.stderr)
print("measured but not allowed:", " ".join(missing) or "none", file=sys.stderr)
print("allowed but not measured here:", " ".join(sorted(allowed - measured)) or "none", file=sys.stderr)
sys.exit(1 if missing else 0)
EOF
fi
