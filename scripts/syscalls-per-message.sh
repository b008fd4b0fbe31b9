#!/usr/bin/env bash
# Server system calls per message, per io backend and pipeline depth.
#
# For each backend (io-uring, epoll) and pipeline depth (32, 1): starts the
# server (one shard, --no-pin, so every message goes through one loop), waits
# for its port, attaches `strace -c -f -p PID` (all its threads), runs a fixed
# count of echo requests with `ringcast bench --requests N --warmup 0`, detaches
# strace (SIGINT: it prints its summary), then stops the server. Prints the
# server's syscalls / message and the top syscalls, and a Markdown table at the
# end; writes bench-results/syscalls-per-message.json.
#
# strace slows the server a lot; the counts, not the times, are the result.
# The generator is the same binary with its default backend (RINGCAST_IO_BACKEND
# is removed from its environment), not traced.
#
#   scripts/syscalls-per-message.sh
#   N=200000 BACKENDS="epoll" PIPELINES="32" scripts/syscalls-per-message.sh
#
# BUILD_COMMIT, when set, is printed as the commit the binary was built from.
# Environment: RINGCAST_BIN (default $CARGO_TARGET_DIR or target, then
# release/ringcast), N (requests per case, default 100000), CONNS (64), SIZE
# (32), BACKENDS ("io-uring epoll"), PIPELINES ("32 1"), TOP (8), PORT (29950),
# OUT_JSON (bench-results/syscalls-per-message.json; empty: none).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap - EXIT INT TERM
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="${RINGCAST_BIN:-$TARGET/release/ringcast}"
N="${N:-100000}"
CONNS="${CONNS:-64}"
SIZE="${SIZE:-32}"
BACKENDS="${BACKENDS:-io-uring epoll}"
PIPELINES="${PIPELINES:-32 1}"
TOP="${TOP:-8}"
PORT="${PORT:-29950}"
OUT_JSON="${OUT_JSON-$RESULTS/syscalls-per-message.json}"
TMP="$(mktemp -d /tmp/ringcast-syscalls.XXXXXX)"
SRV="" ; ST=""

cleanup() {
  [ -n "$ST" ] && kill -INT "$ST" 2>/dev/null || true
  [ -n "$SRV" ] && kill -TERM "$SRV" 2>/dev/null || true
  [ -n "$ST" ] && wait "$ST" 2>/dev/null || true
  [ -n "$SRV" ] && wait "$SRV" 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "files kept in $TMP" >&2 || rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

[ -x "$BIN" ] || { echo "build first ($BIN missing)" >&2; exit 1; }
command -v strace >/dev/null || { echo "strace is needed: apt-get install -y strace" >&2; exit 1; }

echo "machine: $(machine)"
echo "binary: $BIN"
echo "repo HEAD: $(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null || echo unknown)${BUILD_COMMIT:+; binaries built from $BUILD_COMMIT}"
echo "echo ${SIZE} B, ${CONNS} connections, ${N} requests per case; server: --shards 1 --no-pin"
echo

CASES=()
for backend in $BACKENDS; do
  for p in $PIPELINES; do
    name="$backend-p$p"
    PORT=$((PORT + 1))
    "$BIN" server --addr "127.0.0.1:$PORT" --io-backend "$backend" --shards 1 --no-pin \
      --idle-timeout-secs 0 >"$TMP/$name.server.log" 2>&1 &
    SRV=$!
    wait_port "$PORT"
    sleep 0.2 # the probe connection from wait_port is closed and reaped before strace attaches
    strace -c -f -p "$SRV" -o "$TMP/$name.strace" 2>"$TMP/$name.strace.err" &
    ST=$!
    # strace says "Process N attached" for each thread; wait until it has.
    for _ in $(seq 1 100); do grep -q attached "$TMP/$name.strace.err" 2>/dev/null && break; sleep 0.05; done
    sleep 0.5
    t0=$(date +%s.%N)
    env -u RINGCAST_IO_BACKEND "$BIN" bench --addr "127.0.0.1:$PORT" --workload echo --size "$SIZE" \
      -c "$CONNS" -P "$p" --requests "$N" --warmup 0 -q --json "$TMP/$name.bench.json" >"$TMP/$name.bench.out" 2>&1 \
      || { echo "$name: bench failed:" >&2; cat "$TMP/$name.bench.out" >&2; }
    t1=$(date +%s.%N)
    sleep 0.3 # let the server finish closing the generator's connections
    kill -INT "$ST"; wait "$ST" 2>/dev/null || true; ST=""
    kill -TERM "$SRV"
    for _ in $(seq 1 100); do kill -0 "$SRV" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SRV" 2>/dev/null || true
    wait "$SRV" 2>/dev/null || true; SRV=""
    echo "$t0 $t1" >"$TMP/$name.time"
    CASES+=("$name")
  done
done

python3 - "$TMP" "$TOP" "$N" "$OUT_JSON" "$(machine)" "${BUILD_COMMIT:-$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}" "$CONNS" "$SIZE" "${CASES[@]}" <<'EOF'
import json, os, re, sys, time
tmp, top, n, out_json, machine, commit, conns, size = sys.argv[1:9]
cases = sys.argv[9:]
top, n = int(top), int(n)
rows, results = [], {}
for name in cases:
    backend, p = name.rsplit("-p", 1)
    calls = {}
    total = None
    for line in open(os.path.join(tmp, f"{name}.strace")):
        f = line.split()
        if len(f) < 5 or not f[-1].replace("_", "").isalnum() or f[0].startswith("%"):
            continue
        try:
            c = int(f[3])
        except ValueError:
            continue
        if f[-1] == "total":
            total = c
        else:
            calls[f[-1]] = c
    if total is None:
        total = sum(calls.values())
    try:
        b = json.load(open(os.path.join(tmp, f"{name}.bench.json")))
    except (OSError, ValueError):
        b = {"messages": 0, "errors": None}
    log = open(os.path.join(tmp, f"{name}.server.log")).read()
    m = re.search(r"ringcast stopped total_messages=(\d+)", log)
    srv_msgs = int(m.group(1)) if m else None
    t0, t1 = map(float, open(os.path.join(tmp, f"{name}.time")).read().split())
    msgs = b["messages"] or n
    per = total / msgs if msgs else float("nan")
    topn = sorted(calls.items(), key=lambda kv: -kv[1])[:top]
    print(f"== {name}: {total} server syscalls / {msgs} messages = {per:.3f} per message"
          f"  (bench errors {b.get('errors')}, server counted {srv_msgs} messages, {t1 - t0:.1f} s under strace)")
    for k, v in topn:
        print(f"   {k:24} {v:>10}  {v / msgs:8.4f}/msg")
    results[name] = {"backend": backend, "pipeline": int(p), "requests": n, "messages": msgs,
                     "server_messages": srv_msgs, "bench_errors": b.get("errors"),
                     "syscalls": total, "per_message": per, "calls": calls}
    rows.append(f"| {backend} | {p} | {msgs:,} | {total:,} | **{per:.3f}** | "
                + ", ".join(f"{k} {v / msgs:.3f}" for k, v in topn[:5]) + " |")
print()
print(f"Server syscalls per message (echo {size} B, {conns} conns, --shards 1, strace -c -f; {machine}; commit {commit})")
print()
print("| backend | pipeline | messages | server syscalls | per message | top syscalls (per message) |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
if out_json:
    with open(out_json, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine, "commit": commit,
                   "workload": f"echo {size} B, {conns} connections, --requests {n}, --warmup 0",
                   "server": "--shards 1 --no-pin --idle-timeout-secs 0", "cases": results}, f, indent=2)
        f.write("\n")
    print(f"\nwrote {out_json}")
EOF
