"""The seed example's client, :class:`ringcast.TCPClient`, name for name.

Code written for the seed's ``client.py`` runs against ringcast with one
changed import::

    from ringcast import TCPClient   # was: from client import TCPClient

Sends are fire-and-forget (they return ``True`` once the frame is written)
and every frame the server sends reaches the message callback, from a
background receiving thread, as in the seed.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from . import protocol
from ._net import Session, close_quietly, open_session, wire_stats
from ._version import __version__
from .backoff import ReconnectPolicy
from .channels import Subscriptions
from .client import BaseSubscription, MessageCallback
from .compression import CompressionArg, resolve_offer
from .errors import RingcastError, ServerError
from .protocol import RECV_CHUNK, Message

log = logging.getLogger("ringcast")

#: Sent as ``client_info`` in pings, like the seed's ``"TCP Client info"``.
SEED_CLIENT_INFO = f"ringcast Python TCPClient {__version__}"

#: ``id`` prefix of the client's own pings (heartbeats, reconnection checks)
#: and resubscriptions: their answers are not passed to the callback.
_INTERNAL_ID = "__ringcast_tcpclient_"

#: ``id`` prefix of the subscribe frames of :meth:`TCPClient.subscribe`
#: (their answers do reach the callback): it ties a refusal to its
#: subscription.
_SUBSCRIBE_ID = "__ringcast_subscribe_"


class TCPSubscription(BaseSubscription):
    """A channel subscription of :class:`TCPClient`, from
    :meth:`TCPClient.subscribe`.

    Its ``channel_message`` frames go to ``callback`` when it is set, else
    to the client's message callback, on the receiving thread. See
    :class:`ringcast.client.BaseSubscription` for ``on_recovered`` and
    ``on_lost``; :meth:`wait_subscribed` waits for the server's answer.
    """

    def __init__(
        self,
        client: TCPClient,
        channel: str,
        callback: Optional[MessageCallback],
        on_recovered: Optional[Callable[[TCPSubscription], Any]],
        on_lost: Optional[Callable[[TCPSubscription, str], Any]],
    ) -> None:
        super().__init__(channel, callback, on_recovered, on_lost)
        self.client = client
        self._cond = threading.Condition()
        # The connection this subscription was last sent on (under the
        # client's _state), so each connection sends it exactly once.
        self._sent_on: Optional[Session] = None

    def unsubscribe(self) -> bool:
        """Leaves the channel (fire-and-forget, like the seed's sends): sends
        ``unsubscribe`` when connected and returns whether it was written;
        nothing more is delivered either way, and the ``unsubscribed``
        answer reaches the client's callback."""
        return self.client._unsubscribe(self)

    def wait_subscribed(self, timeout: Optional[float] = None) -> bool:
        """Waits until the server has answered ``subscribed`` (on any
        connection); returns whether it has. Raises :class:`ServerError`
        when the server refused (``invalid_channel``,
        ``too_many_subscriptions``, ...)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self.state.subscribed_once:
                if self.error is not None:
                    raise self.error
                if self._closed:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _handle_subscribed(self, frame: Dict[str, Any]) -> None:
        super()._handle_subscribed(frame)
        with self._cond:
            self._cond.notify_all()

    def _rejected(self, error: ServerError) -> None:
        """The server answered a subscribe with an error."""
        self.client._forget(self)
        if self.state.subscribed_once:
            self._refused(error)  # a resubscription: reported lost
        else:
            self.error = error
            self._close()

    def _deliver(self, frame: Dict[str, Any]) -> None:
        callback = self.callback
        if callback is None:
            self.client._to_callback(frame)
            return
        try:
            callback(frame)
        except Exception:
            log.exception("subscription callback raised (%s)", self.channel)

    def _close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class TCPClient:
    """A TCP client for ringcast with the seed's API.

    ``connect()`` returns ``True`` or ``False``; ``ping()``, ``echo()``,
    ``broadcast()``, ``get_server_stats()``, ``send_custom_message()``,
    ``send_text()`` and ``send_message()`` send one frame and return whether
    it was written; the answers reach the callback set with
    :meth:`set_message_callback` (as dicts, on the receiving thread). Without
    a callback, frames are logged at INFO on the ``ringcast`` logger.

    Attributes: ``host``, ``port``, ``socket``, ``connected``, ``running``,
    ``message_callback``, ``receive_thread`` (the seed README does not list
    its client's attributes; these are the usual ones of such a client).

    Reconnection: when the connection drops while the client is running,
    the receiving thread reconnects with exponential backoff and jitter
    (``reconnect_policy``; default: 0.1 s doubling to 5 s, for ever). Sends
    return ``False`` while it is disconnected. ``auto_reconnect=False``
    turns this off.

    Heartbeat: with ``heartbeat_interval`` set, the client pings that often;
    once ``heartbeat_max_missed`` pongs in a row have not come (nothing at
    all from the server for about ``heartbeat_max_missed + 1`` intervals),
    the connection is declared dead and dropped (then reconnected). The
    pongs to these pings are not passed to the callback.

    Compression: with ``compression`` (``"zstd"``, ``"deflate"``, or a list
    in order of preference) every connection starts with ``hello``; when
    the server agrees on a codec, large frames are compressed both ways.
    The ``hello_ok`` answer is the client's own (not passed to the
    callback); :attr:`compression` and :attr:`server_info` show it. A server
    that refuses, or predates hello, is used uncompressed.

    Channels, beside the seed's API: :meth:`subscribe` returns a
    :class:`TCPSubscription` and works connected or not (a subscription is
    kept until unsubscribed, and every connection, the first and each
    reconnection, subscribes to it, with ``recover`` from its position on
    a history channel); :meth:`publish`, :meth:`unsubscribe` and
    :meth:`history` are fire-and-forget sends whose answers reach the
    callback.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 9999,
        *,
        auto_reconnect: bool = True,
        reconnect_policy: Optional[ReconnectPolicy] = None,
        heartbeat_interval: Optional[float] = None,
        heartbeat_max_missed: int = 2,
        auth_token: Optional[str] = None,
        connect_timeout: float = 5.0,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        client_info: str = SEED_CLIENT_INFO,
        compression: CompressionArg = None,
    ) -> None:
        #: The codecs offered in hello (None: no hello, the seed's behaviour).
        self.compression_offer = resolve_offer(compression)
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if heartbeat_max_missed < 1:
            raise ValueError("heartbeat_max_missed must be at least 1")
        self.host = host
        self.port = port
        self.socket: Optional[socket.socket] = None
        self.connected = False
        self.running = False
        self.message_callback: Optional[Callable[[Dict[str, Any]], Any]] = None
        self.receive_thread: Optional[threading.Thread] = None
        self.auto_reconnect = auto_reconnect
        self.reconnect_policy = reconnect_policy or ReconnectPolicy()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_max_missed = heartbeat_max_missed
        self.auth_token = auth_token
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.client_info = client_info
        #: Successful reconnections since :meth:`connect`.
        self.reconnect_count = 0
        #: Frames received since :meth:`connect` (internal pongs included).
        self.messages_received = 0
        #: Frames sent since :meth:`connect`.
        self.messages_sent = 0

        self._send_lock = threading.Lock()
        self._state = threading.Condition()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._last_rx = time.monotonic()
        self._heartbeat_thread: Optional[threading.Thread] = None
        # The current connection: socket, decoder and encoder together, so a
        # send never uses one connection's codec on another.
        self._session: Optional[Session] = None
        # Subscriptions by channel, and subscribe frames awaiting their
        # answer by id; both under _state.
        self._subs: Subscriptions[TCPSubscription] = Subscriptions()
        self._sub_ids: Dict[str, TCPSubscription] = {}

    # ------------------------------------------------------- the seed's API

    def set_message_callback(self, callback: Optional[Callable[[Dict[str, Any]], Any]]) -> None:
        """Sets the function that receives every frame from the server, as a dict."""
        self.message_callback = callback

    def connect(self) -> bool:
        """Connects (and authenticates when ``auth_token`` is set); starts the
        receiving thread and, if configured, the heartbeat. Returns whether it
        worked; calling it while connected returns ``True``."""
        if self.running and self.connected:
            return True
        if self.running:  # reconnecting in the background: stop that first
            self.disconnect()
        try:
            session = self._open(verify=False)
        except (OSError, RingcastError) as e:
            log.error("could not connect to %s:%s: %s", self.host, self.port, e)
            return False
        sock = session.sock
        self._stop.clear()
        with self._state:
            self._session = session
            self.socket = sock
            self.connected = True
            self.running = True
            self.reconnect_count = 0
            subs = self._claim_subscriptions(session)
            self._state.notify_all()
        self._last_rx = time.monotonic()
        self._send_subscribes(session, subs)
        self.receive_thread = threading.Thread(
            target=self._receive_loop,
            args=(session,),
            name=f"ringcast-tcpclient-{self.host}:{self.port}",
            daemon=True,
        )
        self.receive_thread.start()
        if self.heartbeat_interval is not None:
            self._heartbeat_thread = threading.Thread(
                target=self._heartbeat_loop, name="ringcast-heartbeat", daemon=True
            )
            self._heartbeat_thread.start()
        for msg in session.early:
            self._handle(msg)
        log.info("connected to %s:%s", self.host, self.port)
        return True

    def disconnect(self, timeout: float = 1.0) -> None:
        """Closes the connection and stops the background threads. Safe to
        call twice, and from the callback.

        The close is graceful: the client first half-closes its side, so the
        server answers everything already sent and then closes; those answers
        still reach the callback, for up to ``timeout`` seconds. So the seed's
        ``ping(); echo(...); ...; disconnect()`` sees every answer.
        """
        with self._state:
            self.running = False
            sock = self.socket
            live = self.connected
            self._state.notify_all()
        self._stop.set()
        me = threading.current_thread()
        receiver = self.receive_thread
        if live and sock is not None and receiver is not None and receiver is not me:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            receiver.join(timeout)
        with self._state:
            self.connected = False
            if self.socket is sock:
                self.socket = None
            self._state.notify_all()
        close_quietly(sock)
        for t in (receiver, self._heartbeat_thread):
            if t is not None and t is not me:
                t.join(timeout=5.0)

    def send_message(self, message: Dict[str, Any]) -> bool:
        """Sends one message (a dict with a ``type``); returns whether it was written."""
        session = self._session
        if not self.connected or session is None:
            return False
        encoder = session.encoder
        frame = encoder.encode(message)
        try:
            with self._send_lock:
                session.sock.sendall(frame)
                encoder.bytes_sent += len(frame)
        except OSError as e:
            log.warning("send failed: %s", e)
            return False
        self.messages_sent += 1
        return True

    def ping(self) -> bool:
        """Sends ``{"type": "ping", "timestamp", "client_info"}``; the ``pong``
        reaches the callback."""
        return self.send_message(protocol.ping_message(self.client_info))

    def echo(self, content: Any) -> bool:
        """Sends ``{"type": "echo", "content", "timestamp"}``; the ``echo_response``
        reaches the callback."""
        return self.send_message(protocol.echo_message(content))

    def broadcast(self, content: Any) -> bool:
        """Sends ``{"type": "broadcast", "content", "timestamp"}``; the sender gets
        ``broadcast_sent``, the other clients ``broadcast_message``."""
        return self.send_message(protocol.broadcast_message(content))

    def get_server_stats(self) -> bool:
        """Sends ``{"type": "get_stats", "timestamp"}``; ``server_stats`` reaches the callback."""
        return self.send_message(protocol.stats_message())

    def send_custom_message(self, message_type: str, data: Dict[str, Any]) -> bool:
        """Sends ``{"type": message_type, **data, "timestamp"}``. The ringcast
        CLI server answers a type it has no handler for with an ``error``
        frame (code ``unknown_type``), which reaches the callback."""
        return self.send_message(protocol.custom_message(message_type, data))

    def send_text(self, text: str) -> bool:
        """Sends plain text as the seed's interactive mode does:
        ``{"type": "message", "content": text, "timestamp"}`` (answered ``message_ack``)."""
        return self.send_message(protocol.text_message(text))

    # ------------------------------------------------------------ additions

    def subscribe(
        self,
        channel: str,
        callback: Optional[MessageCallback] = None,
        *,
        on_recovered: Optional[Callable[[TCPSubscription], Any]] = None,
        on_lost: Optional[Callable[[TCPSubscription, str], Any]] = None,
    ) -> TCPSubscription:
        """Subscribes to ``channel``: sends ``subscribe`` now when connected,
        else at the next :meth:`connect` or reconnection; returns the
        :class:`TCPSubscription` at once. Its messages go to ``callback``,
        or without one to the message callback. ``on_recovered(sub)`` and
        ``on_lost(sub, reason)``: see
        :class:`ringcast.client.BaseSubscription`.

        The ``subscribed`` answer (or the ``error`` refusing it) reaches the
        message callback like any answer; :meth:`TCPSubscription.wait_subscribed`
        waits for it, raising :class:`ServerError` on a refusal. Raises
        ``TypeError``/``ValueError`` for a channel that is not a non-empty
        str, ``ValueError`` when already subscribed to it."""
        protocol.check_channel(channel)
        sub = TCPSubscription(self, channel, callback, on_recovered, on_lost)
        with self._state:
            held = self._subs.get(channel)
            if held is not None and not held.closed:
                raise ValueError(f"this client is already subscribed to {channel!r}")
            self._subs[channel] = sub
            session = self._session if self.connected else None
            if session is not None:
                sub._sent_on = session
        if session is not None:
            self._send_subscribes(session, [sub])
        return sub

    def unsubscribe(self, channel: str) -> bool:
        """Sends ``{"type": "unsubscribe", "channel"}`` and ends this
        client's subscription to ``channel`` (nothing more is delivered);
        returns whether the frame was written (False while disconnected:
        the server dropped the subscription with the connection)."""
        protocol.check_channel(channel)
        with self._state:
            sub = self._subs.get(channel)
        if sub is not None:
            return self._unsubscribe(sub)
        return self.send_message(protocol.unsubscribe_message(channel))

    def publish(self, channel: str, content: Any) -> bool:
        """Sends ``{"type": "publish", "channel", "content"}``; the
        ``published`` answer (or an ``error``) reaches the callback."""
        protocol.check_channel(channel)
        return self.send_message(protocol.publish_message(channel, content))

    def history(
        self, channel: str, since: Optional[int] = None, limit: Optional[int] = None
    ) -> bool:
        """Sends ``{"type": "history", "channel", "since"?, "limit"?}``; the
        ``history`` answer (or ``error`` ``no_history``) reaches the callback."""
        protocol.check_channel(channel)
        return self.send_message(protocol.history_message(channel, since, limit))

    @property
    def subscriptions(self) -> Dict[str, TCPSubscription]:
        """The open subscriptions, by channel (a copy)."""
        with self._state:
            return {c: s for c, s in self._subs.items() if not s.closed}

    @property
    def compression(self) -> Optional[str]:
        """The codec negotiated on the current (or last) connection:
        ``"zstd"``, ``"deflate"``, or None when not asked for or refused."""
        session = self._session
        return session.compression if session is not None else None

    @property
    def server_info(self) -> Optional[Dict[str, Any]]:
        """The current (or last) connection's ``hello_ok`` fields
        (``server``, ``protocol``, ``features``, ...), or None without
        hello or from a server that predates it."""
        session = self._session
        return dict(session.hello) if session is not None and session.hello else None

    def compression_stats(self) -> Dict[str, Any]:
        """Compressed frames and bytes in and out on the current (or last)
        connection, and all frame bytes (see :meth:`ringcast.Client.compression_stats`)."""
        session = self._session
        if session is None:
            return wire_stats(None, None, None)
        return wire_stats(session.encoder.codec, session.decoder, session.encoder)

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Waits until the client is connected (say, after a reconnection);
        returns whether it is. Returns ``False`` at once if not running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            while self.running and not self.connected:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._state.wait(left)
            return self.connected

    def __enter__(self) -> TCPClient:
        if not self.connect():
            raise ConnectionError(f"could not connect to {self.host}:{self.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("reconnecting" if self.running else "idle")
        return f"<ringcast.TCPClient {self.host}:{self.port} {state}>"

    # ------------------------------------------------------------- internals

    def _internal_id(self) -> str:
        return f"{_INTERNAL_ID}{next(self._ids)}"

    def _open(self, verify: bool) -> Session:
        return open_session(
            self.host,
            self.port,
            timeout=self.connect_timeout,
            ssl_context=self.ssl_context,
            server_hostname=self.server_hostname,
            max_frame_bytes=protocol.CLIENT_MAX_FRAME_BYTES,
            offer=self.compression_offer,
            auth_token=self.auth_token,
            next_id=self._internal_id,
            verify_message=(lambda: protocol.ping_message(self.client_info)) if verify else None,
        )

    def _handle(self, msg: Message) -> None:
        self.messages_received += 1
        self._last_rx = time.monotonic()
        kind = msg.get("type")
        rid = msg.get("id")
        if kind == "channel_message":
            # The channel's own subscription and every matching pattern's.
            with self._state:
                subs = self._subs.for_message(msg.get("channel"))
            if subs:
                for sub in subs:
                    sub._handle_message(msg)
                return
        elif isinstance(rid, str) and (kind == "subscribed" or kind == "error"):
            with self._state:
                sub = self._sub_ids.pop(rid, None)
            if sub is not None:
                if kind == "subscribed":
                    # Before the replayed messages that follow it are read.
                    sub._handle_subscribed(msg)
                else:
                    sub._rejected(ServerError.from_frame(msg))
        elif kind == "unsubscribed":
            with self._state:
                sub = self._subs.get(msg.get("channel"))  # type: ignore[arg-type]
                if sub is not None and sub.closed:
                    del self._subs[sub.channel]
        if isinstance(rid, str) and rid.startswith(_INTERNAL_ID):
            return
        self._to_callback(msg)

    def _to_callback(self, msg: Message) -> None:
        callback = self.message_callback
        if callback is None:
            log.info("received: %s", msg)
            return
        try:
            callback(msg)
        except Exception:
            log.exception("message callback raised")

    def _receive_loop(self, session: Session) -> None:
        while True:
            sock, decoder = session.sock, session.decoder
            try:
                while True:
                    data = sock.recv(RECV_CHUNK)
                    if not data:
                        why = "server closed the connection"
                        break
                    for msg in decoder.feed(data):
                        self._handle(msg)
            except (OSError, RingcastError) as e:
                why = f"connection lost: {e}"
            with self._state:
                if self.socket is sock:
                    self.socket = None
                self.connected = False
                self._state.notify_all()
            close_quietly(sock)
            if not self.running:
                return
            log.warning("%s:%s: %s", self.host, self.port, why)
            if not self.auto_reconnect:
                with self._state:
                    self.running = False
                    self._state.notify_all()
                return
            reopened = self._reconnect()
            if reopened is None:
                return
            session = reopened

    def _reconnect(self) -> Optional[Session]:
        attempt = 0
        for delay in self.reconnect_policy.delays():
            attempt += 1
            if self._stop.wait(delay):
                return None
            try:
                session = self._open(verify=True)
            except (OSError, RingcastError) as e:
                log.info("reconnection attempt %d failed: %s", attempt, e)
                continue
            sock = session.sock
            with self._state:
                if not self.running:
                    close_quietly(sock)
                    return None
                self._session = session
                self.socket = sock
                self.connected = True
                self.reconnect_count += 1
                subs = self._claim_subscriptions(session)
                self._state.notify_all()
            self._last_rx = time.monotonic()
            log.info("reconnected to %s:%s on attempt %d", self.host, self.port, attempt)
            self._send_subscribes(session, subs)
            for msg in session.early:
                self._handle(msg)
            return session
        log.error("gave up reconnecting to %s:%s after %d attempts", self.host, self.port, attempt)
        with self._state:
            self.running = False
            self._state.notify_all()
        return None

    def _claim_subscriptions(self, session: Session) -> List[TCPSubscription]:
        """Under ``_state``, for a new connection: forgets the ids of the old
        one and the closed subscriptions, and returns those that this
        connection must subscribe to (each claimed once per connection)."""
        self._sub_ids.clear()
        for channel in [c for c, s in self._subs.items() if s.closed]:
            del self._subs[channel]
        subs = [s for s in self._subs.values() if s._sent_on is not session]
        for sub in subs:
            sub._sent_on = session
        return subs

    def _send_subscribes(self, session: Session, subs: List[TCPSubscription]) -> None:
        """Sends a subscribe per subscription, in one write: a first one with
        an id the callback sees, a resubscription (with ``recover`` when the
        channel has a position) with an internal id."""
        if not subs:
            return
        frames: List[bytes] = []
        with self._state:
            for sub in subs:
                first = not sub.state.subscribed_once
                msg = sub.state.subscribe_request()
                rid = f"{_SUBSCRIBE_ID if first else _INTERNAL_ID}{next(self._ids)}"
                msg["id"] = rid
                self._sub_ids[rid] = sub
                frames.append(session.encoder.encode(msg))
        data = b"".join(frames)
        try:
            with self._send_lock:
                session.sock.sendall(data)
                session.encoder.bytes_sent += len(data)
        except OSError as e:
            # The receiving thread sees the connection fail; the next one
            # subscribes again.
            log.warning("subscribe failed: %s", e)
            return
        self.messages_sent += len(frames)

    def _forget(self, sub: TCPSubscription) -> None:
        with self._state:
            if self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]

    def _unsubscribe(self, sub: TCPSubscription) -> bool:
        if sub.closed:
            return False
        sub._close()  # stays in _subs, dropping messages, until unsubscribed
        sent = self.send_message(protocol.unsubscribe_message(sub.channel))
        if not sent:
            self._forget(sub)
        return sent

    def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval
        assert interval is not None
        # A pong comes about one interval after the previous one; with
        # ``heartbeat_max_missed`` of them missing in a row, the last frame is
        # about ``max_missed + 1`` intervals old at a check. Half an interval
        # of slack keeps scheduling jitter from deciding.
        dead_after = interval * (self.heartbeat_max_missed + 0.5)
        while not self._stop.wait(interval):
            if not self.connected:
                continue
            if time.monotonic() - self._last_rx > dead_after:
                log.warning(
                    "no frame from %s:%s for %.1f s: declaring the connection dead",
                    self.host,
                    self.port,
                    dead_after,
                )
                # Waking the receiving thread makes it reconnect.
                sock = self.socket
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                continue
            msg = protocol.ping_message(self.client_info)
            msg["id"] = self._internal_id()
            self.send_message(msg)
