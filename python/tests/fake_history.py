"""A fake ringcast server with channel history and recovery, for protocol-level
tests of the clients while the real server has no history yet.

It is written from the wire rules (the brief of the history feature, quoted
in python/README.md, "Channels"), apart from the client's code: its own
framing with struct and json, its own channel log. What it implements:

- ``ping`` -> ``pong``; ``auth`` -> ``auth_ok``; ``hello`` ->
  ``unknown_type`` (a server from before hello; the clients go on plain);
- ``subscribe`` / ``unsubscribe`` -> ``subscribed`` / ``unsubscribed``
  with ``subscriptions``. On a history channel (``history_channels``)
  ``subscribed`` carries ``offset`` (the latest, 0 when none) and
  ``epoch``;
- ``subscribe`` with ``recover: {offset: N, epoch: E}``: on a history
  channel whose epoch is E and whose log still holds everything after N
  (N not below the oldest kept offset - 1, not past the latest), the answer
  is ``recovered: true`` and publications N+1..latest follow at once, in
  order, before any live one; otherwise ``recovered: false`` and nothing
  is replayed (always so on a channel without history);
- ``publish`` -> ``published`` (with ``offset``/``epoch`` on a history
  channel), then ``channel_message`` to every subscriber (the publisher too
  when subscribed, after its ``published``);
- ``history`` (``since``, ``limit`` default 100, max 1000) -> ``history``
  with ``offset``, ``epoch`` and ``publications``; on a channel without
  history ``error`` ``no_history`` (the connection stays);
- an empty channel name: ``invalid_channel``; other types: ``unknown_type``.

The test drives it: :meth:`publish` (a publication from the server side),
:meth:`cut` (reset every connection), :meth:`new_epoch` (the history store
is lost), :meth:`trim` (old publications dropped), :meth:`skip` (a
publication logged but not delivered: a live gap), :meth:`resend` (one
delivered again: a duplicate), ``refuse`` (channel -> error code for its
subscribes). Every state change and every send happens under one lock, so
a replay is never interleaved with a live publication; :meth:`paused`
holds it, so that what the test does inside (cut, then publish what the
clients will miss) happens before any client can come back.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from helpers import DEADLINE, wait_until

#: The server's default and largest ``limit`` for ``history``.
HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 1000


def frame(msg: Dict[str, Any]) -> bytes:
    payload = json.dumps(msg, separators=(",", ":")).encode("utf-8")
    return struct.pack(">I", len(payload)) + payload


class ChannelLog:
    """One history channel: its epoch, latest offset and kept publications."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.offset = 0
        self.pubs: List[Dict[str, Any]] = []  # {"offset", "content", "from", "timestamp"}

    def oldest_kept(self) -> int:
        return self.pubs[0]["offset"] if self.pubs else self.offset + 1

    def after(self, since: int, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        out = [p for p in self.pubs if p["offset"] > since]
        return out if limit is None else out[:limit]


class FakeHistoryServer:
    """See the module doc. ``received`` holds ``(connection number, frame)``
    for every frame received, in order."""

    def __init__(self, history_channels: Sequence[str] = ("prices",)) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host = "127.0.0.1"
        self.port = int(self.sock.getsockname()[1])
        self.lock = threading.RLock()
        self.logs: Dict[str, ChannelLog] = {c: ChannelLog("e1") for c in history_channels}
        self.subscribers: Dict[str, Set[int]] = {}
        self.conns: Dict[int, socket.socket] = {}
        self.received: List[Tuple[int, Dict[str, Any]]] = []
        self.accepted = 0
        #: Channel -> error code answered to every subscribe to it.
        self.refuse: Dict[str, str] = {}
        self._epochs = 1
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    # ------------------------------------------------------ test controls

    def publish(self, channel: str, content: Any, deliver: bool = True) -> Dict[str, Any]:
        """A publication from the server side; with ``deliver=False`` it is
        logged (the offset moves on) but sent to nobody. Returns the
        ``channel_message`` frame."""
        with self.lock:
            return self._publish(channel, content, "fake", deliver)

    def skip(self, channel: str, content: Any = "skipped") -> Dict[str, Any]:
        """A publication logged but not delivered: subscribers see a gap."""
        return self.publish(channel, content, deliver=False)

    def resend(self, channel: str, offset: int) -> None:
        """Delivers the logged publication at ``offset`` again (a duplicate)."""
        with self.lock:
            log = self.logs[channel]
            (pub,) = [p for p in log.pubs if p["offset"] == offset]
            self._deliver(channel, self._channel_message(channel, log, pub))

    def new_epoch(self, channel: str) -> str:
        """The history store of ``channel`` is lost: a new epoch, offsets from 1."""
        with self.lock:
            self._epochs += 1
            self.logs[channel] = ChannelLog(f"e{self._epochs}")
            return self.logs[channel].epoch

    def trim(self, channel: str, keep: int) -> None:
        """Keeps only the last ``keep`` publications of ``channel``."""
        with self.lock:
            log = self.logs[channel]
            log.pubs = log.pubs[-keep:] if keep else []

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Handles no request while the block runs (the controls still work)."""
        with self.lock:
            yield

    def cut(self) -> None:
        """Resets every client connection (RST), as a network failure would."""
        with self.lock:
            conns = list(self.conns.values())
            self.conns.clear()
            self.subscribers.clear()
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.shutdown(socket.SHUT_RD)  # wakes its reading thread; sends nothing
            except OSError:
                pass

    def position(self, channel: str) -> Tuple[int, str]:
        with self.lock:
            log = self.logs[channel]
            return log.offset, log.epoch

    def subscribes(self) -> List[Dict[str, Any]]:
        """Every subscribe frame received, in order."""
        with self.lock:
            return [m for _, m in self.received if m.get("type") == "subscribe"]

    def wait_subscribed(self, channel: str, count: int = 1) -> None:
        """Waits until ``count`` connections are subscribed to ``channel``."""
        wait_until(
            lambda: len(self.subscribers.get(channel, ())) >= count,
            what=f"{count} subscriber(s) of {channel!r} on the fake",
        )

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.cut()
        self._thread.join(timeout=DEADLINE)

    # ---------------------------------------------------------- internals

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            with self.lock:
                self.conns[n] = conn
                self.accepted += 1
            threading.Thread(target=self._serve, args=(n, conn), daemon=True).start()

    def _serve(self, n: int, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while len(buf) >= 4:
                    (length,) = struct.unpack(">I", buf[:4])
                    if len(buf) < 4 + length:
                        break
                    msg = json.loads(buf[4 : 4 + length])
                    buf = buf[4 + length :]
                    with self.lock:
                        if n not in self.conns:
                            return  # cut
                        self.received.append((n, msg))
                        self._handle(n, msg)
        finally:
            with self.lock:
                self.conns.pop(n, None)
                for subs in self.subscribers.values():
                    subs.discard(n)
            conn.close()

    def _send(self, n: int, *msgs: Dict[str, Any]) -> None:
        conn = self.conns.get(n)
        if conn is None:
            return
        try:
            conn.sendall(b"".join(frame(m) for m in msgs))
        except OSError:
            pass

    def _handle(self, n: int, msg: Dict[str, Any]) -> None:
        kind = msg.get("type")
        rid = {"id": msg["id"]} if "id" in msg else {}
        channel = msg.get("channel")
        if kind in ("subscribe", "unsubscribe", "publish", "history"):
            if not isinstance(channel, str):
                self._send(n, {"type": "error", "code": "invalid_field", "message": "fake", **rid})
                return
            if not channel:
                self._send(
                    n, {"type": "error", "code": "invalid_channel", "message": "fake", **rid}
                )
                return
        if kind == "ping":
            self._send(n, {"type": "pong", "ping_timestamp": msg.get("timestamp"), **rid})
        elif kind == "auth":
            self._send(n, {"type": "auth_ok", **rid})
        elif kind == "subscribe":
            assert isinstance(channel, str)
            self._subscribe(n, channel, msg.get("recover"), rid)
        elif kind == "unsubscribe":
            assert isinstance(channel, str)
            self.subscribers.get(channel, set()).discard(n)
            self._send(
                n,
                {"type": "unsubscribed", "channel": channel, "subscriptions": self._held(n), **rid},
            )
        elif kind == "publish":
            assert isinstance(channel, str)
            log = self.logs.get(channel)
            recipients = len(self.subscribers.get(channel, ()))
            published: Dict[str, Any] = {
                "type": "published",
                "channel": channel,
                "recipients": recipients,
                "timestamp": "2024-01-01T12:00:00.000Z",
            }
            if log is not None:
                published.update(offset=log.offset + 1, epoch=log.epoch)
            self._send(n, {**published, **rid})
            self._publish(channel, msg.get("content"), str(n), True)
        elif kind == "history":
            assert isinstance(channel, str)
            log = self.logs.get(channel)
            if log is None:
                self._send(
                    n,
                    {
                        "type": "error",
                        "code": "no_history",
                        "message": "this channel keeps no history",
                        "request_type": "history",
                        **rid,
                    },
                )
                return
            since = msg.get("since", 0)
            limit = min(msg.get("limit", HISTORY_DEFAULT_LIMIT), HISTORY_MAX_LIMIT)
            self._send(
                n,
                {
                    "type": "history",
                    "channel": channel,
                    "offset": log.offset,
                    "epoch": log.epoch,
                    "publications": log.after(since, limit),
                    **rid,
                },
            )
        else:
            self._send(
                n,
                {
                    "type": "error",
                    "code": "unknown_type",
                    "message": "fake",
                    "request_type": kind,
                    **rid,
                },
            )

    def _held(self, n: int) -> int:
        return sum(1 for subs in self.subscribers.values() if n in subs)

    def _subscribe(self, n: int, channel: str, recover: Any, rid: Dict[str, Any]) -> None:
        code = self.refuse.get(channel)
        if code is not None:
            self._send(
                n,
                {
                    "type": "error",
                    "code": code,
                    "message": "fake",
                    "request_type": "subscribe",
                    **rid,
                },
            )
            return
        self.subscribers.setdefault(channel, set()).add(n)
        reply: Dict[str, Any] = {
            "type": "subscribed",
            "channel": channel,
            "subscriptions": self._held(n),
        }
        log = self.logs.get(channel)
        replay: List[Dict[str, Any]] = []
        if log is not None:
            reply.update(offset=log.offset, epoch=log.epoch)
        if isinstance(recover, dict):
            since, epoch = recover.get("offset"), recover.get("epoch")
            ok = (
                log is not None
                and epoch == log.epoch
                and isinstance(since, int)
                and log.oldest_kept() - 1 <= since <= log.offset
            )
            reply["recovered"] = ok
            if ok:
                assert log is not None and isinstance(since, int)
                replay = [self._channel_message(channel, log, p) for p in log.after(since)]
        self._send(n, {**reply, **rid}, *replay)

    def _channel_message(
        self, channel: str, log: ChannelLog, pub: Dict[str, Any]
    ) -> Dict[str, Any]:
        return {"type": "channel_message", "channel": channel, **pub, "epoch": log.epoch}

    def _publish(self, channel: str, content: Any, sender: str, deliver: bool) -> Dict[str, Any]:
        log = self.logs.get(channel)
        msg: Dict[str, Any] = {
            "type": "channel_message",
            "channel": channel,
            "content": content,
            "from": sender,
            "timestamp": "2024-01-01T12:00:00.000Z",
        }
        if log is not None:
            log.offset += 1
            pub = {
                "offset": log.offset,
                "content": content,
                "from": sender,
                "timestamp": msg["timestamp"],
            }
            log.pubs.append(pub)
            msg = self._channel_message(channel, log, pub)
        if deliver:
            self._deliver(channel, msg)
        return msg

    def _deliver(self, channel: str, msg: Dict[str, Any]) -> None:
        for n in sorted(self.subscribers.get(channel, ())):
            self._send(n, msg)
