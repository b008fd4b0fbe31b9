"""The blocking request/response client, :class:`ringcast.Client`."""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import ssl
import threading
import time
from types import TracebackType
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Type, Union

from . import protocol, tokens
from ._net import Session, close_quietly, open_session, wire_stats
from ._version import __version__
from .backoff import ReconnectPolicy
from .channels import (
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
from .compression import CompressionArg, resolve_offer
from .errors import (
    CLOSING_CODES,
    ConnectionClosed,
    ProtocolError,
    RingcastError,
    ServerError,
    Timeout,
)
from .protocol import ANSWER_TYPES, RECV_CHUNK, FrameDecoder, Message

log = logging.getLogger("ringcast")

#: Sent as ``client_info`` in pings.
DEFAULT_CLIENT_INFO = f"ringcast-python/{__version__}"

MessageCallback = Callable[[Message], Any]


class BaseSubscription:
    """What the two threaded clients' subscriptions share: the channel, its
    position (:class:`ringcast.channels.ChannelState`), and the calls to the
    application's functions, made on the client's receiving thread.

    - ``callback(message)``: each ``channel_message`` frame of the channel,
      in order, duplicates dropped;
    - ``on_recovered(subscription)``: after a reconnection, the channel was
      subscribed again and the server replays what was missed; called
      before the replayed messages;
    - ``on_lost(subscription, reason)``: messages may have been missed,
      called before the next message is delivered. ``reason`` is
      ``"reconnect"`` (subscribed again without recovery: the server could
      not replay, or the channel has no history), ``"gap"`` (live offsets
      skipped), ``"epoch"`` (the server lost the channel's history),
      ``"refused"`` (the server answered the resubscription with an error,
      kept in :attr:`error`; the subscription is closed) or ``"overflow"``
      (:class:`Subscription` without a callback: its queue was full, so its
      oldest message was dropped).

    An exception raised by one of them is logged and otherwise ignored.
    """

    def __init__(
        self,
        channel: str,
        callback: Optional[MessageCallback],
        on_recovered: Optional[Callable[[Any], Any]],
        on_lost: Optional[Callable[[Any, str], Any]],
    ) -> None:
        self.channel = channel
        self.callback = callback
        self.on_recovered = on_recovered
        self.on_lost = on_lost
        #: The channel's position and recovery rules.
        self.state = ChannelState(channel)
        #: The server's refusal of a resubscription, if that is why it closed.
        self.error: Optional[ServerError] = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended (unsubscribed, refused, or the
        client closed); a closed subscription delivers nothing more."""
        return self._closed

    @property
    def position(self) -> Optional[Position]:
        """``(offset, epoch)`` of the last publication received on a history
        channel (from ``subscribed`` at first), or None without history."""
        return self.state.position

    @property
    def recovered(self) -> Optional[bool]:
        """Whether the last resubscription (after a reconnection) recovered
        what was missed; None before any."""
        return self.state.recovered

    @property
    def lost_count(self) -> int:
        """How many times ``on_lost`` was (or would have been) called."""
        return self.state.lost

    def _handle_subscribed(self, frame: Message) -> None:
        if not self._closed:
            self._report(self.state.handle_subscribed(frame))

    def _handle_message(self, frame: Message) -> None:
        if self._closed:
            return
        deliver, lost = self.state.handle_message(frame)
        self._report(lost)
        if deliver:
            self._deliver(frame)

    def _refused(self, error: ServerError) -> None:
        self.error = error
        self._report(LOST_REFUSED)
        self._close()

    def _report(self, event: Optional[str]) -> None:
        if event is None:
            return
        try:
            if event == RECOVERED:
                if self.on_recovered is not None:
                    self.on_recovered(self)
            elif self.on_lost is not None:
                self.on_lost(self, event)
        except Exception:
            log.exception("ringcast subscription callback raised (%s)", self.channel)

    def _deliver(self, frame: Message) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.channel!r} {state} position={self.position}>"


class Subscription(BaseSubscription):
    """A channel subscription of :class:`Client`, from :meth:`Client.subscribe`.

    Messages go to ``callback`` when it is set (on the receiving thread:
    keep it short, and make no requests from it), otherwise to a bounded
    queue read with :meth:`next_message`. See :class:`BaseSubscription` for
    ``on_recovered`` and ``on_lost``; without a callback they are called
    by :meth:`next_message`, on its caller's thread (which may make
    requests, say :meth:`Client.history`), just before it returns the
    first message after the event.

    The queue holds at most ``max_queued_messages`` (of the client)
    messages. The ``on_recovered``/``on_lost`` events queued between them
    do not count and are never dropped: when a message comes to a full
    queue, the oldest *message* is dropped (:attr:`dropped_messages`) and
    the loss is reported in its place, ``on_lost(sub, "overflow")``, once
    per run of drops (:class:`ringcast.channels.MessageQueue`).
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        callback: Optional[MessageCallback],
        on_recovered: Optional[Callable[[Subscription], Any]],
        on_lost: Optional[Callable[[Subscription, str], Any]],
        max_queued: int,
    ) -> None:
        super().__init__(channel, callback, on_recovered, on_lost)
        self.client = client
        # Messages, and the events to report between them.
        self._queue = MessageQueue(max_queued)
        self._cond = threading.Condition()

    @property
    def dropped_messages(self) -> int:
        """Messages dropped because the queue was full (oldest first); each
        run of drops is reported to ``on_lost`` as ``"overflow"``."""
        return self._queue.dropped

    def next_message(self, timeout: Optional[float] = None) -> Message:
        """The oldest queued ``channel_message`` (when there is no
        callback); waits up to ``timeout`` seconds (``None``: for ever),
        then raises :class:`Timeout`. Once the subscription is closed and
        its queue empty, raises :class:`ConnectionClosed`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._queue:
                    if self._closed:
                        raise ConnectionClosed(f"subscription to {self.channel!r} is closed")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise Timeout(f"no message on {self.channel!r} within {timeout} s")
                    self._cond.wait(left)
                item = self._queue.popleft()
            if not isinstance(item, Report):
                return item
            super()._report(item.event)

    def unsubscribe(self, *, timeout: Optional[float] = None) -> None:
        """Leaves the channel: nothing more is delivered once it returns.
        Safe to call twice. Without a connection it only forgets the
        channel (the server dropped it with the connection)."""
        if self._closed:
            return
        if threading.current_thread() is self.client._receiver:
            raise RingcastError(
                "unsubscribe() cannot be called from a callback: it waits for an answer "
                "that the callback's thread reads"
            )
        self._close()
        self.client._unsubscribe(self, timeout)

    def _report(self, event: Optional[str]) -> None:
        if event is None:
            return
        if self.callback is not None:
            super()._report(event)
        elif self.on_recovered is not None or self.on_lost is not None:
            # next_message() calls it, in its place among the messages.
            with self._cond:
                self._queue.push_report(event)
                self._cond.notify()

    def _deliver(self, frame: Message) -> None:
        callback = self.callback
        if callback is not None:
            try:
                callback(frame)
            except Exception:
                log.exception("ringcast subscription callback raised (%s)", self.channel)
            return
        with self._cond:
            if self._queue.push_message(frame):
                # Reported in the dropped message's place, by next_message().
                self.state.handle_overflow()
            self._cond.notify()

    def _close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Waiter:
    """One request waiting for its answer: a lock held until the answer comes."""

    __slots__ = ("lock", "reply", "error")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.reply: Optional[Message] = None
        self.error: Optional[BaseException] = None

    def resolve(self, reply: Optional[Message], error: Optional[BaseException]) -> None:
        self.reply = reply
        self.error = error
        self.lock.release()


class _Resubscribe:
    """A resubscription in flight, in ``_pending`` beside the waiters: its
    ``subscribed`` answer is taken by :meth:`Client._dispatch` like any
    other; an ``error`` answer closes the subscription."""

    __slots__ = ("client", "sub")

    def __init__(self, client: Client, sub: Subscription) -> None:
        self.client = client
        self.sub = sub

    def resolve(self, reply: Optional[Message], error: Optional[BaseException]) -> None:
        # error: the connection went; the next one subscribes again.
        if reply is not None and reply.get("type") == "error":
            self.client._forget(self.sub)
            self.sub._refused(ServerError.from_frame(reply))


class Client:
    """A blocking ringcast client that returns each request's answer.

    ``Client(host, port)`` connects at once (and authenticates when
    ``auth_token`` is given); it raises ``OSError`` when the server cannot be
    reached and :class:`ServerError` (code ``unauthorized``) for a wrong
    token. Use it as a context manager, or call :meth:`close`.

    Every request carries a fresh integer ``id``, which the server copies
    into its answer, so any number of threads can share one client. A
    background thread reads the socket and hands each answer to the thread
    waiting for it. Frames that answer no request -- ``broadcast_message``
    from other clients, a pushed ``error`` such as ``shutting_down`` -- go
    to ``message_callback`` when one is set (called on that background
    thread: keep it short, and make no requests from it), otherwise to a
    bounded queue read with :meth:`next_message`. An answer that comes
    after its request timed out is dropped.

    With ``reconnect`` (a :class:`ReconnectPolicy`) the client reconnects by
    itself after losing the connection; requests made meanwhile fail at once
    with :class:`ConnectionClosed` (see :meth:`wait_connected`). Without it,
    a lost connection stays lost.

    ``ssl_context`` / ``server_hostname`` wrap the socket in TLS, for a
    ringcast behind a TLS terminator or a future server with TLS (the
    ringcast server itself speaks plain TCP today).

    ``compression`` (``"zstd"``, ``"deflate"``, or a list in order of
    preference) sends ``hello`` first on every connection and, when the
    server agrees on a codec, compresses large frames both ways
    (:attr:`compression` tells which codec; :attr:`server_info` holds the
    ``hello_ok`` fields). A server that refuses, or predates hello, is used
    uncompressed. ``"zstd"`` needs the ``zstandard`` module.

    Channels: :meth:`subscribe` returns a :class:`Subscription`;
    :meth:`publish`, :meth:`unsubscribe` and :meth:`history` are requests.
    After a reconnection every subscription is made again, with
    ``recover`` from its position on a history channel, and its
    ``on_recovered`` or ``on_lost`` is called.
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
        message_callback: Optional[MessageCallback] = None,
        reconnect: Optional[ReconnectPolicy] = None,
        client_info: str = DEFAULT_CLIENT_INFO,
        max_queued_messages: int = 10_000,
        max_frame_bytes: int = protocol.CLIENT_MAX_FRAME_BYTES,
        compression: CompressionArg = None,
        token_provider: Optional[Callable[[], str]] = None,
    ) -> None:
        #: Called for a fresh token (a JWT) before every connection and
        #: before the current token expires (see :mod:`ringcast.tokens`).
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
        self.reconnect_policy = reconnect
        self.client_info = client_info
        self.max_frame_bytes = max_frame_bytes
        self._callback = message_callback
        #: Unsolicited frames dropped because the queue was full (oldest first).
        self.dropped_messages = 0
        #: Successful reconnections so far.
        self.reconnect_count = 0

        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._state_changed = threading.Condition(self._lock)
        self._pending: Dict[int, Union[_Waiter, _Resubscribe]] = {}
        self._max_queued = max_queued_messages
        # Subscriptions by channel, under _lock.
        self._subs: Subscriptions[Subscription] = Subscriptions()
        self._ids = itertools.count(1)
        self._sock: Optional[socket.socket] = None
        self._session: Optional[Session] = None
        self._closing = False
        self._stop = threading.Event()
        self._last_reason: Optional[ConnectionClosed] = None
        self._closing_frame: Optional[Message] = None
        self._queue: Deque[Message] = collections.deque(maxlen=max(1, max_queued_messages))
        self._queue_cond = threading.Condition()

        session = self._open(verify=False)
        self._set_session(session)
        self._receiver = threading.Thread(
            target=self._run, args=(session,), name=f"ringcast-recv-{host}:{port}", daemon=True
        )
        self._receiver.start()
        for msg in session.early:
            self._dispatch(msg)
        self._refresher = tokens.start_refresher(self) if token_provider is not None else None

    # ----------------------------------------------------------- public API

    def refresh(self, token: Optional[str] = None, *, timeout: Optional[float] = None) -> Optional[int]:
        """Sends ``refresh`` with ``token`` (default: a new one from
        ``token_provider``), a JWT for the same user; returns its expiry
        (Unix seconds, None if it has none). A refused token is
        :class:`ServerError` ``unauthorized``, and the server closes the
        connection."""
        if token is None:
            if self.token_provider is None:
                raise ValueError("refresh needs a token or a token_provider")
            token = self.token_provider()
        reply = self._call(protocol.refresh_message(token), "refreshed", timeout)
        exp = reply.get("expires_at")
        self.token_expires_at = exp if isinstance(exp, int) else None
        return self.token_expires_at

    @property
    def connected(self) -> bool:
        """Whether the client holds a live connection now."""
        return self._sock is not None

    @property
    def local_address(self) -> Optional[tuple[Any, ...]]:
        """This end's ``(ip, port)``: the server's ``client_id`` for us."""
        sock = self._sock
        try:
            return tuple(sock.getsockname()) if sock is not None else None
        except OSError:
            return None

    @property
    def compression(self) -> Optional[str]:
        """The codec negotiated on the current (or, once closed, the last)
        connection: ``"zstd"``, ``"deflate"``, or None when not asked for or
        refused by the server."""
        session = self._session
        return session.compression if session is not None else None

    @property
    def server_info(self) -> Optional[Dict[str, Any]]:
        """The current (or last) connection's ``hello_ok`` fields (``server``,
        ``protocol``, ``features``, ``max_frame_bytes``,
        ``compression_threshold``, ``compression``), or None without hello
        or from a server that predates it."""
        session = self._session
        return dict(session.hello) if session is not None and session.hello else None

    def compression_stats(self) -> Dict[str, Any]:
        """This client's count of what it sent and received on the current
        (or last) connection: compressed frames in and out with their bytes on the
        wire and inflated (``frames_in``, ``bytes_in_wire``,
        ``bytes_in_plain``, ``frames_out``, ``bytes_out_plain``,
        ``bytes_out_wire``), and all frame bytes (``bytes_received``,
        ``bytes_sent``)."""
        session = self._session
        if session is None:
            return wire_stats(None, None, None)
        return wire_stats(session.encoder.codec, session.decoder, session.encoder)

    def set_message_callback(self, callback: Optional[MessageCallback]) -> None:
        """Sets (or, with ``None``, removes) the function that receives
        unsolicited frames, on the receiving thread."""
        self._callback = callback

    def ping(self, *, timeout: Optional[float] = None) -> float:
        """Pings the server; returns the round-trip time in seconds."""
        start = time.perf_counter()
        self._call(protocol.ping_message(self.client_info), "pong", timeout)
        return time.perf_counter() - start

    def echo(self, content: Any, *, timeout: Optional[float] = None) -> Any:
        """Has the server echo ``content`` (any JSON value); returns it as echoed."""
        return self._call(protocol.echo_message(content), "echo_response", timeout).get("content")

    def broadcast(self, content: Any, *, timeout: Optional[float] = None) -> int:
        """Sends ``content`` to every other client; returns how many there were."""
        reply = self._call(protocol.broadcast_message(content), "broadcast_sent", timeout)
        recipients = reply.get("recipients")
        if not isinstance(recipients, int):
            raise ProtocolError(f"broadcast_sent without a numeric recipients field: {reply}")
        return recipients

    def get_stats(self, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The server's statistics (the ``server_stats`` frame, without ``type``/``id``)."""
        reply = self._call(protocol.stats_message(), "server_stats", timeout)
        return {k: v for k, v in reply.items() if k not in ("type", "id")}

    def send_text(self, text: str, *, timeout: Optional[float] = None) -> Message:
        """Sends plain text (``{"type": "message", "content": text}``); returns the
        ``message_ack`` frame."""
        return self._call(protocol.text_message(text), "message_ack", timeout)

    def send_custom(
        self,
        message_type: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Message:
        """Sends a message of any type with ``data``'s fields beside ``type``;
        returns the answer frame. A server with no handler for the type
        answers ``unknown_type``, raised as :class:`ServerError`."""
        return self._call(protocol.custom_message(message_type, data), None, timeout)

    def request(
        self,
        message_type: str,
        fields: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
        check: bool = True,
    ) -> Message:
        """Sends ``{"type": message_type, **fields}`` and returns the answer
        frame as is. With ``check=False`` an ``error`` answer is returned
        instead of raised."""
        msg: Message = dict(fields) if fields else {}
        msg["type"] = message_type
        return self._call(msg, None, timeout, check=check)

    # -------------------------------------------------------------- channels

    def subscribe(
        self,
        channel: str,
        callback: Optional[MessageCallback] = None,
        *,
        on_recovered: Optional[Callable[[Subscription], Any]] = None,
        on_lost: Optional[Callable[[Subscription, str], Any]] = None,
        timeout: Optional[float] = None,
    ) -> Subscription:
        """Subscribes to ``channel``; returns once the server has answered
        ``subscribed``. Its messages go to ``callback`` (on the receiving
        thread), or without one to :meth:`Subscription.next_message`.
        ``on_recovered(sub)`` and ``on_lost(sub, reason)`` tell what a
        reconnection (or a gap in a history channel) cost; see
        :class:`BaseSubscription`.

        Raises ``TypeError``/``ValueError`` for a channel that is not a
        non-empty str, ``ValueError`` when this client already holds a
        subscription to it, and :class:`ServerError` when the server
        refuses (``invalid_channel``, ``too_many_subscriptions``,
        ``permission_denied``)."""
        protocol.check_channel(channel)
        sub = Subscription(self, channel, callback, on_recovered, on_lost, self._max_queued)
        with self._lock:
            if channel in self._subs:
                raise ValueError(f"this client is already subscribed to {channel!r}")
            self._subs[channel] = sub
        try:
            self._call(sub.state.subscribe_request(), "subscribed", timeout)
        except BaseException:
            self._forget(sub)
            sub._close()
            raise
        return sub

    def unsubscribe(self, channel: str, *, timeout: Optional[float] = None) -> None:
        """Leaves ``channel``: :meth:`Subscription.unsubscribe` for the
        client's subscription to it, else a plain ``unsubscribe`` request
        (the server answers it even for a channel it does not hold)."""
        protocol.check_channel(channel)
        with self._lock:
            sub = self._subs.get(channel)
        if sub is not None:
            sub.unsubscribe(timeout=timeout)
        else:
            self._call(protocol.unsubscribe_message(channel), "unsubscribed", timeout)

    def publish(self, channel: str, content: Any, *, timeout: Optional[float] = None) -> Published:
        """Publishes ``content`` (any JSON value) to ``channel``'s
        subscribers; returns the :class:`~ringcast.channels.Published`
        answer (``recipients``; ``offset`` and ``epoch`` on a history
        channel). The publisher gets its own message only if subscribed."""
        protocol.check_channel(channel)
        reply = self._call(protocol.publish_message(channel, content), "published", timeout)
        return published_from_frame(reply)

    def history(
        self,
        channel: str,
        *,
        since: Optional[int] = None,
        limit: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> History:
        """The publications of a history channel after offset ``since``, at
        most ``limit`` (server default 100, maximum 1000), as a
        :class:`~ringcast.channels.History`. A channel without history is
        answered :class:`ServerError` with code ``no_history``."""
        protocol.check_channel(channel)
        msg = protocol.history_message(channel, since, limit)
        return history_from_frame(self._call(msg, "history", timeout))

    @property
    def subscriptions(self) -> Dict[str, Subscription]:
        """The client's open subscriptions, by channel (a copy)."""
        with self._lock:
            return dict(self._subs)

    def next_message(self, timeout: Optional[float] = None) -> Message:
        """The oldest queued unsolicited frame (used when no callback is set);
        waits up to ``timeout`` seconds (``None``: for ever), then raises
        :class:`Timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue_cond:
            while not self._queue:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Timeout(f"no message within {timeout} s")
                self._queue_cond.wait(left)
            return self._queue.popleft()

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Waits until the client is connected (after a reconnection, say);
        returns whether it is. False at once once the client is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_changed:
            while self._sock is None and not self._closing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._state_changed.wait(left)
            return self._sock is not None

    def close(self) -> None:
        """Closes the connection and stops the background thread. Requests
        still waiting fail with :class:`ConnectionClosed`. Safe to call twice."""
        with self._lock:
            already = self._closing
            self._closing = True
            sock = self._sock
            self._state_changed.notify_all()
        self._stop.set()
        if not already:
            close_quietly(sock)
        if threading.current_thread() is not self._receiver:
            self._receiver.join(timeout=5.0)
        self._end_subscriptions()

    disconnect = close

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("closed" if self._closing else "disconnected")
        return f"<ringcast.Client {self.host}:{self.port} {state}>"

    # ------------------------------------------------------------- internals

    def _open(self, verify: bool) -> Session:
        """A new connection: hello when compression is asked for,
        authenticated when a token is set; with ``verify`` (reconnections) a
        ping proves the server answers, unless hello or auth did."""
        return open_session(
            self.host,
            self.port,
            timeout=self.connect_timeout,
            ssl_context=self.ssl_context,
            server_hostname=self.server_hostname,
            max_frame_bytes=self.max_frame_bytes,
            offer=self.compression_offer,
            auth_token=self.token_provider() if self.token_provider else self.auth_token,
            next_id=self._ids.__next__,
            verify_message=(lambda: protocol.ping_message(self.client_info)) if verify else None,
        )

    def _set_session(self, session: Session) -> None:
        """Makes ``session`` the current connection (under ``_lock`` by the caller
        once the receiver runs): its socket and encoder change together."""
        self._sock = session.sock
        self._session = session
        self.token_expires_at = session.expires_at

    def _call(
        self,
        msg: Message,
        expect: Optional[str],
        timeout: Optional[float],
        *,
        check: bool = True,
    ) -> Message:
        if threading.current_thread() is self._receiver:
            raise RingcastError(
                "requests cannot be made from the message callback: it runs on the thread "
                "that reads their answers (use next_message() on a thread of your own)"
            )
        rid = next(self._ids)
        msg["id"] = rid
        waiter = _Waiter()
        with self._lock:
            sock = self._sock
            if sock is None:
                raise self._not_connected()
            # The encoder goes with the socket: a reconnection may have
            # negotiated another codec, or none.
            session = self._session
            assert session is not None and session.sock is sock
            encoder = session.encoder
            self._pending[rid] = waiter
        try:
            frame = encoder.encode(msg)
        except BaseException:
            with self._lock:
                self._pending.pop(rid, None)
            raise
        try:
            with self._send_lock:
                sock.sendall(frame)
                encoder.bytes_sent += len(frame)
        except OSError as e:
            with self._lock:
                self._pending.pop(rid, None)
            raise ConnectionClosed(f"send failed: {e}") from e
        t = self.timeout if timeout is None else timeout
        if not waiter.lock.acquire(timeout=-1 if t is None else max(t, 0.0)):
            with self._lock:
                gone = self._pending.pop(rid, None) is None
            if not gone:
                raise Timeout(f"no answer to {msg['type']} within {t} s")
            # The receiver took it between our timeout and the pop: it is
            # resolving it now.
            waiter.lock.acquire()
        if waiter.error is not None:
            raise waiter.error
        reply = waiter.reply
        assert reply is not None
        kind = reply.get("type")
        if kind == "error" and check:
            raise ServerError.from_frame(reply)
        if expect is not None and kind != expect:
            raise ProtocolError(f"expected {expect} in answer to {msg['type']}, got {reply}")
        return reply

    def _not_connected(self) -> ConnectionClosed:
        if self._closing:
            return ConnectionClosed("client is closed")
        last = self._last_reason
        if last is not None:
            return ConnectionClosed(f"not connected ({last.reason})", last.code, last.message)
        return ConnectionClosed("not connected")

    def _run(self, session: Session) -> None:
        """The receiving thread: reads, dispatches, and reconnects per policy."""
        while True:
            reason = self._receive(session.sock, session.decoder)
            self._connection_lost(session.sock, reason)
            if self._closing or self.reconnect_policy is None:
                break
            reconnected = self._reconnect(self.reconnect_policy)
            if reconnected is None:
                break
            session = reconnected
        self._end_subscriptions()

    def _forget(self, sub: Subscription) -> None:
        """Removes ``sub`` from the channels the client holds."""
        with self._lock:
            if self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]

    def _unsubscribe(self, sub: Subscription, timeout: Optional[float]) -> None:
        try:
            self._call(protocol.unsubscribe_message(sub.channel), "unsubscribed", timeout)
        except ConnectionClosed:
            pass  # no connection, no subscription: the server drops them together
        finally:
            self._forget(sub)

    def _end_subscriptions(self) -> None:
        """Closes every subscription: the client will not connect again."""
        with self._lock:
            subs, self._subs = list(self._subs.values()), Subscriptions()
        for sub in subs:
            sub._close()

    def _resubscribe(self, session: Session) -> None:
        """Subscribes the new connection to every channel held (with
        ``recover`` where there is a position); the answers are read by
        the receiving thread like any other. Called on that thread, so no
        frame of the new connection is read before these are sent."""
        frames: List[bytes] = []
        with self._lock:
            for sub in self._subs.values():
                # Not yet answered on any connection: its subscribe() call
                # fails with the old connection, and forgets it.
                if sub.closed or not sub.state.subscribed_once:
                    continue
                msg = sub.state.subscribe_request()
                rid = next(self._ids)
                msg["id"] = rid
                self._pending[rid] = _Resubscribe(self, sub)
                frames.append(session.encoder.encode(msg))
        if not frames:
            return
        data = b"".join(frames)
        try:
            with self._send_lock:
                session.sock.sendall(data)
                session.encoder.bytes_sent += len(data)
        except OSError as e:
            # The receiving loop sees the connection fail, and the next
            # one subscribes again.
            log.info("ringcast resubscription failed: %s", e)

    def _receive(self, sock: socket.socket, decoder: FrameDecoder) -> ConnectionClosed:
        """Reads until the connection ends; returns why it ended."""
        try:
            while True:
                data = sock.recv(RECV_CHUNK)
                if not data:
                    return self._closed_reason("server closed the connection")
                for msg in decoder.feed(data):
                    self._dispatch(msg)
        except ProtocolError as e:
            return ConnectionClosed(f"protocol error: {e}")
        except OSError as e:
            if self._closing:
                return ConnectionClosed("client is closed")
            return self._closed_reason(f"connection lost: {e}")

    def _closed_reason(self, what: str) -> ConnectionClosed:
        frame = self._closing_frame
        if frame is None:
            return ConnectionClosed(what)
        code = str(frame.get("code"))
        message = str(frame.get("message", ""))
        return ConnectionClosed(f"{what} ({code}: {message})", code, message)

    def _dispatch(self, msg: Message) -> None:
        rid = msg.get("id")
        waiter: Optional[Union[_Waiter, _Resubscribe]] = None
        if rid is not None:
            if isinstance(rid, int):
                with self._lock:
                    waiter = self._pending.pop(rid, None)
            if waiter is None:
                # An answer whose request timed out (or an id we never sent).
                log.debug("dropping answer with unknown id: %.200s", msg)
                return
        elif msg.get("type") == "unsubscribed" and "reason" in msg:
            # Dropped by the server (a refresh narrowed the token): not an
            # answer; not to be made again after a reconnection.
            with self._lock:
                self._subs.pop(msg.get("channel"), None)  # type: ignore[arg-type]
        elif msg.get("type") in ANSWER_TYPES:
            # A server that does not copy ids (the seed's): oldest request first.
            with self._lock:
                if self._pending:
                    waiter = self._pending.pop(next(iter(self._pending)))
        elif msg.get("type") == "channel_message":
            # The channel's own subscription and every matching pattern's.
            with self._lock:
                subs = self._subs.for_message(msg.get("channel"))
            if subs:
                for sub in subs:
                    sub._handle_message(msg)
                return
        if waiter is not None:
            if msg.get("type") == "subscribed":
                with self._lock:
                    sub = self._subs.get(msg.get("channel"))  # type: ignore[arg-type]
                if sub is not None:
                    # Before the answer is handed over, and before the
                    # replayed messages that follow it are read.
                    sub._handle_subscribed(msg)
            waiter.resolve(msg, None)
            return
        if msg.get("type") == "error" and msg.get("code") in CLOSING_CODES:
            self._closing_frame = msg
        self._deliver(msg)

    def _deliver(self, msg: Message) -> None:
        callback = self._callback
        if callback is not None:
            try:
                callback(msg)
            except Exception:
                log.exception("ringcast message callback raised")
            return
        with self._queue_cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped_messages += 1
            self._queue.append(msg)
            self._queue_cond.notify()

    def _connection_lost(self, sock: socket.socket, reason: ConnectionClosed) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None
            pending = list(self._pending.values())
            self._pending.clear()
            self._last_reason = reason
            self._closing_frame = None
            self._state_changed.notify_all()
        close_quietly(sock)
        for waiter in pending:
            waiter.resolve(None, ConnectionClosed(reason.reason, reason.code, reason.message))
        if not self._closing:
            log.info("ringcast connection to %s:%s lost: %s", self.host, self.port, reason)

    def _reconnect(self, policy: ReconnectPolicy) -> Optional[Session]:
        attempt = 0
        for delay in policy.delays():
            attempt += 1
            if self._stop.wait(delay):
                return None
            try:
                # verify: a ping proves the server answers, not just that a
                # backlog took us (hello or auth prove it as well).
                session = self._open(verify=True)
            except (OSError, RingcastError) as e:
                log.info("ringcast reconnection attempt %d failed: %s", attempt, e)
                continue
            with self._lock:
                if self._closing:
                    close_quietly(session.sock)
                    return None
                self._set_session(session)
                self.reconnect_count += 1
                self._state_changed.notify_all()
            log.info("ringcast reconnected to %s:%s on attempt %d", self.host, self.port, attempt)
            self._resubscribe(session)
            for msg in session.early:
                self._dispatch(msg)
            return session
        log.warning("ringcast gave up reconnecting after %d attempts", attempt)
        return None
