"""Tokens that expire: when to refresh, and the blocking client's refresher.

A client given a ``token_provider`` (a function returning a fresh JWT, as
Centrifugo's ``getToken``) asks it for the token of every connection and
reconnection, and, from a background thread (the asyncio client: a task),
again before the current token expires, sending it in ``refresh``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from . import aio
    from .client import Client

log = logging.getLogger("ringcast")

#: Refresh no later than this many seconds before ``expires_at``.
REFRESH_AHEAD_SECS = 30


def refresh_at(seen: float, expires_at: float) -> float:
    """When to refresh a token first seen at ``seen`` that expires at
    ``expires_at`` (Unix seconds): half its remaining life, or
    ``REFRESH_AHEAD_SECS`` before the end, whichever is later."""
    half = seen + max(0.0, expires_at - seen) / 2
    return max(half, expires_at - REFRESH_AHEAD_SECS)


def start_refresher(client: "Client") -> threading.Thread:
    """Starts the thread that refreshes ``client``'s token before it
    expires; it ends when the client is closed."""
    t = threading.Thread(target=_run, args=(client,), name="ringcast-token", daemon=True)
    t.start()
    return t


def _run(client: "Client") -> None:
    seen: Optional[Tuple[int, float]] = None
    while not client._stop.wait(1.0):
        exp = client.token_expires_at
        if exp is None or not client.connected:
            seen = None
            continue
        now = time.time()
        if seen is None or seen[0] != exp:
            seen = (exp, now)
        if now < refresh_at(seen[1], exp):
            continue
        try:
            client.refresh()
        except Exception as e:  # the provider's or the server's; tried again next second
            log.warning("token refresh failed: %s", e)


async def provide(provider: Callable[[], Any]) -> str:
    """Calls ``provider``, awaiting what it returns if that is awaitable."""
    token = provider()
    if inspect.isawaitable(token):
        token = await token
    return str(token)


async def refresh_loop(client: "aio.Client") -> None:
    """The asyncio client's refresher: a task, cancelled when it closes."""
    seen: Optional[Tuple[int, float]] = None
    while not client._closed:
        await asyncio.sleep(1.0)
        exp = client.token_expires_at
        if exp is None or not client._ready:
            seen = None
            continue
        now = time.time()
        if seen is None or seen[0] != exp:
            seen = (exp, now)
        if now < refresh_at(seen[1], exp):
            continue
        try:
            await client.refresh()
        except Exception as e:  # the provider's or the server's; tried again next second
            log.warning("token refresh failed: %s", e)
