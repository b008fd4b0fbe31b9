"""The asyncio client, :class:`ringcast.aio.Client`.

The same methods as :class:`ringcast.Client`, as coroutines, on one
connection. Requests are pipelined: any number of coroutines can have
requests in flight at once; each answer is matched to its request by ``id``.

::

    async with ringcast.aio.Client("127.0.0.1", 9999) as client:
        rtt = await client.ping()
        answers = await asyncio.gather(*(client.echo(i) for i in range(1000)))

Channels, as in nats.py::

    sub = await client.subscribe("news")
    async for message in sub:       # channel_message frames, in order
        ...
    await sub.unsubscribe()         # ends the loop
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import ssl
import time
from types import TracebackType
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, Type, Union

from . import protocol, tokens
from ._net import HELLO_CLIENT, hello_codecs, read_hello_ok, wire_stats
from .backoff import ReconnectPolicy
from .channels import (
    LOST_RECONNECT,
    LOST_REFUSED,
    RECOVERED,
    ChannelState,
    History,
    MessageQueue,
    Position,
    Published,
    Report,
    Subscriptions,
    history_from_frame,
    published_from_frame,
)
from .client import DEFAULT_CLIENT_INFO
from .compression import CompressionArg, resolve_offer
from .errors import (
    CLOSING_CODES,
    ConnectionClosed,
    ProtocolError,
    RingcastError,
    ServerError,
    Timeout,
)
from .protocol import ANSWER_TYPES, FrameDecoder, FrameEncoder, Message

log = logging.getLogger("ringcast")

AsyncMessageCallback = Callable[[Message], Union[None, Awaitable[None]]]

__all__ = ["Client", "Subscription", "connect"]


def _call_or_task(tasks: Set[asyncio.Task[Any]], fn: Callable[..., Any], *args: Any) -> None:
    """Calls ``fn(*args)``; a coroutine it returns runs as a task kept in
    ``tasks``. An exception is logged."""
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            tasks.add(task)
            task.add_done_callback(functools.partial(_task_done, tasks))
    except Exception:
        log.exception("ringcast callback raised")


def _task_done(tasks: Set[asyncio.Task[Any]], task: asyncio.Task[Any]) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("ringcast callback raised", exc_info=task.exception())


class Subscription:
    """A channel subscription of :class:`Client`, from :meth:`Client.subscribe`.

    ``async for message in sub`` yields the channel's ``channel_message``
    frames in order (duplicates dropped). The loop ends after
    :meth:`unsubscribe` or :meth:`Client.close`, once the queued messages
    are read; it raises :class:`ConnectionClosed` when the connection is
    lost for good (no reconnection, or it gave up) and
    :class:`ServerError` when the server refused a resubscription. With a
    ``callback``, messages go to it instead (a function or a coroutine
    function, run as a task).

    What a reconnection cost: ``on_recovered(sub)`` and ``on_lost(sub,
    reason)`` (functions or coroutine functions) are called in the
    stream's order: when iterating, by the iteration itself, just before it
    yields the first message after the event (a coroutine is awaited
    there, so the application can catch up, say with :meth:`Client.history`,
    before it reads on); with a ``callback``, as the client learns it,
    before the next message's callback. ``reason`` is ``"reconnect"``
    (resubscribed without recovery: the server could not replay, or the
    channel has no history), ``"gap"`` (live offsets skipped), ``"epoch"``
    (the server lost the channel's history), ``"refused"`` (the server
    refused the resubscription) or ``"overflow"`` (iterating: the queue
    was full, see below). :meth:`resubscribed` awaits the next
    resubscription and returns whether it recovered everything missed;
    :attr:`recovered` and :attr:`lost_count` hold the outcome as soon as
    the client knows it.

    The iteration's queue holds at most ``max_queued_messages`` (of the
    client) messages. The events queued between them do not count and are
    never dropped: when a message comes to a full queue, the oldest
    *message* is dropped (:attr:`dropped_messages`) and the loss is
    reported in its place, ``on_lost(sub, "overflow")``, once per run of
    drops (:class:`ringcast.channels.MessageQueue`).
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        callback: Optional[AsyncMessageCallback],
        on_recovered: Optional[Callable[[Subscription], Any]],
        on_lost: Optional[Callable[[Subscription, str], Any]],
        max_queued: int,
    ) -> None:
        self.client = client
        self.channel = channel
        self.callback = callback
        self.on_recovered = on_recovered
        self.on_lost = on_lost
        #: The channel's position and recovery rules.
        self.state = ChannelState(channel)
        #: The server's refusal of a resubscription, if that closed it.
        self.error: Optional[ServerError] = None
        # Messages, and the events to report between them (iteration only).
        self._queue = MessageQueue(max_queued)
        self._waiter: Optional[asyncio.Future[None]] = None
        self._resub_waiters: List[asyncio.Future[bool]] = []
        self._closed = False
        # Raised by the iteration once the queue is drained (None: it stops).
        self._end: Optional[BaseException] = None

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended: nothing more is delivered."""
        return self._closed

    @property
    def position(self) -> Optional[Position]:
        """``(offset, epoch)`` of the last publication received on a history
        channel (from ``subscribed`` at first), or None without history."""
        return self.state.position

    @property
    def recovered(self) -> Optional[bool]:
        """Whether the last resubscription recovered what was missed; None
        before any."""
        return self.state.recovered

    @property
    def lost_count(self) -> int:
        """How many times messages may have been lost (``on_lost`` calls)."""
        return self.state.lost

    @property
    def dropped_messages(self) -> int:
        """Messages dropped because the queue was full (oldest first); each
        run of drops is reported to ``on_lost`` as ``"overflow"``."""
        return self._queue.dropped

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._next(None)
        except _Ended:
            raise StopAsyncIteration from None

    async def next_message(self, timeout: Optional[float] = None) -> Message:
        """The next message; raises :class:`Timeout` after ``timeout``
        seconds, :class:`ConnectionClosed` once the subscription has ended
        and its queue is empty (or what ended it, as the iteration does)."""
        try:
            return await self._next(timeout)
        except _Ended:
            raise ConnectionClosed(f"subscription to {self.channel!r} is closed") from None

    async def _next(self, timeout: Optional[float]) -> Message:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            while self._queue:
                item = self._queue.popleft()
                if not isinstance(item, Report):
                    return item
                await self._call_event(item.event)
            if self._closed:
                if self._end is not None:
                    raise self._end
                raise _Ended
            if self._waiter is None or self._waiter.done():
                self._waiter = loop.create_future()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise Timeout(f"no message on {self.channel!r} within {timeout} s")
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), left)
            except asyncio.TimeoutError:
                raise Timeout(f"no message on {self.channel!r} within {timeout} s") from None

    async def _call_event(self, event: str) -> None:
        """Calls ``on_recovered`` or ``on_lost`` from the iteration,
        awaiting a coroutine; an exception is logged."""
        try:
            if event == RECOVERED:
                result = self.on_recovered(self) if self.on_recovered is not None else None
            else:
                result = self.on_lost(self, event) if self.on_lost is not None else None
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("ringcast subscription callback raised (%s)", self.channel)

    async def resubscribed(self, timeout: Optional[float] = None) -> bool:
        """Waits for the next resubscription of the channel (after a
        reconnection): True when the server recovered what was missed,
        False when messages were lost. Raises :class:`Timeout`, or
        :class:`ConnectionClosed` when the subscription ends first."""
        if self._closed:
            raise ConnectionClosed(f"subscription to {self.channel!r} is closed")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._resub_waiters.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{self.channel!r} was not resubscribed within {timeout} s") from None
        finally:
            if fut in self._resub_waiters:
                self._resub_waiters.remove(fut)

    async def unsubscribe(self, *, timeout: Optional[float] = None) -> None:
        """Leaves the channel; the iteration ends (after the queued
        messages). Safe to call twice; without a connection it only
        forgets the channel."""
        if self._closed:
            return
        self._finish(None)
        await self.client._unsubscribe(self, timeout)

    # Called by the client, on the event loop, in the connection's order.

    def _handle_subscribed(self, frame: Message) -> None:
        if not self._closed:
            self._report(self.state.handle_subscribed(frame))

    def _handle_message(self, frame: Message) -> None:
        if self._closed:
            return
        deliver, lost = self.state.handle_message(frame)
        self._report(lost)
        if not deliver:
            return
        if self.callback is not None:
            _call_or_task(self.client._tasks, self.callback, frame)
            return
        if self._queue.push_message(frame):
            # Reported in the dropped message's place, by the iteration.
            self.state.handle_overflow()
        self._wake()

    def _refused(self, error: ServerError) -> None:
        self.error = error
        self._report(LOST_REFUSED)
        self._finish(error)

    def _report(self, event: Optional[str]) -> None:
        if event is None:
            return
        if self.callback is None:
            # The iteration calls it, in its place among the messages.
            if self.on_recovered is not None or self.on_lost is not None:
                self._queue.push_report(event)
                self._wake()
        elif event == RECOVERED:
            if self.on_recovered is not None:
                _call_or_task(self.client._tasks, self.on_recovered, self)
        elif self.on_lost is not None:
            _call_or_task(self.client._tasks, self.on_lost, self, event)
        if event in (RECOVERED, LOST_RECONNECT, LOST_REFUSED):
            waiters, self._resub_waiters = self._resub_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(event == RECOVERED)

    def _finish(self, end: Optional[BaseException]) -> None:
        """Ends the subscription; the iteration raises ``end`` (or stops)
        once the queue is drained."""
        if self._closed:
            return
        self._closed = True
        self._end = end
        self._wake()
        waiters, self._resub_waiters = self._resub_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(
                    end if end is not None else ConnectionClosed(f"{self.channel!r} unsubscribed")
                )

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ringcast.aio.Subscription {self.channel!r} {state} position={self.position}>"


class _Ended(Exception):
    """The subscription ended normally (unsubscribed, client closed)."""


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
    Arguments are those of :class:`ringcast.Client`. ``message_callback``
    may be a plain function or a coroutine function (run as a task);
    without one, unsolicited frames queue for :meth:`next_message`.

    ``compression`` (``"zstd"``, ``"deflate"``, or a list in order of
    preference) sends ``hello`` first; see :class:`ringcast.Client`.

    ``reconnect`` (a :class:`ReconnectPolicy`; default None: a lost
    connection stays lost) reconnects in a background task, with hello,
    auth and a ping as on the first connection, then subscribes again to
    every channel held (with ``recover`` on a history channel; see
    :class:`Subscription`). Requests made meanwhile fail at once with
    :class:`ConnectionClosed`; :meth:`wait_connected` waits for the
    connection.
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
        reconnect: Optional[ReconnectPolicy] = None,
        token_provider: Optional[Callable[[], Any]] = None,
    ) -> None:
        #: Called (and awaited, if it returns an awaitable) for a fresh token
        #: before every connection and before the current token expires.
        self.token_provider = token_provider
        #: The current token's expiry (Unix seconds) as the server said.
        self.token_expires_at: Optional[int] = None
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
        self.reconnect_policy = reconnect
        #: Successful reconnections so far.
        self.reconnect_count = 0
        self._max_queued = max_queued_messages
        # The current connection has finished its handshake: requests may go.
        self._ready = False
        self._reconnect_task: Optional[asyncio.Task[None]] = None
        self._connected_waiter: Optional[asyncio.Future[None]] = None
        self._subs: Subscriptions[Subscription] = Subscriptions()

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> Client:
        """Opens the connection: hello when compression is asked for, then
        auth when ``auth_token`` is set. Raises ``OSError``,
        :class:`Timeout`, or :class:`ServerError` (``unauthorized``)."""
        if self._transport is not None and self._lost is None:
            return self
        self._closed = False
        await self._open()
        try:
            await self._handshake(verify=False)
        except BaseException:
            await self.close()
            raise
        self._ready = True
        if self.token_provider is not None:
            task = asyncio.get_running_loop().create_task(tokens.refresh_loop(self))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self

    async def _token(self) -> Optional[str]:
        """The token for a new connection: the provider's, else ``auth_token``."""
        if self.token_provider is None:
            return self.auth_token
        return await tokens.provide(self.token_provider)

    async def refresh(self, token: Optional[str] = None, *, timeout: Optional[float] = None) -> Optional[int]:
        """Sends ``refresh`` with ``token`` (default: the provider's), a JWT
        for the same user; returns its expiry (Unix seconds, or None)."""
        if token is None:
            if self.token_provider is None:
                raise ValueError("refresh needs a token or a token_provider")
            token = await self._token()
            assert token is not None
        reply = await self._call(protocol.refresh_message(token), "refreshed", timeout)
        exp = reply.get("expires_at")
        self.token_expires_at = exp if isinstance(exp, int) else None
        return self.token_expires_at

    async def _handshake(self, verify: bool) -> None:
        """On a connection just opened: hello when compression is asked for,
        then auth when ``auth_token`` is set; otherwise, with ``verify``
        (reconnections), a ping proves the server answers unless hello did.
        A server from before hello that requires a token closes the
        connection at hello: the client then opens another, without hello.
        Raises; the caller drops the connection."""
        helloed = False
        if self.compression_offer is not None:
            try:
                await self._hello_handshake()
                helloed = True
            except ServerError as e:
                if e.code != "unauthorized" or (
                    self.auth_token is None and self.token_provider is None
                ):
                    raise
                self._drop_transport()
                await self._open()
        token = await self._token()
        if token is not None:
            try:
                auth_ok = await self._call(
                    protocol.auth_message(token),
                    None,
                    self.connect_timeout,
                    internal=True,
                )
                exp = auth_ok.get("expires_at")
                self.token_expires_at = exp if isinstance(exp, int) else None
            except ConnectionClosed as e:
                if e.code is not None:  # the server's unauthorized, without an id
                    raise ServerError(e.code, e.message or "") from None
                raise
        elif verify and not helloed:
            msg = protocol.ping_message(self.client_info)
            await self._call(msg, "pong", self.connect_timeout, internal=True)

    def _drop_transport(self) -> None:
        """Aborts the current connection (a failed handshake)."""
        transport = self._transport
        if transport is not None:
            transport.abort()

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
            reply = await self._call(
                protocol.hello_message(offer, HELLO_CLIENT),
                None,
                self.connect_timeout,
                check=False,
                internal=True,
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
        self._lost = None

    async def close(self) -> None:
        """Closes the connection (and stops reconnecting); requests in
        flight fail with :class:`ConnectionClosed`, and every subscription
        ends. Safe to call twice."""
        self._closed = True
        self._ready = False
        task = self._reconnect_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._end_subscriptions(None)
        self._wake_connected()
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
        """Whether the client holds a live connection now, its handshake done."""
        return self._ready and self._transport is not None and self._lost is None

    async def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Waits while the client reconnects; returns whether it is
        connected. False at once when it is neither connected nor
        reconnecting (closed, no policy, or it gave up)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self.connected:
            if self._closed or self._reconnect_task is None:
                return False
            if self._connected_waiter is None or self._connected_waiter.done():
                self._connected_waiter = loop.create_future()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(asyncio.shield(self._connected_waiter), left)
            except asyncio.TimeoutError:
                return False
        return True

    def _wake_connected(self) -> None:
        waiter = self._connected_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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

    # -------------------------------------------------------------- channels

    async def subscribe(
        self,
        channel: str,
        callback: Optional[AsyncMessageCallback] = None,
        *,
        on_recovered: Optional[Callable[[Subscription], Any]] = None,
        on_lost: Optional[Callable[[Subscription, str], Any]] = None,
        timeout: Optional[float] = None,
    ) -> Subscription:
        """Subscribes to ``channel``; returns the :class:`Subscription` once
        the server has answered ``subscribed``. Iterate it (``async for``)
        or give ``callback``. Raises ``TypeError``/``ValueError`` for a
        channel that is not a non-empty str, ``ValueError`` when already
        subscribed to it, :class:`ServerError` when the server refuses
        (``invalid_channel``, ``too_many_subscriptions``,
        ``permission_denied``)."""
        protocol.check_channel(channel)
        held = self._subs.get(channel)
        if held is not None and not held.closed:
            raise ValueError(f"this client is already subscribed to {channel!r}")
        sub = Subscription(self, channel, callback, on_recovered, on_lost, self._max_queued)
        self._subs[channel] = sub
        try:
            await self._call(sub.state.subscribe_request(), "subscribed", timeout)
        except BaseException:
            self._forget(sub)
            sub._finish(None)
            raise
        return sub

    async def unsubscribe(self, channel: str, *, timeout: Optional[float] = None) -> None:
        """Leaves ``channel``: :meth:`Subscription.unsubscribe` for the
        client's subscription to it, else a plain ``unsubscribe`` request."""
        protocol.check_channel(channel)
        sub = self._subs.get(channel)
        if sub is not None:
            await sub.unsubscribe(timeout=timeout)
        else:
            await self._call(protocol.unsubscribe_message(channel), "unsubscribed", timeout)

    async def publish(
        self, channel: str, content: Any, *, timeout: Optional[float] = None
    ) -> Published:
        """Publishes ``content`` to ``channel``; returns the
        :class:`~ringcast.channels.Published` answer (``recipients``, and
        ``offset``/``epoch`` on a history channel)."""
        protocol.check_channel(channel)
        reply = await self._call(protocol.publish_message(channel, content), "published", timeout)
        return published_from_frame(reply)

    async def history(
        self,
        channel: str,
        *,
        since: Optional[int] = None,
        limit: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> History:
        """A history channel's publications after offset ``since`` (at most
        ``limit``); a channel without history raises :class:`ServerError`
        with code ``no_history``."""
        protocol.check_channel(channel)
        msg = protocol.history_message(channel, since, limit)
        return history_from_frame(await self._call(msg, "history", timeout))

    @property
    def subscriptions(self) -> Dict[str, Subscription]:
        """The open subscriptions, by channel (a copy)."""
        return {c: s for c, s in self._subs.items() if not s.closed}

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
        internal: bool = False,
    ) -> Message:
        transport, proto = self._transport, self._protocol
        if transport is None or proto is None or self._lost is not None:
            raise self._not_connected()
        if not (self._ready or internal):  # a handshake is under way
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
        if self._reconnect_task is not None:
            return ConnectionClosed("not connected (reconnecting)")
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
        elif msg.get("type") == "channel_message":
            # The channel's own subscription and every matching pattern's.
            subs = self._subs.for_message(msg.get("channel"))
            if subs:
                for sub in subs:
                    sub._handle_message(msg)
                return
        elif msg.get("type") == "unsubscribed" and "reason" in msg:
            # Dropped by the server (a refresh narrowed the token).
            self._subs.pop(msg.get("channel"), None)  # type: ignore[arg-type]
        elif msg.get("type") in ANSWER_TYPES and self._pending:
            fut = self._pending.pop(next(iter(self._pending)))
        if fut is not None:
            if self._subs and msg.get("type") == "subscribed":
                sub = self._subs.get(msg.get("channel"))  # type: ignore[arg-type]
                if sub is not None:
                    # Before the replayed messages that follow it are read.
                    sub._handle_subscribed(msg)
            if not fut.done():
                fut.set_result(msg)
            return
        if msg.get("type") == "error" and msg.get("code") in CLOSING_CODES:
            self._closing_frame = msg
        self._deliver(msg)

    def _deliver(self, msg: Message) -> None:
        callback = self._callback
        if callback is not None:
            _call_or_task(self._tasks, callback, msg)
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped_messages += 1
        self._queue.append(msg)
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        """Marks the connection lost; fails every request in flight. A
        connection that was ready is reconnected per the policy; without
        one, the subscriptions end."""
        if self._lost is None:
            self._lost = reason
        was_ready, self._ready = self._ready, False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(reason.reason, reason.code, reason.message))
        if not was_ready or self._closed:
            return
        policy = self.reconnect_policy
        if policy is None:
            self._end_subscriptions(ConnectionClosed(reason.reason, reason.code, reason.message))
            return
        log.info("ringcast connection to %s:%s lost: %s", self.host, self.port, reason)
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect(policy))

    async def _reconnect(self, policy: ReconnectPolicy) -> None:
        """The reconnection task: attempts per ``policy`` until one completes
        its handshake, then resubscribes."""
        attempt = 0
        try:
            for delay in policy.delays():
                attempt += 1
                await asyncio.sleep(delay)
                if self._closed:
                    return
                try:
                    await self._open()
                    await self._handshake(verify=True)
                except (OSError, RingcastError) as e:
                    self._drop_transport()
                    log.info("ringcast reconnection attempt %d failed: %s", attempt, e)
                    continue
                self._ready = True
                self.reconnect_count += 1
                self._reconnect_task = None
                log.info(
                    "ringcast reconnected to %s:%s on attempt %d", self.host, self.port, attempt
                )
                self._resubscribe()
                return
            log.warning("ringcast gave up reconnecting after %d attempts", attempt)
            self._reconnect_task = None
            last = self._lost or ConnectionClosed("connection lost")
            self._end_subscriptions(
                ConnectionClosed(f"gave up reconnecting ({last.reason})", last.code, last.message)
            )
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None
            self._wake_connected()

    def _resubscribe(self) -> None:
        """Subscribes the new connection to every channel held, with
        ``recover`` where there is a position; the answers are taken by
        :meth:`_dispatch` in the connection's order."""
        loop = asyncio.get_running_loop()
        for sub in list(self._subs.values()):
            # Not yet answered on any connection: its subscribe() call fails
            # with the old connection, and forgets it.
            if sub.closed or not sub.state.subscribed_once:
                continue
            msg = sub.state.subscribe_request()
            rid = self._next_id
            self._next_id = rid + 1
            msg["id"] = rid
            fut: asyncio.Future[Message] = loop.create_future()
            fut.add_done_callback(functools.partial(self._resubscribe_done, sub))
            self._pending[rid] = fut
            self._wbuf.append(self._encoder.encode(msg))
        if self._wbuf and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _resubscribe_done(self, sub: Subscription, fut: asyncio.Future[Message]) -> None:
        # An exception: the connection went, and the next one resubscribes.
        if fut.cancelled() or fut.exception() is not None:
            return
        reply = fut.result()
        if reply.get("type") == "error":
            self._forget(sub)
            sub._refused(ServerError.from_frame(reply))

    def _forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]

    async def _unsubscribe(self, sub: Subscription, timeout: Optional[float]) -> None:
        try:
            await self._call(protocol.unsubscribe_message(sub.channel), "unsubscribed", timeout)
        except ConnectionClosed:
            pass  # no connection, no subscription: the server drops them together
        finally:
            self._forget(sub)

    def _end_subscriptions(self, end: Optional[BaseException]) -> None:
        subs, self._subs = list(self._subs.values()), Subscriptions()
        for sub in subs:
            sub._finish(end)


async def connect(host: str = "localhost", port: int = 9999, **kwargs: Any) -> Client:
    """``Client(host, port, **kwargs)``, connected."""
    return await Client(host, port, **kwargs).connect()
