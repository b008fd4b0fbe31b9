#!/usr/bin/env python3
"""Runs the ringcast vs baseline (vs Redis) comparison; see bench-compare.sh.

Each scenario runs every server RUNS times, alternating (ringcast, baseline,
ringcast, baseline, ...) so slow drift on a shared machine hits both alike.
Each run starts a fresh server, runs `ringcast bench`, and stops it.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, time

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

def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")

def start(kind, root, port):
    log = open(os.path.join(root, "bench-results", f".server-{kind}.log"), "w")
    if kind == "ringcast":
        # --no-pin: the generator shares these cores; pinned shards cannot move
        # off a core the generator is using (p99 4.3 ms pinned vs 0.36 ms not,
        # at 60k msg/s). The baseline is not pinned either.
        cmd = [os.path.join(root, "target/release/ringcast"), "server", "--addr", f"127.0.0.1:{port}", "--idle-timeout-secs", "0", "--no-pin"]
    elif kind == "baseline":
        cmd = [os.path.join(root, "target/release/examples/tokio_baseline"), "--addr", f"127.0.0.1:{port}"]
    else:
        cmd = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port)
    return p

def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()

def bench(root, port, args, duration):
    out = os.path.join(root, "bench-results", ".run.json")
    cmd = [os.path.join(root, "target/release/ringcast"), "bench", "--addr", f"127.0.0.1:{port}",
           "-d", str(duration), "--warmup", "1", "-q", "--json", out] + args
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)

def redis_bench(port, pipeline, requests):
    cmd = ["redis-benchmark", "-p", str(port), "-t", "ping", "-c", "64", "-P", str(pipeline), "-n", str(requests), "-q", "--csv"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    best = {}
    for line in out.splitlines():
        parts = [x.strip('"') for x in line.split(",")]
        if parts and parts[0].startswith("PING"):
            try:
                best[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return best

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    port = 19200
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{os.cpu_count()} cores, kernel {os.uname().release}",
               "runs": a.runs, "duration_s": a.duration, "scenarios": {}}
    for name, args, metric in SCENARIOS:
        if a.only and name not in a.only.split(","):
            continue
        runs = {"ringcast": [], "baseline": []}
        p99 = {"ringcast": [], "baseline": []}
        for i in range(a.runs):
            for kind in ("ringcast", "baseline"):
                port += 1
                srv = start(kind, a.root, port)
                try:
                    r = bench(a.root, port, args, a.duration)
                finally:
                    stop(srv)
                runs[kind].append(r[metric])
                p99[kind].append(r["latency_us"]["p99"])
                print(f"{name:10} run {i+1} {kind:8} {metric} {r[metric]:>14.1f}  p99 {r['latency_us']['p99']} us  errors {r['errors']}", flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        med_p99 = {k: statistics.median(v) for k, v in p99.items()}
        results["scenarios"][name] = {
            "args": " ".join(args), "metric": metric, "runs": runs, "p99_us": p99,
            "median": med, "median_p99_us": med_p99,
            "ratio": med["ringcast"] / med["baseline"] if med["baseline"] else None,
        }
        print(f"{name:10} median ringcast {med['ringcast']:.1f} baseline {med['baseline']:.1f} ratio {results['scenarios'][name]['ratio']:.2f}x", flush=True)
    if shutil.which("redis-server") and shutil.which("redis-benchmark") and not a.only:
        red = {}
        for pipeline, n in ((32, 20_000_000), (1, 1_000_000)):
            vals = []
            for i in range(a.runs):
                port += 1
                srv = start("redis", a.root, port)
                try:
                    v = redis_bench(port, pipeline, n)
                finally:
                    stop(srv)
                vals.append(v.get("PING_MBULK", v.get("PING_INLINE", 0.0)))
                print(f"redis ping -c 64 -P {pipeline} run {i+1}: {vals[-1]:.0f} req/s", flush=True)
            red[f"p{pipeline}"] = {"runs": vals, "median": statistics.median(vals)}
        results["redis"] = red
    out = os.path.join(a.root, "bench-results", "compare.json")
    old = {}
    if a.only and os.path.exists(out):
        old = json.load(open(out))
        old.setdefault("scenarios", {}).update(results["scenarios"])
        results = {**old, "date": results["date"], "machine": results["machine"]}
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")

if __name__ == "__main__":
    main()
