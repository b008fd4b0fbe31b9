"""Python clients for ringcast, a TCP message server speaking length-prefixed JSON.

- :class:`ringcast.TCPClient`: the seed example's client, name for name
  (fire-and-forget sends, every server frame to one callback, automatic
  reconnection, optional heartbeat).
- :class:`ringcast.Client`: a blocking request/response client, safe to
  share between threads (answers are matched to requests by ``id``).
- :class:`ringcast.aio.Client`: the same methods as coroutines, pipelined on
  one connection.

All three subscribe to channels (``subscribe``, ``publish``, ``history``),
and after a reconnection subscribe again, recovering what was missed on a
history channel (:mod:`ringcast.channels`).

Standard library only (the optional ``zstandard`` module adds the zstd
compression codec); see ``python/README.md``.
"""

from __future__ import annotations

from ._version import __version__
from .backoff import ReconnectPolicy
from .channels import History, Position, Published
from .client import Client, Subscription
from .compat import TCPClient, TCPSubscription
from .errors import (
    CodecUnavailable,
    CompressionError,
    ConnectionClosed,
    FrameTooLarge,
    ProtocolError,
    RingcastError,
    ServerError,
    Timeout,
)

__all__ = [
    "Client",
    "CodecUnavailable",
    "CompressionError",
    "ConnectionClosed",
    "FrameTooLarge",
    "History",
    "Position",
    "ProtocolError",
    "Published",
    "ReconnectPolicy",
    "RingcastError",
    "ServerError",
    "Subscription",
    "TCPClient",
    "TCPSubscription",
    "Timeout",
    "__version__",
]
