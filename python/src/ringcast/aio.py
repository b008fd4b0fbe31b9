"""The asyncio client, :class:`ringcast.aio.Client`.

The same methods as :class:`ringcast.Client`, as coroutines, on one
connection. Requests are pipelined: any number of coroutines can have
requests in flight at once; each answer is matched to its request by ``id``.

::

    async with ringcast.aio.Client("127.0.0.1", 9999) as client:
        rtt = await client.ping()
        answers = await asyncio.gather(*(client.echo(i) for i in range(1000)))
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import ssl
import time
from types import TracebackType
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, Type, Union

from . import protocol
from ._net import HELLO_CLIENT, hello_codecs, read_hello_ok, wire_stats
from .client import DEFAULT_CLIENT_INFO
from .compression import CompressionArg, resolve_offer
from .errors import (
    CLOSING_CODES,
    ConnectionClosed,
    ProtocolError,
    ServerError,
    Timeout,
)
from .protocol import ANSWER_TYPES, FrameDecoder, FrameEncoder, Message

log = logging.getLogger("ringcast")

AsyncMessageCallback = Callable[[Message], Union[None, Awaitable[None]]]

__all__ = ["Client", "connect"]


class _Protocol(asyncio.Protocol):
    """Feeds received bytes to the client; tracks write flow control."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.decoder = FrameDecoder(client.max_frame_bytes)
        self.paused = False
        self.resumed: Optional[asyncio.Future[None]] = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as e:
            self.client._lose(ConnectionClosed(f"protocol error: {e}"))
            return
        dispatch = self.client._dispatch
        for msg in messages:
            dispatch(msg)

    def eof_received(self) -> Optional[bool]:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Optional[Exception]) -> None:
        why = "server closed the connection" if exc is None else f"connection lost: {exc}"
        if self.client._protocol is self:  # not a connection the client already replaced
            self.client._lose(self.client._closed_reason(why))
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake_writers()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writers()

    def _wake_writers(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    async def drain(self) -> None:
        """Waits while the transport's write buffer is above its high-water mark."""
        while self.paused and not self.lost.done():
            if self.resumed is None:
                self.resumed = asyncio.get_running_loop().create_future()
            await self.resumed


class Client:
    """An asyncio ringcast client with pipelined, id-correlated requests.

    Create it, then ``await client.connect()`` -- or use ``async with
    Client(...) as client`` -- and ``await client.close()`` at the end.
    Arguments are those of :class:`ringcast.Client`, except that there is no
    automatic reconnection. ``message_callback`` may be a plain function or
    a coroutine function (run as a task); without one, unsolicited frames
    queue for :meth:`next_message`.

    ``compression`` (``"zstd"``, ``"deflate"``, or a list in order of
    preference) sends ``hello`` first; see :class:`ringcast.Client`.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 9999,
        *,
        timeout: Optional[float] = 5.0,
        connect_timeout: Optional[float] = None,
        auth_token: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        message_callback: Optional[AsyncMessageCallback] = None,
        client_info: str = DEFAULT_CLIENT_INFO,
        max_queued_messages: int = 10_000,
        max_frame_bytes: int = protocol.CLIENT_MAX_FRAME_BYTES,
        compression: CompressionArg = None,
    ) -> None:
        #: The codecs offered in hello (None: no hello).
        self.compression_offer = resolve_offer(compression)
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.auth_token = auth_token
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.client_info = client_info
        self.max_frame_bytes = max_frame_bytes
        self._callback = message_callback
        #: Unsolicited frames dropped because the queue was full (oldest first).
        self.dropped_messages = 0
        self._transport: Optional[asyncio.Transport] = None
        self._protocol: Optional[_Protocol] = None
        self._encoder = FrameEncoder()
        self._hello: Optional[Message] = None
        self._pending: Dict[int, asyncio.Future[Message]] = {}
        self._next_id = 1
        self._closed = False
        self._lost: Optional[ConnectionClosed] = None
        self._closing_frame: Optional[Message] = None
        self._queue: Deque[Message] = collections.deque(maxlen=max(1, max_queued_messages))
        self._queue_waiter: Optional[asyncio.Future[None]] = None
        self._tasks: Set[asyncio.Task[Any]] = set()
        self._wbuf: List[bytes] = []
        self._flush_scheduled = False
        # Timeouts of this turn's requests, armed at the flush: {timeout: [(id, type)]}.
        self._unarmed: Dict[float, List[Tuple[int, str]]] = {}

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> Client:
        """Opens the connection: hello when compression is asked for, then
        auth when ``auth_token`` is set. Raises ``OSError``,
        :class:`Timeout`, or :class:`ServerError` (``unauthorized``)."""
        if self._transport is not None and self._lost is None:
            return self
        await self._open()
        if self.compression_offer is not None:
            try:
                await self._hello_handshake()
            except ServerError as e:
                await self.close()
                if e.code != "unauthorized" or self.auth_token is None:
                    raise
                # A server from before hello that requires a token closes the
                # connection at hello: connect again without it.
                await self._open()
            except BaseException:
                await self.close()
                raise
        if self.auth_token is not None:
            try:
                await self.request(
                    "auth", protocol.auth_message(self.auth_token), timeout=self.connect_timeout
                )
            except ConnectionClosed as e:
                await self.close()
                if e.code is not None:  # the server's unauthorized, without an id
                    raise ServerError(e.code, e.message or "") from None
                raise
            except BaseException:
                await self.close()
                raise
        return self

    async def _hello_handshake(self) -> None:
        """Sends hello; takes the codec from hello_ok (the decoder switches
        at that very frame, the encoder after it). An old server's
        ``unknown_type`` leaves the connection uncompressed."""
        offer = self.compression_offer
        proto = self._protocol
        assert offer is not None and proto is not None
        codecs = hello_codecs(offer)
        proto.decoder.expect_hello(codecs)
        try:
            reply = await self.request(
                "hello",
                {"compression": list(offer), "client": HELLO_CLIENT},
                timeout=self.connect_timeout,
                check=False,
            )
        except ConnectionClosed as e:
            if e.code is not None:  # a closing error without an id (unauthorized)
                raise ServerError(e.code, e.message or "") from None
            raise
        finally:
            proto.decoder.expect_hello(None)
        hello, codec, threshold = read_hello_ok(reply, codecs)
        self._hello = hello
        sent = self._encoder.bytes_sent
        self._encoder = FrameEncoder(codec, threshold)
        self._encoder.bytes_sent = sent

    async def _open(self) -> None:
        """Opens the transport, with a fresh encoder (no codec)."""
        loop = asyncio.get_running_loop()
        self._closing_frame = None
        ssl_args: Dict[str, Any] = {}
        if self.ssl_context is not None:
            ssl_args = {
                "ssl": self.ssl_context,
                "server_hostname": self.server_hostname
                if self.server_hostname is not None
                else self.host,
            }
        try:
            transport, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port, **ssl_args),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise Timeout(f"could not connect within {self.connect_timeout} s") from None
        assert isinstance(transport, asyncio.Transport)
        self._transport, self._protocol = transport, proto
        self._encoder = FrameEncoder()
        self._hello = None
        self._closed = False
        self._lost = None

    async def close(self) -> None:
        """Closes the connection; requests in flight fail with
        :class:`ConnectionClosed`. Safe to call twice."""
        self._closed = True
        transport, proto = self._transport, self._protocol
        if transport is not None:
            transport.close()
            self._lose(ConnectionClosed("client is closed"))
            if proto is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(proto.lost), 5.0)
                except asyncio.TimeoutError:
                    transport.abort()
        for task in list(self._tasks):
            task.cancel()

    disconnect = close

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Whether the client holds a live connection now."""
        return self._transport is not None and self._lost is None

    @property
    def compression(self) -> Optional[str]:
        """The codec negotiated on the current (or last) connection:
        ``"zstd"``, ``"deflate"``, or None when not asked for or refused."""
        codec = self._encoder.codec
        return codec.name if codec is not None else None

    @property
    def server_info(self) -> Optional[Dict[str, Any]]:
        """The current (or last) connection's ``hello_ok`` fields
        (``server``, ``protocol``, ``features``, ...), or None without
        hello or from a server that predates it."""
        return dict(self._hello) if self._hello else None

    def compression_stats(self) -> Dict[str, Any]:
        """Compressed frames and bytes in and out on the current (or last)
        connection, and all frame bytes (see :meth:`ringcast.Client.compression_stats`)."""
        proto = self._protocol
        return wire_stats(
            self._encoder.codec, proto.decoder if proto is not None else None, self._encoder
        )

    def set_message_callback(self, callback: Optional[AsyncMessageCallback]) -> None:
        """Sets (or removes) the function or coroutine function for unsolicited frames."""
        self._callback = callback

    # -------------------------------------------------------------- requests

    async def ping(self, *, timeout: Optional[float] = None) -> float:
        """Pings the server; returns the round-trip time in seconds."""
        start = time.perf_counter()
        await self._call(protocol.ping_message(self.client_info), "pong", timeout)
        return time.perf_counter() - start

    async def echo(self, content: Any, *, timeout: Optional[float] = None) -> Any:
        """Has the server echo ``content``; returns it as echoed."""
        reply = await self._call(protocol.echo_message(content), "echo_response", timeout)
        return reply.get("content")

    async def broadcast(self, content: Any, *, timeout: Optional[float] = None) -> int:
        """Sends ``content`` to every other client; returns how many there were."""
        reply = await self._call(protocol.broadcast_message(content), "broadcast_sent", timeout)
        recipients = reply.get("recipients")
        if not isinstance(recipients, int):
            raise ProtocolError(f"broadcast_sent without a numeric recipients field: {reply}")
        return recipients

    async def get_stats(self, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The server's statistics (the ``server_stats`` frame, without ``type``/``id``)."""
        reply = await self._call(protocol.stats_message(), "server_stats", timeout)
        return {k: v for k, v in reply.items() if k not in ("type", "id")}

    async def send_text(self, text: str, *, timeout: Optional[float] = None) -> Message:
        """Sends plain text; returns the ``message_ack`` frame."""
        return await self._call(protocol.text_message(text), "message_ack", timeout)

    async def send_custom(
        self,
        message_type: str,
        data: Optional[Dict[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Message:
        """Sends a message of any type with ``data``'s fields; returns the answer
        (an ``error`` answer is raised as :class:`ServerError`)."""
        return await self._call(protocol.custom_message(message_type, data), None, timeout)

    async def request(
        self,
        message_type: str,
        fields: Optional[Dict[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
        check: bool = True,
    ) -> Message:
        """Sends ``{"type": message_type, **fields}``; returns the answer frame
        (with ``check=False``, an ``error`` answer is returned, not raised)."""
        msg: Message = dict(fields) if fields else {}
        msg["type"] = message_type
        return await self._call(msg, None, timeout, check=check)

    async def next_message(self, timeout: Optional[float] = None) -> Message:
        """The oldest queued unsolicited frame; waits up to ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._queue:
            if self._queue_waiter is None or self._queue_waiter.done():
                self._queue_waiter = loop.create_future()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise Timeout(f"no message within {timeout} s")
            try:
                await asyncio.wait_for(asyncio.shield(self._queue_waiter), left)
            except asyncio.TimeoutError:
                raise Timeout(f"no message within {timeout} s") from None
        return self._queue.popleft()

    # ------------------------------------------------------------- internals

    async def _call(
        self,
        msg: Message,
        expect: Optional[str],
        timeout: Optional[float],
        *,
        check: bool = True,
    ) -> Message:
        transport, proto = self._transport, self._protocol
        if transport is None or proto is None or self._lost is not None:
            raise self._not_connected()
        rid = self._next_id
        self._next_id = rid + 1
        msg["id"] = rid
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()
        self._pending[rid] = fut
        t = self.timeout if timeout is None else timeout
        if t is not None:
            # Requests of one turn with the same timeout share one timer,
            # armed by _flush: a timer per request (and its cancel) cost
            # about a fifth of the loop's time when pipelining.
            batch = self._unarmed.get(t)
            if batch is None:
                self._unarmed[t] = [(rid, msg["type"])]
            else:
                batch.append((rid, msg["type"]))
        try:
            # Frames written in one event-loop turn leave in one send: a
            # send syscall per request was the biggest cost when pipelining.
            self._wbuf.append(self._encoder.encode(msg))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
            if proto.paused:
                await proto.drain()
            reply = await fut
        finally:
            self._pending.pop(rid, None)
        kind = reply.get("type")
        if kind == "error" and check:
            raise ServerError.from_frame(reply)
        if expect is not None and kind != expect:
            raise ProtocolError(f"expected {expect} in answer to {msg['type']}, got {reply}")
        return reply

    def _flush(self) -> None:
        """Writes the frames queued this turn to the transport, in one piece,
        and arms this turn's timeouts."""
        self._flush_scheduled = False
        frames, self._wbuf = self._wbuf, []
        transport = self._transport
        if frames and transport is not None and not transport.is_closing():
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            transport.write(data)
            self._encoder.bytes_sent += len(data)
        if self._unarmed:
            unarmed, self._unarmed = self._unarmed, {}
            loop = asyncio.get_running_loop()
            for t, batch in unarmed.items():
                loop.call_later(t, self._expire, batch, t)

    def _expire(self, batch: List[Tuple[int, str]], t: float) -> None:
        """Fails the requests of ``batch`` that are still waiting."""
        pending = self._pending
        for rid, kind in batch:
            fut = pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(Timeout(f"no answer to {kind} within {t} s"))

    def _not_connected(self) -> ConnectionClosed:
        if self._closed:
            return ConnectionClosed("client is closed")
        if self._lost is not None:
            last = self._lost
            return ConnectionClosed(f"not connected ({last.reason})", last.code, last.message)
        return ConnectionClosed("not connected (call connect() first)")

    def _dispatch(self, msg: Message) -> None:
        rid = msg.get("id")
        fut: Optional[asyncio.Future[Message]] = None
        if rid is not None:
            if isinstance(rid, int):
                fut = self._pending.pop(rid, None)
            if fut is None:
                log.debug("dropping answer with unknown id: %.200s", msg)
                return
        elif msg.get("type") in ANSWER_TYPES and self._pending:
            fut = self._pending.pop(next(iter(self._pending)))
        if fut is not None:
            if not fut.done():
                fut.set_result(msg)
            return
        if msg.get("type") == "error" and msg.get("code") in CLOSING_CODES:
            self._closing_frame = msg
        self._deliver(msg)

    def _deliver(self, msg: Message) -> None:
        callback = self._callback
        if callback is not None:
            try:
                result = callback(msg)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                log.exception("ringcast message callback raised")
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped_messages += 1
        self._queue.append(msg)
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ringcast message callback raised", exc_info=task.exception())

    def _closed_reason(self, what: str) -> ConnectionClosed:
        if self._closed:
            return ConnectionClosed("client is closed")
        frame = self._closing_frame
        if frame is None:
            return ConnectionClosed(what)
        code = str(frame.get("code"))
        message = str(frame.get("message", ""))
        return ConnectionClosed(f"{what} ({code}: {message})", code, message)

    def _lose(self, reason: ConnectionClosed) -> None:
        """Marks the connection lost; fails every request in flight."""
        if self._lost is None:
            self._lost = reason
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(reason.reason, reason.code, reason.message))


async def connect(host: str = "localhost", port: int = 9999, **kwargs: Any) -> Client:
    """``Client(host, port, **kwargs)``, connected."""
    return await Client(host, port, **kwargs).connect()
