"""Throughput measurements used by ``python -m ringcast performance`` and ``python/bench.py``."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import aio
from .client import Client
from .compat import TCPClient
from .compression import CompressionArg
from .errors import Timeout
from .protocol import timestamp


@dataclass
class Result:
    """One measured run: ``count`` requests answered in ``seconds``."""

    name: str
    count: int
    seconds: float
    latencies: List[float] = field(default_factory=list, repr=False)
    #: The negotiated codec, or None.
    compression: Optional[str] = None
    #: Frame bytes sent plus received during the timed part (headers included).
    wire_bytes: int = 0
    #: This process's CPU time (all threads) during the timed part.
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return self.count / self.seconds if self.seconds > 0 else float("inf")

    @property
    def wire_bytes_per_msg(self) -> float:
        """Frame bytes on the wire per request and its answer."""
        return self.wire_bytes / self.count if self.count else 0.0

    @property
    def cpu_us_per_msg(self) -> float:
        """Client CPU time per request and its answer, in microseconds."""
        return self.cpu_seconds / self.count * 1e6 if self.count else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) of the latencies, in seconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        idx = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
        return ordered[idx]


def payload(size: int) -> str:
    """An ASCII string of ``size`` bytes."""
    return ("ringcast" * (size // 8 + 1))[:size]


_REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1")
_SERVICES = ("checkout", "search", "auth", "cart", "catalog", "payments", "gateway")


def telemetry(size: int, seed: int = 16) -> List[Dict[str, Any]]:
    """Telemetry-like records (a host's metrics, latencies, status, a random
    trace id) whose compact JSON is at most ``size`` bytes (at least one
    record). The same ``seed`` gives the same records."""
    rng = random.Random(seed)
    records: List[Dict[str, Any]] = []
    total = 2  # []
    start = 1764627368.0
    while True:
        rec = {
            "ts": timestamp(start + len(records) * 0.25),
            "host": f"web-{rng.randrange(1, 33):02d}",
            "region": rng.choice(_REGIONS),
            "service": rng.choice(_SERVICES),
            "cpu_pct": round(rng.uniform(2, 98), 1),
            "mem_mb": rng.randrange(200, 8000),
            "rps": rng.randrange(0, 5000),
            "latency_ms": {
                "p50": round(rng.uniform(0.5, 20), 2),
                "p99": round(rng.uniform(20, 400), 2),
            },
            "errors": rng.choice((0, 0, 0, 0, 1, 2)),
            "status": rng.choice(("ok", "ok", "ok", "degraded")),
            "trace_id": f"{rng.getrandbits(64):016x}",
        }
        n = len(json.dumps(rec, separators=(",", ":"))) + 1
        if records and total + n > size:
            return records
        records.append(rec)
        total += n


#: Kinds of echo content: ``text`` (``ringcast`` repeated, the figures
#: so far) or ``telemetry`` (realistic JSON, what compression is for).
CONTENT_KINDS = ("text", "telemetry")


def content(size: int, kind: str = "text") -> Any:
    """Echo content of about ``size`` bytes of JSON, of a kind of :data:`CONTENT_KINDS`."""
    if kind == "text":
        return payload(size)
    if kind == "telemetry":
        return telemetry(size)
    raise ValueError(f"unknown content kind {kind!r}")


def _wire(stats: Dict[str, Any]) -> int:
    return int(stats["bytes_sent"]) + int(stats["bytes_received"])


def blocking_round_trips(
    host: str,
    port: int,
    count: int,
    size: int = 64,
    content_kind: str = "text",
    **client_kwargs: Any,
) -> Result:
    """``count`` echos of ``size`` bytes, one at a time, with :class:`ringcast.Client`."""
    body = content(size, content_kind)
    with Client(host, port, **client_kwargs) as client:
        client.echo(body)  # warm up
        lat: List[float] = []
        clock = time.perf_counter
        wire0, cpu0 = _wire(client.compression_stats()), time.process_time()
        start = clock()
        for _ in range(count):
            t0 = clock()
            client.echo(body)
            lat.append(clock() - t0)
        elapsed = clock() - start
        cpu = time.process_time() - cpu0
        wire = _wire(client.compression_stats()) - wire0
        codec = client.compression
    return Result("blocking echo round trips", count, elapsed, lat, codec, wire, cpu)


async def pipelined_echo_async(
    host: str,
    port: int,
    count: int,
    size: int = 64,
    window: int = 64,
    content_kind: str = "text",
    **client_kwargs: Any,
) -> Result:
    """``count`` echos of ``size`` bytes on one :class:`ringcast.aio.Client`
    connection, ``window`` in flight at a time."""
    body = content(size, content_kind)
    clock = time.perf_counter
    lat: List[float] = []
    remaining = count

    async with aio.Client(host, port, **client_kwargs) as client:
        await client.echo(body)  # warm up

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = clock()
                await client.echo(body)
                lat.append(clock() - t0)

        wire0, cpu0 = _wire(client.compression_stats()), time.process_time()
        start = clock()
        await asyncio.gather(*(worker() for _ in range(max(1, window))))
        elapsed = clock() - start
        cpu = time.process_time() - cpu0
        wire = _wire(client.compression_stats()) - wire0
        codec = client.compression
    return Result(
        f"asyncio pipelined echo (window {window})", count, elapsed, lat, codec, wire, cpu
    )


def pipelined_echo(
    host: str,
    port: int,
    count: int,
    size: int = 64,
    window: int = 64,
    content_kind: str = "text",
    **client_kwargs: Any,
) -> Result:
    """:func:`pipelined_echo_async` in a fresh event loop."""
    return asyncio.run(
        pipelined_echo_async(host, port, count, size, window, content_kind, **client_kwargs)
    )


def seed_client_stream(
    host: str,
    port: int,
    count: int,
    size: int = 64,
    auth_token: Optional[str] = None,
    compression: CompressionArg = None,
    content_kind: str = "text",
) -> Result:
    """``count`` echos sent back to back with :class:`ringcast.TCPClient` (the
    seed's fire-and-forget API), timed until the callback has seen every
    answer. Latencies are not measured (the seed API does not pair them)."""
    body = content(size, content_kind)
    done = threading.Event()
    seen = 0

    def on_message(msg: Dict[str, Any]) -> None:
        nonlocal seen
        if msg.get("type") == "echo_response":
            seen += 1
            if seen == count + 1:
                done.set()

    client = TCPClient(
        host, port, auto_reconnect=False, auth_token=auth_token, compression=compression
    )
    client.set_message_callback(on_message)
    if not client.connect():
        raise ConnectionError(f"could not connect to {host}:{port}")
    try:
        client.echo(body)  # warm up
        # The warm-up's answer may not have come yet: count bytes from the
        # start, less the warm-up's request and answer (about equal).
        cpu0 = time.process_time()
        start = time.perf_counter()
        for _ in range(count):
            client.echo(body)
        if not done.wait(60):
            raise Timeout(f"only {seen} of {count + 1} echo answers within 60 s")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        stats = client.compression_stats()
        wire = _wire(stats) * count // (count + 1)
        codec = client.compression
    finally:
        client.disconnect()
    return Result("TCPClient (seed API) streamed echo", count, elapsed, [], codec, wire, cpu)


def describe(r: Result) -> str:
    """One line: rate, count, time and latency percentiles."""
    line = f"{r.name}: {r.rate:,.0f} msgs/s ({r.count} in {r.seconds:.3f} s"
    if r.latencies:
        line += f"; p50 {r.percentile(50) * 1e3:.3f} ms, p99 {r.percentile(99) * 1e3:.3f} ms"
    if r.wire_bytes:
        line += f"; {r.wire_bytes_per_msg:,.0f} wire bytes/msg"
    if r.cpu_seconds:
        line += f"; {r.cpu_us_per_msg:,.0f} µs client CPU/msg"
    if r.compression:
        line += f"; {r.compression}"
    return line + ")"
