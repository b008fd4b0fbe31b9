"""Throughput measurements used by ``python -m ringcast performance`` and ``python/bench.py``."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import aio
from .client import Client
from .compat import TCPClient
from .errors import Timeout


@dataclass
class Result:
    """One measured run: ``count`` requests answered in ``seconds``."""

    name: str
    count: int
    seconds: float
    latencies: List[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return self.count / self.seconds if self.seconds > 0 else float("inf")

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


def blocking_round_trips(
    host: str, port: int, count: int, size: int = 64, **client_kwargs: Any
) -> Result:
    """``count`` echos of ``size`` bytes, one at a time, with :class:`ringcast.Client`."""
    content = payload(size)
    with Client(host, port, **client_kwargs) as client:
        client.echo(content)  # warm up
        lat: List[float] = []
        clock = time.perf_counter
        start = clock()
        for _ in range(count):
            t0 = clock()
            client.echo(content)
            lat.append(clock() - t0)
        elapsed = clock() - start
    return Result("blocking echo round trips", count, elapsed, lat)


async def pipelined_echo_async(
    host: str, port: int, count: int, size: int = 64, window: int = 64, **client_kwargs: Any
) -> Result:
    """``count`` echos of ``size`` bytes on one :class:`ringcast.aio.Client`
    connection, ``window`` in flight at a time."""
    content = payload(size)
    clock = time.perf_counter
    lat: List[float] = []
    remaining = count

    async with aio.Client(host, port, **client_kwargs) as client:
        await client.echo(content)  # warm up

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = clock()
                await client.echo(content)
                lat.append(clock() - t0)

        start = clock()
        await asyncio.gather(*(worker() for _ in range(max(1, window))))
        elapsed = clock() - start
    return Result(f"asyncio pipelined echo (window {window})", count, elapsed, lat)


def pipelined_echo(
    host: str, port: int, count: int, size: int = 64, window: int = 64, **client_kwargs: Any
) -> Result:
    """:func:`pipelined_echo_async` in a fresh event loop."""
    return asyncio.run(pipelined_echo_async(host, port, count, size, window, **client_kwargs))


def seed_client_stream(
    host: str, port: int, count: int, size: int = 64, auth_token: Optional[str] = None
) -> Result:
    """``count`` echos sent back to back with :class:`ringcast.TCPClient` (the
    seed's fire-and-forget API), timed until the callback has seen every
    answer. Latencies are not measured (the seed API does not pair them)."""
    content = payload(size)
    done = threading.Event()
    seen = 0

    def on_message(msg: Dict[str, Any]) -> None:
        nonlocal seen
        if msg.get("type") == "echo_response":
            seen += 1
            if seen == count + 1:
                done.set()

    client = TCPClient(host, port, auto_reconnect=False, auth_token=auth_token)
    client.set_message_callback(on_message)
    if not client.connect():
        raise ConnectionError(f"could not connect to {host}:{port}")
    try:
        client.echo(content)  # warm up
        start = time.perf_counter()
        for _ in range(count):
            client.echo(content)
        if not done.wait(60):
            raise Timeout(f"only {seen} of {count + 1} echo answers within 60 s")
        elapsed = time.perf_counter() - start
    finally:
        client.disconnect()
    return Result("TCPClient (seed API) streamed echo", count, elapsed)


def describe(r: Result) -> str:
    """One line: rate, count, time and latency percentiles."""
    line = f"{r.name}: {r.rate:,.0f} msgs/s ({r.count} in {r.seconds:.3f} s"
    if r.latencies:
        line += f"; p50 {r.percentile(50) * 1e3:.3f} ms, p99 {r.percentile(99) * 1e3:.3f} ms"
    return line + ")"
