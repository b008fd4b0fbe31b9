"""Blocking socket helpers shared by :class:`ringcast.Client` and :class:`ringcast.TCPClient`."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, List, Mapping, Optional, Tuple

from .errors import CLOSING_CODES, ConnectionClosed, ServerError, Timeout
from .protocol import RECV_CHUNK, FrameDecoder, Message, encode


def open_socket(
    host: str,
    port: int,
    timeout: Optional[float],
    ssl_context: Optional[ssl.SSLContext] = None,
    server_hostname: Optional[str] = None,
) -> socket.socket:
    """Connects (and runs the TLS handshake when ``ssl_context`` is given).

    The socket is returned in blocking mode with no timeout and Nagle off
    (requests are small and latency-bound). Raises ``OSError``.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(
                sock, server_hostname=server_hostname if server_hostname is not None else host
            )
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def handshake(
    sock: socket.socket,
    decoder: FrameDecoder,
    request: Mapping[str, Any],
    timeout: Optional[float],
) -> Tuple[Message, List[Message]]:
    """Sends ``request`` (which must carry an ``id``) on a fresh connection and
    reads until its answer, before any receiver thread runs.

    Returns the answer and the frames that came before it (pushed frames,
    kept for the caller to dispatch). Raises :class:`ServerError` for an
    ``error`` answer, or for an id-less closing error (``unauthorized`` after
    a wrong token carries no ``id``); :class:`Timeout`;
    :class:`ConnectionClosed`.
    """
    want = request["id"]
    deadline = None if timeout is None else time.monotonic() + timeout
    before: List[Message] = []
    sock.sendall(encode(request))
    try:
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"no answer to {request['type']} within {timeout} s")
                sock.settimeout(left)
            try:
                data = sock.recv(RECV_CHUNK)
            except socket.timeout:
                raise Timeout(f"no answer to {request['type']} within {timeout} s") from None
            if not data:
                raise ConnectionClosed(
                    f"server closed the connection before answering {request['type']}"
                )
            for msg in decoder.feed(data):
                if msg.get("id") == want and "id" in msg:
                    if msg.get("type") == "error":
                        raise ServerError.from_frame(msg)
                    return msg, before
                if msg.get("type") == "error" and msg.get("code") in CLOSING_CODES:
                    raise ServerError.from_frame(msg)
                before.append(msg)
    finally:
        sock.settimeout(None)


def close_quietly(sock: Optional[socket.socket]) -> None:
    """Shuts a socket down both ways (waking a thread blocked in ``recv`` on
    it) and closes it, ignoring errors."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
