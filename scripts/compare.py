#!/usr/bin/env python3
"""Runs server comparisons on one machine; see bench-compare.sh.

Default (no --servers): ringcast vs the tokio baseline (vs Redis when
redis-server and redis-benchmark are installed), written to
bench-results/compare.json, which results_table.py turns into the README table.

With --servers a,b,c: any set of server variants, written to
bench-results/compare-servers.json (or --out), compare.json left alone.
Variants:

  ringcast  the current binary, default backend (auto, or RINGCAST_IO_BACKEND)
  uring     the current binary with --io-backend io-uring
  epoll     the current binary with --io-backend epoll
  before    an older ringcast binary (--before-bin PATH or BEFORE_BIN), started
            without --io-backend (binaries from before the io seam lack it)
  baseline  examples/tokio_baseline
  NAME      any name given with --server 'NAME=command ... {addr} ...'
            ({addr} is 127.0.0.1:PORT, {port} the port)

With --ceiling (issue 15; what scripts/bench-compare.sh runs): ringcast
(--no-pin, as the other scripts run it), "default" (ringcast at its default
settings, pinning included: without --no-pin), the
tokio baseline, the ceiling (examples/uring_echo: io_uring frame echo, no
JSON) and Redis, over the CEILING_SCENARIOS (not every variant in every
scenario: see the table), written to bench-results/compare-ceiling.json.
Prints per scenario the medians, p99s, "ratio to baseline", "of ceiling"
and each target met or missed; the syscall target is read from
bench-results/syscalls-per-message.json when --syscalls-json is given.

BUILD_COMMIT, when set, is recorded as the commit the binaries were built from.
Binaries: RINGCAST_BIN (default $CARGO_TARGET_DIR or ROOT/target, then
release/ringcast), BASELINE_BIN (release/examples/tokio_baseline) and
CEILING_BIN (release/examples/uring_echo).
The load generator is always RINGCAST_BIN `bench` with its default io backend
(RINGCAST_IO_BACKEND is removed from its environment), so every variant is
driven by the same generator.

Each scenario runs every variant RUNS times, alternating run by run, a fresh
server per run. With --servers the order rotates each run (a,b,c / b,c,a /
c,a,b ...) so no variant always follows the same one. Printed: every run,
then medians (throughput and p99), "ratio to baseline" for every variant, and
the --ratios pairs (default uring/before and epoll/uring, where present).
"""
import argparse, json, os, re, shlex, shutil, signal, socket, statistics, subprocess, sys, time

SCENARIOS = [
    # name, bench args, metric
    ("small-p32", ["--workload", "echo", "--size", "32", "-c", "64", "-P", "32"], "msgs_per_sec"),
    ("small-p1", ["--workload", "echo", "--size", "32", "-c", "64", "-P", "1"], "msgs_per_sec"),
    # Latency at equal load: both servers at the same open-loop rate, below
    # either one's capacity, latency from each request's intended send time.
    ("small-rate", ["--workload", "echo", "--size", "32", "-c", "64", "--rate", "60000"], "msgs_per_sec"),
    ("large", ["--workload", "echo", "--size", "65536", "-c", "16", "-P", "4"], "mb_per_sec"),
    ("broadcast", ["--workload", "broadcast", "--publishers", "1", "--subscribers", "1000", "-P", "8", "--size", "32"], "deliveries_per_sec"),
]

BUILTIN = ("ringcast", "uring", "epoll", "before", "baseline", "ceiling", "default")

# --ceiling (issue 15): name, bench args, metric, variants run. "of ceiling"
# compares msgs/s (the ceiling's reply is the request itself, ringcast's is
# ~60 bytes longer, so MB/s would flatter ringcast). The ceiling cannot
# broadcast; Redis runs redis-benchmark -t ping at the same -c / -P.
CEILING_SCENARIOS = [
    ("small-p32", ["--workload", "echo", "--size", "32", "-c", "64", "-P", "32"], "msgs_per_sec",
     ["ringcast", "baseline", "ceiling"]),
    ("small-p1", ["--workload", "echo", "--size", "32", "-c", "64", "-P", "1"], "msgs_per_sec",
     ["ringcast", "default", "baseline", "ceiling"]),
    ("large", ["--workload", "echo", "--size", "65536", "-c", "16", "-P", "4"], "msgs_per_sec",
     ["ringcast", "baseline", "ceiling"]),
    ("broadcast", ["--workload", "broadcast", "--publishers", "1", "--subscribers", "1000", "-P", "8", "--size", "32"],
     "deliveries_per_sec", ["ringcast", "baseline"]),
    ("conns-1000", ["--workload", "ping", "-c", "1000", "-P", "1"], "msgs_per_sec",
     ["ringcast", "baseline", "ceiling", "redis"]),
]
# Redis: -c and -P of the scenario it runs in.
REDIS_ARGS = {"conns-1000": (1000, 1), "small-p32": (64, 32), "small-p1": (64, 1)}


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def git_commit(root):
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml", "Cargo.lock", "examples"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (+ uncommitted changes in src/Cargo/examples)" if dirty else "")
    except OSError:
        return "unknown"


class Servers:
    """Turns a variant name into the command that starts it."""

    def __init__(self, root, before_bin, custom):
        tdir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
        if not os.path.isabs(tdir):
            tdir = os.path.join(root, tdir)
        self.ringcast = os.environ.get("RINGCAST_BIN") or os.path.join(tdir, "release", "ringcast")
        self.baseline = os.environ.get("BASELINE_BIN") or os.path.join(tdir, "release", "examples", "tokio_baseline")
        self.ceiling = os.environ.get("CEILING_BIN") or os.path.join(tdir, "release", "examples", "uring_echo")
        self.before = before_bin or os.environ.get("BEFORE_BIN")
        self.custom = custom

    def command(self, kind, port):
        addr = f"127.0.0.1:{port}"
        # --no-pin: the generator shares these cores; pinned shards cannot move
        # off a core the generator is using (p99 4.3 ms pinned vs 0.36 ms not,
        # at 60k msg/s). The baseline is not pinned either.
        common = ["server", "--addr", addr, "--idle-timeout-secs", "0", "--no-pin"]
        if kind == "ringcast":
            return [self.ringcast] + common
        if kind == "uring":
            return [self.ringcast] + common + ["--io-backend", "io-uring"]
        if kind == "epoll":
            return [self.ringcast] + common + ["--io-backend", "epoll"]
        if kind == "before":
            if not self.before:
                sys.exit("compare.py: variant 'before' needs --before-bin PATH or BEFORE_BIN")
            return [self.before] + common
        if kind == "default":
            # ringcast at its default settings (pinning included).
            return [self.ringcast, "server", "--addr", addr, "--idle-timeout-secs", "0"]
        if kind == "baseline":
            return [self.baseline, "--addr", addr]
        if kind == "ceiling":
            return [self.ceiling, "--addr", addr]
        if kind == "redis":
            return ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
        if kind in self.custom:
            return [w.replace("{addr}", addr).replace("{port}", str(port)) for w in shlex.split(self.custom[kind])]
        sys.exit(f"compare.py: unknown server variant {kind!r} (known: {', '.join(BUILTIN + tuple(self.custom))})")

    def check(self, kinds):
        for k in kinds:
            if k == "redis" and not shutil.which("redis-benchmark"):
                sys.exit("compare.py: redis needs redis-server and redis-benchmark (apt-get install -y redis-server)")
            cmd = self.command(k, 0)
            exe = cmd[0]
            if not (os.path.exists(exe) or shutil.which(exe)):
                sys.exit(f"compare.py: {k}: {exe} not found")


def start(servers, kind, root, port):
    logpath = os.path.join(root, "bench-results", f".server-{kind}.log")
    log = open(logpath, "w")
    p = subprocess.Popen(servers.command(kind, port), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
    except RuntimeError:
        p.kill(); p.wait()
        raise RuntimeError(f"{kind} did not start on port {port}; see {logpath}")
    p.logpath = logpath
    return p


def stop(p):
    """SIGTERM, then SIGKILL after 10 s. Returns a note when something was off."""
    if p.poll() is not None:
        return f"server had exited (status {p.returncode}) before the end of the run"
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()
        return "server did not stop within 10 s of SIGTERM; killed"
    return None


def observed_backend(logpath):
    """The io backend a ringcast server logged at start (io_backend="..." now,
    io_uring=features before the seam), else None."""
    try:
        text = open(logpath).read()
    except OSError:
        return None
    m = re.search(r'io_backend="?([\w-]+)"?', text)
    if m:
        return m.group(1)
    if re.search(r"ringcast listening .*io_uring=", text):
        return "io-uring"
    return None


def bench(servers, root, port, args, duration):
    out = os.path.join(root, "bench-results", ".run.json")
    if os.path.exists(out):
        os.remove(out)
    cmd = [servers.ringcast, "bench", "--addr", f"127.0.0.1:{port}",
           "-d", str(duration), "--warmup", "1", "-q", "--json", out] + args
    env = {k: v for k, v in os.environ.items() if k != "RINGCAST_IO_BACKEND"}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, timeout=duration + 120)
    with open(out) as f:
        return json.load(f)


def redis_bench(port, pipeline, requests, conns=64, p99=None):
    """req/s per PING test; with a dict as p99, fills it with p99 µs per
    test (redis-benchmark 7's CSV has p99_latency_ms)."""
    cmd = ["redis-benchmark", "-p", str(port), "-t", "ping", "-c", str(conns), "-P", str(pipeline), "-n", str(requests), "-q", "--csv"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    best = {}
    header = []
    for line in out.splitlines():
        parts = [x.strip('"') for x in line.split(",")]
        if parts and parts[0] == "test":
            header = parts
        elif parts and parts[0].startswith("PING"):
            try:
                best[parts[0]] = float(parts[1])
                if p99 is not None and "p99_latency_ms" in header:
                    p99[parts[0]] = float(parts[header.index("p99_latency_ms")]) * 1000
            except (ValueError, IndexError):
                pass
    return best


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(x):
    return f"{x:.2f}x" if x is not None else "-"


def run_variant(servers, root, kind, port, scen, args, duration):
    """One run of one variant: (throughput, p99 µs, errors, note)."""
    if kind == "redis":
        conns, pipeline = REDIS_ARGS[scen]
        n = int(os.environ.get("REDIS_REQUESTS", "0")) or (400_000 if pipeline == 1 else 8_000_000)
        srv = start(servers, "redis", root, port)
        p99 = {}
        try:
            v = redis_bench(port, pipeline, n, conns, p99)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            return None, None, None, f"redis-benchmark failed: {e}"
        finally:
            stop(srv)
        key = "PING_MBULK" if "PING_MBULK" in v else "PING_INLINE"
        return v.get(key), p99.get(key), 0, None
    srv = start(servers, kind, root, port)
    note, r = None, None
    try:
        r = bench(servers, root, port, args, duration)
    except subprocess.TimeoutExpired:
        note = f"bench did not finish within {duration + 120:.0f} s (hang?)"
    except subprocess.CalledProcessError as e:
        note = f"bench exited with status {e.returncode}"
    finally:
        stop_note = stop(srv)
    note = "; ".join(x for x in (note, stop_note) if x) or None
    if r is None:
        return None, None, None, note
    return r, r["latency_us"]["p99"], r["errors"], note


def ceiling_targets(scen, syscalls=None):
    """Issue 15's targets from the medians: list of (target, figure, met)."""
    t = []

    def g(name, field, kind):
        return scen.get(name, {}).get(field, {}).get(kind)

    def of_ceiling(name):
        return ratio(g(name, "median", "ringcast"), g(name, "median", "ceiling"))

    def add(label, figure, met):
        t.append({"target": label, "figure": figure, "met": met})

    for name, need, label in (("small-p32", 0.85, "small echo P32: >= 0.85 of the ceiling"),
                              ("large", 0.9, "64 KiB echo, 16 conns: >= 0.9 of the ceiling"),
                              ("small-p1", 0.95, "P1, 64 conns: >= 0.95 of the ceiling")):
        if name in scen:
            r = of_ceiling(name)
            add(label, fmt_ratio(r), r is not None and r >= need)
    if "small-p1" in scen:
        for kind, what in (("ringcast", "--no-pin"), ("default", "default settings")):
            a, b = g("small-p1", "median_p99_us", kind), g("small-p1", "median_p99_us", "baseline")
            if a is not None and b is not None:
                add(f"P1 p99 ({what}) <= baseline p99", f"{a:,.0f} vs {b:,.0f} us", a <= b)
    if "broadcast" in scen:
        r = ratio(g("broadcast", "median", "ringcast"), g("broadcast", "median", "baseline"))
        add("broadcast 1 -> 1,000: >= 2x baseline deliveries/s", fmt_ratio(r), r is not None and r >= 2)
        a, b = g("broadcast", "median_p99_us", "ringcast"), g("broadcast", "median_p99_us", "baseline")
        if a is not None and b is not None:
            add("broadcast p99 <= baseline p99", f"{a:,.0f} vs {b:,.0f} us", a <= b)
    if "conns-1000" in scen:
        r = ratio(g("conns-1000", "median", "ringcast"), g("conns-1000", "median", "redis"))
        add("1,000 conns P1: >= 2x Redis PING", fmt_ratio(r), r is not None and r >= 2)
        a = g("conns-1000", "median_p99_us", "ringcast")
        add("1,000 conns P1: p99 <= 5 ms", "-" if a is None else f"{a:,.0f} us", a is not None and a <= 5000)
    if syscalls is not None:
        add("server syscalls per message at P32 (io_uring): <= 0.02", f"{syscalls:.4f}", syscalls <= 0.02)
    return t


def ceiling_mode(a, servers):
    """--ceiling: see the module doc."""
    only = [x for x in a.only.split(",") if x]
    known = [n for n, *_ in CEILING_SCENARIOS]
    for x in only:
        if x not in known:
            sys.exit(f"compare.py: unknown scenario {x!r} (known with --ceiling: {', '.join(known)})")
    plan = [(n, args, m, [k for k in kinds if k != "redis" or shutil.which("redis-benchmark")])
            for n, args, m, kinds in CEILING_SCENARIOS if not only or n in only]
    servers.check(sorted({k for *_, kinds in plan for k in kinds}))
    machine = f"{os.cpu_count()} cores, kernel {os.uname().release}, {cpu_model()}"
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
               "load_at_start": " ".join(load), "runs": a.runs, "duration_s": a.duration,
               "git_commit": git_commit(a.root),
               **({"build_commit": os.environ["BUILD_COMMIT"]} if os.environ.get("BUILD_COMMIT") else {}),
               "servers": {k: " ".join(servers.command(k, 0)).replace(":0", ":PORT").replace("--port 0", "--port PORT")
                           for k in sorted({k for *_, kinds in plan for k in kinds})},
               "generator": f"{servers.ringcast} bench (default io backend); Redis: redis-benchmark -t ping",
               "scenarios": {}}
    print(f"machine: {machine}; load average at start {' '.join(load)}; runs {a.runs} x {a.duration} s", flush=True)
    # Away from the 19200-19500 range other scripts (and engineers) use.
    port = int(os.environ.get("PORT_BASE", "29400"))
    anomalies = []
    for name, args, metric, kinds in plan:
        runs = {k: [] for k in kinds}
        p99 = {k: [] for k in kinds}
        errors = {k: [] for k in kinds}
        loads = []
        for i in range(a.runs):
            order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
            for kind in order:
                port += 1
                r, q, e, note = run_variant(servers, a.root, kind, port, name, args, a.duration)
                v = r[metric] if isinstance(r, dict) else r
                runs[kind].append(v); p99[kind].append(q); errors[kind].append(e)
                if v is None:
                    print(f"{name:10} run {i+1} {kind:8} FAILED: {note}", flush=True)
                    anomalies.append(f"{name} run {i+1} {kind}: {note}")
                    continue
                print(f"{name:10} run {i+1} {kind:8} {metric} {v:>14.1f}  p99 {q if q is not None else '-'} us  errors {e}"
                      + (f"  NOTE: {note}" if note else ""), flush=True)
                if e or note:
                    anomalies.append(f"{name} run {i+1} {kind}: errors {e}" + (f"; {note}" if note else ""))
            loads.append(open("/proc/loadavg").read().split()[0])
        med = {k: median(v) for k, v in runs.items()}
        med_p99 = {k: median(v) for k, v in p99.items()}
        entry = {"args": " ".join(args), "metric": metric, "variants": kinds, "runs": runs, "p99_us": p99,
                 "errors": errors, "median": med, "median_p99_us": med_p99, "load_after_each_run": loads}
        if "redis" in kinds:
            c, pp = REDIS_ARGS[name]
            entry["redis_args"] = f"redis-benchmark -t ping -c {c} -P {pp} (PING_MBULK)"
        entry["ratio_to_baseline"] = {k: ratio(med[k], med.get("baseline")) for k in kinds}
        if "ceiling" in kinds:
            entry["of_ceiling"] = {k: ratio(med[k], med["ceiling"]) for k in kinds}
        results["scenarios"][name] = entry
        for k in kinds:
            m, q = med[k], med_p99[k]
            oc = entry.get("of_ceiling", {}).get(k)
            print(f"{name:10} median {k:8} {metric} {m if m is not None else float('nan'):>14.1f}  p99 {q if q is not None else '-':>8} us"
                  f"  ratio to baseline {fmt_ratio(entry['ratio_to_baseline'][k])}"
                  + (f"  of ceiling {fmt_ratio(oc)}" if "ceiling" in kinds else ""), flush=True)
    out = a.out or os.path.join(a.root, "bench-results", "compare-ceiling.json")
    if only and os.path.exists(out):
        old = json.load(open(out))
        old.setdefault("scenarios", {}).update(results["scenarios"])
        results = {**old, **{k: v for k, v in results.items() if k != "scenarios"}, "scenarios": old["scenarios"]}
    sc = None
    if a.syscalls_json and os.path.exists(a.syscalls_json):
        sj = json.load(open(a.syscalls_json))
        case = sj.get("cases", {}).get("io-uring-p32")
        if case:
            sc = case["per_message"]
            results["syscalls_per_message_p32"] = {"per_message": sc, "date": sj.get("date"), "file": os.path.basename(a.syscalls_json)}
    elif results.get("syscalls_per_message_p32"):
        sc = results["syscalls_per_message_p32"]["per_message"]
    results["targets"] = ceiling_targets(results["scenarios"], sc)
    if anomalies:
        results["anomalies"] = anomalies
        print("anomalies:\n  " + "\n  ".join(anomalies), flush=True)
    print_ceiling_table(results)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"wrote {out}", flush=True)


def print_ceiling_table(results):
    """The Markdown table and the targets, as bench-results/README.md shows them."""
    print(f"\n{results['date']}; {results['machine']}; load average at start {results.get('load_at_start', '?')}; "
          f"medians of {results['runs']} runs x {results['duration_s']} s\n")
    print("| workload (metric) | ringcast | default (pinned) | tokio baseline | ceiling | Redis | ratio to baseline | of ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    names = {"small-p32": "echo 32 B, 64 conns, P32 (msgs/s)", "small-p1": "echo 32 B, 64 conns, P1 (msgs/s)",
             "large": "echo 64 KiB, 16 conns, P4 (msgs/s)", "broadcast": "broadcast 1 → 1,000, P8 (deliveries/s)",
             "conns-1000": "ping, 1,000 conns, P1 (msgs/s)"}

    def cell(e, k):
        m = e["median"].get(k)
        if m is None:
            return "n/a"
        q = e["median_p99_us"].get(k)
        return f"{m:,.0f} (p99 {q / 1000:.1f} ms)" if q is not None else f"{m:,.0f}"

    for name, e in results["scenarios"].items():
        rb = e.get("ratio_to_baseline", {}).get("ringcast")
        oc = e.get("of_ceiling", {}).get("ringcast")
        print(f"| {names.get(name, name)} | {cell(e, 'ringcast')} | {cell(e, 'default')} | {cell(e, 'baseline')} | "
              f"{cell(e, 'ceiling')} | {cell(e, 'redis')} | {fmt_ratio(rb)} | {fmt_ratio(oc) if 'ceiling' in e['median'] else 'n/a'} |")
    print("\n| target (issue 15) | figure | |\n|---|---|---|")
    for t in results.get("targets", []):
        print(f"| {t['target']} | {t['figure']} | {'met' if t['met'] else '**missed**'} |")
    print(flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    ap.add_argument("--servers", default="", help="comma-separated variants, e.g. before,uring,epoll,baseline")
    ap.add_argument("--server", action="append", default=[], metavar="NAME=CMD",
                    help="an extra variant: NAME=command line with {addr} / {port}")
    ap.add_argument("--before-bin", default="", help="ringcast binary for the 'before' variant (else BEFORE_BIN)")
    ap.add_argument("--ratios", default="uring/before,epoll/uring",
                    help="extra A/B throughput ratios to print, where both are in --servers")
    ap.add_argument("--ceiling", action="store_true",
                    help="issue 15: ringcast, default, baseline, ceiling, Redis over CEILING_SCENARIOS (compare-ceiling.json)")
    ap.add_argument("--syscalls-json", default="", help="with --ceiling: syscalls-per-message.json for the syscall target")
    ap.add_argument("--print-ceiling", default="", metavar="JSON", help="print a compare-ceiling.json's table and targets, run nothing")
    ap.add_argument("--out", default="", help="JSON output (default compare.json, or compare-servers.json with --servers)")
    a = ap.parse_args()

    custom = {}
    for spec in a.server:
        name, sep, cmd = spec.partition("=")
        if not sep or not name or not cmd:
            sys.exit(f"compare.py: --server wants NAME=CMD, got {spec!r}")
        custom[name] = cmd
    servers = Servers(a.root, a.before_bin, custom)
    if a.print_ceiling:
        print_ceiling_table(json.load(open(a.print_ceiling)))
        return
    if a.ceiling:
        if a.servers:
            sys.exit("compare.py: --ceiling picks its own servers")
        return ceiling_mode(a, servers)
    default_mode = not a.servers
    kinds = ["ringcast", "baseline"] if default_mode else [k.strip() for k in a.servers.split(",") if k.strip()]
    if "redis" in kinds and not default_mode:
        sys.exit("compare.py: redis speaks RESP, not ringcast frames; it runs (with redis-benchmark) only without --servers")
    if len(set(kinds)) != len(kinds):
        sys.exit("compare.py: a variant is named twice in --servers")
    servers.check(kinds)
    pairs = []
    for pr in a.ratios.split(","):
        if "/" in pr:
            x, y = (s.strip() for s in pr.split("/", 1))
            if x in kinds and y in kinds:
                pairs.append((x, y))
    known = {n for n, _, _ in SCENARIOS}
    only = [s for s in a.only.split(",") if s]
    for s in only:
        if s not in known:
            sys.exit(f"compare.py: unknown scenario {s!r} (known: {', '.join(n for n, _, _ in SCENARIOS)})")

    port = 19200
    machine = f"{os.cpu_count()} cores, kernel {os.uname().release}, {cpu_model()}"
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": machine, "runs": a.runs, "duration_s": a.duration, "scenarios": {}}
    if not default_mode:
        results.update({
            # HEAD of --root when run; the binaries may have been built from
            # another tree (BUILD_COMMIT says which, when set), so their
            # paths and modification times are recorded too.
            "git_commit": git_commit(a.root),
            **({"build_commit": os.environ["BUILD_COMMIT"]} if os.environ.get("BUILD_COMMIT") else {}),
            "binaries": {p: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.path.getmtime(p)))
                         for p in dict.fromkeys(servers.command(k, 0)[0] for k in kinds + ["ringcast"]) if os.path.exists(p)},
            "servers": {k: " ".join(servers.command(k, 0)).replace(":0", ":PORT") for k in kinds},
            "generator": f"{servers.ringcast} bench (default io backend)",
        })
    print(f"machine: {machine}; servers: {', '.join(kinds)}; runs {a.runs} x {a.duration} s", flush=True)
    w = max(8, max(len(k) for k in kinds))
    anomalies = []
    for name, args, metric in SCENARIOS:
        if only and name not in only:
            continue
        runs = {k: [] for k in kinds}
        p99 = {k: [] for k in kinds}
        errors = {k: [] for k in kinds}
        backend = {k: [] for k in kinds}
        for i in range(a.runs):
            order = kinds if default_mode else kinds[i % len(kinds):] + kinds[:i % len(kinds)]
            for kind in order:
                port += 1
                srv = start(servers, kind, a.root, port)
                note = None
                r = None
                try:
                    r = bench(servers, a.root, port, args, a.duration)
                except subprocess.TimeoutExpired:
                    note = f"bench did not finish within {a.duration + 120:.0f} s (hang?)"
                except subprocess.CalledProcessError as e:
                    note = f"bench exited with status {e.returncode}"
                finally:
                    stop_note = stop(srv)
                note = "; ".join(x for x in (note, stop_note) if x) or None
                be = observed_backend(srv.logpath) if kind not in ("baseline", "redis") else None
                backend[kind].append(be)
                if r is None:
                    runs[kind].append(None); p99[kind].append(None); errors[kind].append(None)
                    print(f"{name:10} run {i+1} {kind:{w}} FAILED: {note}", flush=True)
                    anomalies.append(f"{name} run {i+1} {kind}: {note}")
                    continue
                runs[kind].append(r[metric])
                p99[kind].append(r["latency_us"]["p99"])
                errors[kind].append(r["errors"])
                extra = f"  backend {be}" if be and not default_mode else ""
                print(f"{name:10} run {i+1} {kind:{w}} {metric} {r[metric]:>14.1f}  p99 {r['latency_us']['p99']} us  errors {r['errors']}{extra}"
                      + (f"  NOTE: {note}" if note else ""), flush=True)
                if r["errors"] or note:
                    anomalies.append(f"{name} run {i+1} {kind}: errors {r['errors']}" + (f"; {note}" if note else ""))
        med = {k: median(v) for k, v in runs.items()}
        med_p99 = {k: median(v) for k, v in p99.items()}
        entry = {"args": " ".join(args), "metric": metric, "runs": runs, "p99_us": p99,
                 "median": med, "median_p99_us": med_p99}
        if default_mode:
            entry["ratio"] = ratio(med["ringcast"], med["baseline"])
            results["scenarios"][name] = entry
            print(f"{name:10} median ringcast {med['ringcast'] or float('nan'):.1f} baseline {med['baseline'] or float('nan'):.1f} ratio {fmt_ratio(entry['ratio'])}", flush=True)
            continue
        entry["errors"] = errors
        entry["io_backend"] = backend
        if "baseline" in kinds:
            entry["ratio_to_baseline"] = {k: ratio(med[k], med["baseline"]) for k in kinds}
        entry["ratios"] = {f"{x}/{y}": ratio(med[x], med[y]) for x, y in pairs}
        entry["p99_ratios"] = {f"{x}/{y}": ratio(med_p99[x], med_p99[y]) for x, y in pairs}
        results["scenarios"][name] = entry
        for k in kinds:
            m, q = med[k], med_p99[k]
            rb = entry.get("ratio_to_baseline", {}).get(k)
            print(f"{name:10} median {k:{w}} {metric} {m if m is not None else float('nan'):>14.1f}  p99 {q if q is not None else '-'} us"
                  + (f"  ratio to baseline {fmt_ratio(rb)}" if "baseline" in kinds else ""), flush=True)
        for key, v in entry["ratios"].items():
            print(f"{name:10} ratio {key}: {fmt_ratio(v)} (p99 {fmt_ratio(entry['p99_ratios'][key])})", flush=True)
    if default_mode and shutil.which("redis-server") and shutil.which("redis-benchmark") and not a.only:
        red = {}
        for pipeline, n in ((32, 20_000_000), (1, 1_000_000)):
            vals = []
            for i in range(a.runs):
                port += 1
                srv = start(servers, "redis", a.root, port)
                try:
                    v = redis_bench(port, pipeline, n)
                finally:
                    stop(srv)
                vals.append(v.get("PING_MBULK", v.get("PING_INLINE", 0.0)))
                print(f"redis ping -c 64 -P {pipeline} run {i+1}: {vals[-1]:.0f} req/s", flush=True)
            red[f"p{pipeline}"] = {"runs": vals, "median": statistics.median(vals)}
        results["redis"] = red
    if anomalies:
        results["anomalies"] = anomalies
        print("anomalies:\n  " + "\n  ".join(anomalies), flush=True)
    out = a.out or os.path.join(a.root, "bench-results", "compare.json" if default_mode else "compare-servers.json")
    old = {}
    if a.only and os.path.exists(out):
        old = json.load(open(out))
        if default_mode:
            old.setdefault("scenarios", {}).update(results["scenarios"])
            results = {**old, "date": results["date"], "machine": results["machine"]}
        elif old.get("servers") == results.get("servers"):
            old.setdefault("scenarios", {}).update(results["scenarios"])
            results = {**old, **{k: v for k, v in results.items() if k != "scenarios"}, "scenarios": old["scenarios"]}
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
