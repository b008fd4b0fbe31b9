"""Blocking socket helpers shared by :class:`ringcast.Client` and :class:`ringcast.TCPClient`."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import protocol
from ._version import __version__
from .compression import DEFAULT_THRESHOLD, Codec, get_codec
from .errors import CLOSING_CODES, ConnectionClosed, ProtocolError, ServerError, Timeout
from .protocol import RECV_CHUNK, FrameDecoder, FrameEncoder, Message, encode

#: ``client`` in hello.
HELLO_CLIENT = f"ringcast-py/{__version__}"


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
    *,
    check: bool = True,
) -> Tuple[Message, List[Message]]:
    """Sends ``request`` (which must carry an ``id``) on a fresh connection and
    reads until its answer, before any receiver thread runs.

    Returns the answer and the frames that came before it (pushed frames,
    kept for the caller to dispatch). Raises :class:`ServerError` for an
    ``error`` answer (with ``check=False`` it is returned instead), or for
    an id-less closing error (``unauthorized`` after a wrong token carries
    no ``id``); :class:`Timeout`; :class:`ConnectionClosed`.
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
                    if check and msg.get("type") == "error":
                        raise ServerError.from_frame(msg)
                    return msg, before
                if msg.get("type") == "error" and msg.get("code") in CLOSING_CODES:
                    raise ServerError.from_frame(msg)
                before.append(msg)
    finally:
        sock.settimeout(None)


def hello_codecs(offer: Sequence[str]) -> Dict[str, Codec]:
    """The codecs of a resolved offer, by name."""
    return {name: get_codec(name) for name in offer}


def read_hello_ok(
    reply: Message, codecs: Mapping[str, Codec]
) -> Tuple[Optional[Message], Optional[Codec], int]:
    """Interprets the answer to ``hello``: returns ``(hello_ok, codec,
    threshold)``. An ``unknown_type`` error (a server from before hello)
    gives ``(None, None, default threshold)``: the connection goes on
    uncompressed. Other errors raise :class:`ServerError`; a ``hello_ok``
    naming a codec that was not offered raises :class:`ProtocolError`."""
    kind = reply.get("type")
    if kind == "error":
        if reply.get("code") == "unknown_type":
            return None, None, DEFAULT_THRESHOLD
        raise ServerError.from_frame(reply)
    if kind != "hello_ok":
        raise ProtocolError(f"expected hello_ok in answer to hello, got {reply}")
    name = reply.get("compression")
    codec: Optional[Codec] = None
    if name is not None:
        if not isinstance(name, str) or name not in codecs:
            raise ProtocolError(f"server chose compression {name!r}, which was not offered")
        codec = codecs[name]
    threshold = reply.get("compression_threshold", DEFAULT_THRESHOLD)
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
        threshold = DEFAULT_THRESHOLD
    info = {k: v for k, v in reply.items() if k not in ("type", "id")}
    return info, codec, threshold


class Session:
    """One open connection of a blocking client: the socket, its decoder and
    encoder (which carry the negotiated codec), the ``hello_ok`` fields
    (None without hello, or from a server that predates it), and the frames
    that arrived before the handshake's answers."""

    __slots__ = ("sock", "decoder", "encoder", "hello", "early", "expires_at")

    def __init__(
        self,
        sock: socket.socket,
        decoder: FrameDecoder,
        encoder: FrameEncoder,
        hello: Optional[Message],
        early: List[Message],
    ) -> None:
        self.sock = sock
        self.decoder = decoder
        self.encoder = encoder
        self.hello = hello
        self.early = early
        #: ``auth_ok``'s ``expires_at`` (a JWT's ``exp``, Unix seconds), if any.
        self.expires_at: Optional[int] = None

    @property
    def compression(self) -> Optional[str]:
        codec = self.encoder.codec
        return codec.name if codec is not None else None


def open_session(
    host: str,
    port: int,
    *,
    timeout: Optional[float],
    ssl_context: Optional[ssl.SSLContext],
    server_hostname: Optional[str],
    max_frame_bytes: int,
    offer: Optional[Sequence[str]],
    auth_token: Optional[str],
    next_id: Callable[[], Any],
    verify_message: Optional[Callable[[], Message]] = None,
) -> Session:
    """Connects and runs the handshakes, in this order:

    1. with ``offer`` (not None): ``hello``, offering those codecs. The
       decoder switches to the chosen codec at the ``hello_ok`` frame and
       the encoder after it. A server from before hello answers
       ``unknown_type``; the connection then stays uncompressed. One that
       also requires a token closes the connection with ``unauthorized``
       (hello is not ``auth``): the client then connects again, without
       hello.
    2. with ``auth_token``: ``auth``.
    3. otherwise, with ``verify_message`` (reconnections), that request (a
       ping), to prove the server answers; a ``hello_ok`` proves it too.

    Raises ``OSError``, :class:`ServerError`, :class:`Timeout`,
    :class:`ConnectionClosed`, :class:`ProtocolError`.
    """
    with_hello = offer is not None
    while True:
        sock = open_socket(host, port, timeout, ssl_context, server_hostname)
        sent = 0  # handshake bytes, for the encoder's count
        try:
            decoder = FrameDecoder(max_frame_bytes)
            hello: Optional[Message] = None
            codec: Optional[Codec] = None
            threshold = DEFAULT_THRESHOLD
            early: List[Message] = []
            expires_at: Any = None
            if with_hello:
                assert offer is not None
                codecs = hello_codecs(offer)
                decoder.expect_hello(codecs)
                msg = protocol.hello_message(offer, HELLO_CLIENT)
                msg["id"] = next_id()
                sent = len(encode(msg))
                try:
                    reply, early = handshake(sock, decoder, msg, timeout, check=False)
                    hello, codec, threshold = read_hello_ok(reply, codecs)
                except ServerError as e:
                    if e.code == "unauthorized" and auth_token is not None:
                        # A server from before hello that requires a token.
                        close_quietly(sock)
                        with_hello = False
                        continue
                    raise
                finally:
                    decoder.expect_hello(None)
            if auth_token is not None:
                msg = protocol.auth_message(auth_token)
                msg["id"] = next_id()
                sent += len(encode(msg))
                auth_ok, more = handshake(sock, decoder, msg, timeout)
                early += more
                expires_at = auth_ok.get("expires_at")
            elif verify_message is not None and not with_hello:
                msg = verify_message()
                msg["id"] = next_id()
                sent += len(encode(msg))
                _, more = handshake(sock, decoder, msg, timeout)
                early += more
        except BaseException:
            close_quietly(sock)
            raise
        encoder = FrameEncoder(codec, threshold)
        encoder.bytes_sent = sent
        session = Session(sock, decoder, encoder, hello, early)
        session.expires_at = expires_at if isinstance(expires_at, int) else None
        return session


def wire_stats(
    codec: Optional[Codec], decoder: Optional[FrameDecoder], encoder: Optional[FrameEncoder]
) -> Dict[str, Any]:
    """The client's side of the server's ``compression`` stats, for one connection."""
    d = decoder
    e = encoder
    return {
        "codec": codec.name if codec is not None else None,
        "frames_in": d.frames_compressed if d else 0,
        "bytes_in_wire": d.bytes_compressed if d else 0,
        "bytes_in_plain": d.bytes_inflated if d else 0,
        "frames_out": e.frames_compressed if e else 0,
        "bytes_out_plain": e.bytes_compressed_plain if e else 0,
        "bytes_out_wire": e.bytes_compressed_wire if e else 0,
        "bytes_received": d.bytes_received if d else 0,
        "bytes_sent": e.bytes_sent if e else 0,
    }


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
