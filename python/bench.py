#!/usr/bin/env python3
"""Throughput of the Python clients against a ringcast server on this machine.

    python python/bench.py [--runs 3] [--count N] [--size 64] [--window 64]
                           [--content text|telemetry] [--compress none,deflate,zstd]
                           [--host H --port P] [--profile]

Without ``--port`` it starts ``ringcast server`` itself with default
settings (only the address is set: 127.0.0.1 and a free port) from
``$RINGCAST_BIN`` or ``<repo>/target/release/ringcast``, and stops it at the
end. Each measurement runs ``--runs`` times; the median is reported:

- asyncio pipelined echo: one ``ringcast.aio.Client`` connection, ``--window``
  echos in flight, msgs/s;
- blocking round trips: one ``ringcast.Client``, one echo at a time,
  round trips/s;
- TCPClient streamed echo: the seed API, echos sent back to back, timed until
  the callback has every answer.

``--compress`` takes codecs separated by commas (``none`` for no
compression): each run of each measurement then goes once per codec, one
after the other, so the codecs see the same machine state; medians are
per codec, with ratios against the first. Each line also gives the frame
bytes on the wire per echo (request and answer, headers included) and the
client's CPU time per echo (all its threads). ``--content telemetry`` echoes
telemetry-like JSON records (what compression is for) instead of repeated
text.

``--profile`` then runs one more aio and one more blocking measurement
under cProfile (the blocking client's receiving thread profiled too) and
prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
try:
    import ringcast
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(HERE / "src"))
    import ringcast

from ringcast import perf  # noqa: E402  (after the sys.path fallback)


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    binary = os.environ.get("RINGCAST_BIN") or str(REPO / "target" / "release" / "ringcast")
    if not Path(binary).is_file():
        sys.exit(f"no server binary at {binary}: cargo build --release --bin ringcast")
    proc = subprocess.Popen(
        [binary, "server", "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("the server did not start")


def runs_per_codec(
    runs: int, codecs: List[Optional[str]], measure: Callable[[Optional[str]], perf.Result]
) -> Dict[Optional[str], List[perf.Result]]:
    """``runs`` rounds; each round measures every codec once, in turn."""
    results: Dict[Optional[str], List[perf.Result]] = {c: [] for c in codecs}
    for i in range(runs):
        for codec in codecs:
            r = measure(codec)
            results[codec].append(r)
            note = ""
            if r.compression != codec:
                note = f" (asked for {codec}, got {r.compression or 'none'}: refused or old server)"
            print(f"    run {i + 1} [{codec or 'none'}]: {perf.describe(r)}{note}", flush=True)
    return results


def profile(host: str, port: int, args: argparse.Namespace) -> None:
    print("\n== cProfile: asyncio pipelined echo (the event loop is one thread)")
    prof = cProfile.Profile()
    prof.enable()
    perf.pipelined_echo(host, port, args.count, args.size, args.window)
    prof.disable()
    report(prof, "aio", args)

    print("\n== cProfile: blocking round trips, calling thread")
    rx = cProfile.Profile()
    orig_run = ringcast.Client._run

    def profiled_run(self: ringcast.Client, *a: Any) -> None:
        rx.enable()
        try:
            orig_run(self, *a)
        finally:
            rx.disable()

    ringcast.Client._run = profiled_run  # type: ignore[method-assign,assignment]
    caller = cProfile.Profile()
    caller.enable()
    perf.blocking_round_trips(host, port, args.count // 4, args.size)
    caller.disable()
    ringcast.Client._run = orig_run  # type: ignore[method-assign]
    report(caller, "blocking-caller", args)
    print("\n== cProfile: blocking round trips, receiving thread")
    report(rx, "blocking-receiver", args)


#: (category, test on "file:function") for the breakdown of own time.
CATEGORIES: List[Tuple[str, Callable[[str], bool]]] = [
    (
        "waiting: socket recv / epoll / lock",
        lambda f: any(
            k in f for k in ("'recv'", "'recv_into'", "'poll' of 'select", "'acquire' of")
        ),
    ),
    ("socket send syscalls", lambda f: "'send'" in f or "'sendall'" in f),
    ("json encode", lambda f: "json/encoder" in f or "json.encoder" in f or "c_make_encoder" in f),
    ("json decode", lambda f: "json/decoder" in f or "scanner" in f or "'decode' of 'bytes'" in f),
    ("struct (frame header)", lambda f: "Struct" in f or "unpack" in f or "'pack'" in f),
    (
        "asyncio machinery",
        lambda f: (
            "asyncio" in f or "heapq" in f or "_asyncio" in f or "'run' of '_contextvars" in f
        ),
    ),
    (
        "timestamps",
        lambda f: "protocol.py" in f and "timestamp" in f or "strftime" in f or "gmtime" in f,
    ),
    ("ringcast code", lambda f: "ringcast" in f),
]


def breakdown(stats: pstats.Stats) -> str:
    """Own time (tottime) grouped by category, as shares of the total."""
    totals: Dict[str, float] = {}
    whole = 0.0
    for (filename, line, func), row in stats.stats.items():  # type: ignore[attr-defined]
        own = row[2]
        whole += own
        key = f"{filename}:{line}({func})"
        cat = next((c for c, test in CATEGORIES if test(key)), "other Python / C")
        totals[cat] = totals.get(cat, 0.0) + own
    lines = [f"  {'category':<38}{'own s':>8}{'share':>8}"]
    for cat, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {cat:<38}{t:>8.3f}{t / whole:>8.1%}")
    return "\n".join(lines)


def report(prof: cProfile.Profile, name: str, args: argparse.Namespace) -> None:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    print(breakdown(stats))
    stats.sort_stats("tottime").print_stats(args.top)
    text = out.getvalue()
    start = text.find("   ncalls")
    print(text[start:] if start >= 0 else text)
    if args.profile_dir:
        path = Path(args.profile_dir) / f"ringcast-{name}.prof"
        stats.dump_stats(str(path))
        print(f"(saved {path})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="use a running server")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=20_000, help="echos per asyncio/seed run")
    p.add_argument("--blocking-count", type=int, default=5_000, help="round trips per run")
    p.add_argument("--size", type=int, default=64, help="bytes of echo content")
    p.add_argument("--window", type=int, default=64, help="asyncio echos in flight")
    p.add_argument(
        "--content", default="text", choices=perf.CONTENT_KINDS, help="echo content kind"
    )
    p.add_argument(
        "--compress",
        default="none",
        help="codecs to measure, separated by commas: none, deflate, zstd (default: none)",
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-dir", default=None, help="also save .prof files here")
    p.add_argument("--top", type=int, default=18, help="functions shown per profile")
    args = p.parse_args()

    codecs: List[Optional[str]] = []
    for name in args.compress.split(","):
        name = name.strip()
        if name not in ("none", "deflate", "zstd"):
            p.error(f"--compress: unknown codec {name!r}")
        codecs.append(None if name == "none" else name)
    if "zstd" in codecs:
        from ringcast.compression import ZSTD_HINT, zstd_available

        if not zstd_available():
            p.error(f"--compress zstd needs the zstandard module: {ZSTD_HINT}")

    print(f"machine: {machine()}")
    print(
        f"ringcast python client {ringcast.__version__}, {args.size}-byte {args.content} "
        f"echo content, compression: {', '.join(c or 'none' for c in codecs)}"
    )
    proc: Optional[subprocess.Popen[bytes]] = None
    port = args.port
    if port is None:
        port = free_port()
        proc = start_server(port)
        print(f"server: ringcast server --addr 127.0.0.1:{port} (default settings otherwise)")
    host = args.host
    kind = args.content
    measurements: List[Tuple[str, Callable[[Optional[str]], perf.Result]]] = [
        (
            "asyncio pipelined echo",
            lambda c: perf.pipelined_echo(
                host, port, args.count, args.size, args.window, content_kind=kind, compression=c
            ),
        ),
        (
            "blocking round trips",
            lambda c: perf.blocking_round_trips(
                host, port, args.blocking_count, args.size, content_kind=kind, compression=c
            ),
        ),
        (
            "TCPClient streamed echo",
            lambda c: perf.seed_client_stream(
                host, port, args.count, args.size, compression=c, content_kind=kind
            ),
        ),
    ]
    # (measurement, codec) -> (median msgs/s, median wire bytes/msg, median CPU µs/msg)
    summary: Dict[Tuple[str, Optional[str]], Tuple[float, float, float]] = {}
    try:
        for title, measure in measurements:
            print(f"== {title} ({args.runs} runs)", flush=True)
            results = runs_per_codec(args.runs, codecs, measure)
            for codec, rs in results.items():
                med = (
                    statistics.median(r.rate for r in rs),
                    statistics.median(r.wire_bytes_per_msg for r in rs),
                    statistics.median(r.cpu_us_per_msg for r in rs),
                )
                summary[(title, codec)] = med
                print(
                    f"  median [{codec or 'none'}]: {med[0]:,.0f} msgs/s, "
                    f"{med[1]:,.0f} wire bytes/msg, {med[2]:,.0f} µs client CPU/msg",
                    flush=True,
                )
        if args.profile:
            profile(host, port, args)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    base = codecs[0]
    print(f"\nsummary (medians of {args.runs}; ratios against {base or 'none'}, same run):")
    print(
        f"  {'measurement':<26}{'codec':<9}{'msgs/s':>10}{'x':>7}"
        f"{'wire B/msg':>12}{'x':>7}{'CPU µs/msg':>12}"
    )
    for (title, codec), (rate, wire, cpu) in summary.items():
        b_rate, b_wire, _ = summary[(title, base)]
        print(
            f"  {title:<26}{codec or 'none':<9}{rate:>10,.0f}{rate / b_rate:>7.2f}"
            f"{wire:>12,.0f}{wire / b_wire if b_wire else 0:>7.2f}{cpu:>12,.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
