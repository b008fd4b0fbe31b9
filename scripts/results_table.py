#!/usr/bin/env python3
"""Rebuilds the results table in bench-results/README.md from the JSON files.

The table sits between the RESULTS-TABLE markers; everything else in the
README (the analysis) is left as written.
"""
import json, os, sys

START, END = "<!-- RESULTS-TABLE:START -->", "<!-- RESULTS-TABLE:END -->"
SEED = {"small-p32": "95,000 msg/s", "small-p1": "95,000 msg/s", "small-rate": "-", "large": "25,000 msg/s",
        "broadcast": "-", "connections": "10,000 conns, ~8 KB/conn", "conns-1000": "-"}

def load(d, name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None

def fmt(x, unit=""):
    if x is None:
        return "-"
    return f"{x:,.0f}{unit}" if x >= 100 else f"{x:,.2f}{unit}"

def ceiling_rows(cc):
    """Rows from a `scripts/bench-compare.sh` run (compare-ceiling.json):
    ringcast against the tokio baseline, the ceiling and Redis, each
    scenario's servers alternated in one run, medians."""
    rows = ["| benchmark | ringcast | p99 µs | baseline (tokio) | ringcast / baseline | ceiling | ringcast / ceiling | Redis | ringcast / Redis | seed figure |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"small-p32": "echo 32 B, 64 conns, pipeline 32 (msgs/s)",
             "small-p1": "echo 32 B, 64 conns, pipeline 1 (msgs/s)",
             "large": "echo 64 KiB, 16 conns, pipeline 4 (msgs/s)",
             "broadcast": "broadcast 1 → 1,000, P8 (deliveries/s)",
             "conns-1000": "1,000 connections, ping, P1 (msgs/s)"}
    for key, label in names.items():
        s = cc.get("scenarios", {}).get(key)
        if not s:
            continue
        m, p = s["median"], s.get("median_p99_us", {})
        rc = m.get("ringcast")
        def cell(v):
            x = m.get(v)
            return (fmt(x) + (f" (p99 {p[v]:,.0f} µs)" if v in p else "")) if x else "-"
        def ratio(v):
            return f"**{rc / m[v]:.2f}×**" if m.get(v) and rc else "-"
        rows.append(f"| {label} | {fmt(rc)} | {p.get('ringcast', 0):,.0f} | {cell('baseline')} | {ratio('baseline')} | "
                    f"{cell('ceiling')} | {ratio('ceiling')} | {cell('redis')} | {ratio('redis')} | {SEED.get(key, '-')} |")
    rows.append("")
    rows.append(f"Run: {cc.get('date', '')}, {cc.get('machine', '')}, binary {cc.get('build_commit', '')}, "
                f"{cc.get('runs', '')} runs of {cc.get('duration_s', '')} s per server, medians "
                f"(`scripts/bench-compare.sh`, compare-ceiling.json).")
    return rows

def main(d):
    cc = load(d, "compare-ceiling.json")
    if cc:
        rows = ceiling_rows(cc)
        rows.append("")
        rows.append("Single runs of the per-workload scripts (older; each script refreshes its row):")
        rows.append("")
        rows.append("| benchmark | ringcast | p99 µs | seed figure | date, machine |")
        rows.append("|---|---|---|---|---|")
        singles(d, rows, short=True)
        write(d, rows)
        return
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
    singles(d, rows, short=False)
    write(d, rows)

def singles(d, rows, short):
    c = load(d, "connections.json")
    pad = "" if short else " - | - | - |"
    if c:
        rows.append(f"| {c['connections']:,} idle connections held (RSS growth/conn) | {c['rss_bytes_per_connection']:,.0f} B | "
                    f"{c['latency_us']['p99']:,} (sample ping) |{pad} {SEED['connections']} | {c['date'][:16]}Z, "
                    f"{c['machine']['cores']} cores, kernel {c['machine']['kernel']} |")
    for name in ("small-p32", "small-p1", "large", "broadcast"):
        j = load(d, f"{name}.json")
        if j:
            rows.append(f"| single run `{name}` ({j['workload']}, {j['connections']} conns, P{j['pipeline']}) | "
                        f"{fmt(j['msgs_per_sec'])} msgs/s, {fmt(j['mb_per_sec'])} MB/s | {j['latency_us']['p99']:,} |{pad} "
                        f"{SEED.get(name, '-')} | {j['date'][:16]}Z, {j['machine']['cores']} cores, kernel {j['machine']['kernel']} |")

def write(d, rows):
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
