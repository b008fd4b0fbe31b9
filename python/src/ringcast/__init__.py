"""Python clients for ringcast, a TCP message server speaking length-prefixed JSON.

- :class:`ringcast.TCPClient`: the seed example's client, name for name
  (fire-and-forget sends, every server frame to one callback, automatic
  reconnection, optional heartbeat).
- :class:`ringcast.Client`: a blocking request/response client, safe to
  share between threads (answers are matched to requests by ``id``).
- :class:`ringcast.aio.Client`: the same methods as coroutines, pipelined on
  one connection.

Standard library only (the optional ``zstandard`` module adds the zstd
compression codec); see ``python/README.md``.
"""

from __future__ import annotations

from ._version import __version__
from .backoff import ReconnectPolicy
from .client import Client
from .compat import TCPClient
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
    "ProtocolError",
    "ReconnectPolicy",
    "RingcastError",
    "ServerError",
    "TCPClient",
    "Timeout",
    "__version__",
]
