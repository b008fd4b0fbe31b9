#!/usr/bin/env python3
"""Rebuilds the results table in bench-results/README.md from the JSON files.

The table sits between the RESULTS-TABLE markers; everything else in the
README (the analysis) is left as written.
"""
import json, os, sys

START, END = "<!-- RESULTS-TABLE:START -->", "<!-- RESULTS-TABLE:END -->"
SEED = {"small-p32": "95,000 msg/s", "small-p1": "95,000 msg/s", "small-rate": "-", "large": "25,000 msg/s",
        "broadcast": "-", "connections": "10,000 conns, ~8 KB/conn"}

def load(d, name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None

def fmt(x, unit=""):
    if x is None:
        return "-"
    return f"{x:,.0f}{unit}" if x >= 100 else f"{x:,.2f}{unit}"

def main(d):
    cmp = load(d, "compare.json") or {}
    rows = ["| benchmark | ringcast | p99 µs | baseline (tokio) | ratio | Redis PING | seed figure | date, machine |",
            "|---|---|---|---|---|---|---|---|"]
    scen = cmp.get("scenarios", {})
    redis = cmp.get("redis", {})
    names = {"small-p32": "echo 32 B, 64 conns, pipeline 32 (msgs/s)",
             "small-p1": "echo 32 B, 64 conns, pipeline 1 (msgs/s)",
             "small-rate": "echo 32 B, 64 conns, open loop 60,000 msg/s (latency at equal load)",
             "large": "echo 64 KiB, 16 conns, pipeline 4 (MB/s)",
             "broadcast": "broadcast 1 → 1,000 (deliveries/s)"}
    for key, label in names.items():
        s = scen.get(key)
        if not s:
            continue
        r = redis.get("p32" if key == "small-p32" else "p1" if key == "small-p1" else "", {}).get("median")
        rows.append(f"| {label} | {fmt(s['median']['ringcast'])} | {s['median_p99_us']['ringcast']:,.0f} | "
                    f"{fmt(s['median']['baseline'])} (p99 {s['median_p99_us']['baseline']:,.0f} µs) | "
                    f"**{s['ratio']:.2f}×** | {fmt(r)} | {SEED.get(key, '-')} | {cmp.get('date','')}, {cmp.get('machine','')} |")
    c = load(d, "connections.json")
    if c:
        rows.append(f"| {c['connections']:,} idle connections held (RSS growth/conn) | {c['rss_bytes_per_connection']:,.0f} B | "
                    f"{c['latency_us']['p99']:,} (sample ping) | - | - | - | {SEED['connections']} | {c['date'][:16]}Z, "
                    f"{c['machine']['cores']} cores, kernel {c['machine']['kernel']} |")
    for name in ("small-p32", "small-p1", "large", "broadcast"):
        j = load(d, f"{name}.json")
        if j:
            rows.append(f"| single run `{name}` ({j['workload']}, {j['connections']} conns, P{j['pipeline']}) | "
                        f"{fmt(j['msgs_per_sec'])} msgs/s, {fmt(j['mb_per_sec'])} MB/s | {j['latency_us']['p99']:,} | - | - | - | "
                        f"{SEED.get(name, '-')} | {j['date'][:16]}Z, {j['machine']['cores']} cores, kernel {j['machine']['kernel']} |")
    table = "\n".join(rows)
    path = os.path.join(d, "README.md")
    text = open(path).read() if os.path.exists(path) else f"# Benchmark results\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    pre, rest = text.split(START, 1)
    _, post = rest.split(END, 1)
    open(path, "w").write(f"{pre}{START}\n{table}\n{END}{post}")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
