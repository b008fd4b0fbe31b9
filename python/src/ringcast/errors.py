"""Exceptions raised by the ringcast clients.

Every exception the clients raise on purpose derives from :class:`RingcastError`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

#: Error codes after which the server closes the connection (docs/PROTOCOL.md,
#: "Error codes"). Such a frame carries no ``id``; it ends every request in
#: flight on that connection.
CLOSING_CODES = frozenset(
    {
        "empty_frame",
        "frame_too_large",
        "server_full",
        "slow_consumer",
        "unauthorized",
        "shutting_down",
        "compression_error",
        "kicked",
    }
)


class RingcastError(Exception):
    """Base class of every error raised by the ringcast clients."""


class ServerError(RingcastError):
    """The server answered a request with an ``error`` frame.

    ``code`` is the stable wire code (``unknown_type``, ``invalid_field``,
    ``unauthorized``, ...); ``message`` is the server's human-readable text;
    ``frame`` is the whole error frame as received.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        request_type: Optional[str] = None,
        frame: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.request_type = request_type
        self.frame: dict[str, Any] = dict(frame) if frame is not None else {}

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> ServerError:
        """Builds the exception from an ``error`` frame."""
        code = frame.get("code")
        message = frame.get("message")
        request_type = frame.get("request_type")
        return cls(
            code if isinstance(code, str) else "?",
            message if isinstance(message, str) else "",
            request_type if isinstance(request_type, str) else None,
            frame,
        )


class ConnectionClosed(RingcastError, ConnectionError):
    """The connection is closed, or closed while a request waited for its answer.

    When the server said why before closing (an ``error`` frame with a closing
    code such as ``shutting_down`` or ``slow_consumer``), ``code`` and
    ``message`` hold it; otherwise both are ``None``.
    """

    def __init__(
        self,
        reason: str = "connection closed",
        code: Optional[str] = None,
        message: Optional[str] = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.message = message


class Timeout(RingcastError, TimeoutError):
    """No answer (or no connection) within the timeout."""


class ProtocolError(RingcastError):
    """The server sent bytes that are not a valid ringcast frame, or an answer
    of the wrong type."""


class CompressionError(ProtocolError):
    """A compressed frame from the server is not one complete, valid stream
    of the negotiated codec (garbage, truncated, bytes after its end)."""


class FrameTooLarge(ProtocolError):
    """A frame from the server is larger than ``max_frame_bytes``: its
    header says so, or its compressed payload inflates past it."""


class CodecUnavailable(RingcastError, ImportError):
    """A compression codec was asked for that cannot be used here: ``zstd``
    without the ``zstandard`` module (``pip install zstandard``)."""
