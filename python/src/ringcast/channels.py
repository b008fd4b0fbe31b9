"""Channel subscriptions without sockets: a channel's stream position and
the rules that move it, shared by the three clients.

A *history channel* numbers its publications: every ``channel_message``
(and the ``subscribed`` answer) carries ``offset`` (1, 2, 3, ... per
channel) and ``epoch`` (a string that changes when the server loses the
channel's history). A :class:`ChannelState` remembers the last
``(offset, epoch)`` seen, so that after a reconnection the client can
subscribe again with ``"recover": {"offset", "epoch"}`` and the server
replays what was missed, or says it cannot (``"recovered": false``).

The client feeds it, in the order frames arrive on the connection:

1. :meth:`ChannelState.subscribe_request` when it subscribes on a
   connection (the first or a later one): the frame to send;
2. :meth:`ChannelState.handle_subscribed` with the ``subscribed`` answer;
3. :meth:`ChannelState.handle_message` with each ``channel_message``.

Each ``handle_*`` says what to tell the application: nothing, that the
channel was recovered (:data:`RECOVERED`), or that messages may have been
lost and why (:data:`LOST_RECONNECT`, :data:`LOST_GAP`, :data:`LOST_EPOCH`).
Nothing here reads a clock, a socket or a lock: a client calls it from the
one thread (or event loop) that reads its connection.
"""

from __future__ import annotations

from typing import Any, List, Mapping, NamedTuple, Optional, Tuple

from .errors import ProtocolError
from .protocol import Message, subscribe_message

#: What :meth:`ChannelState.handle_subscribed` says after a resubscription
#: that replays everything missed.
RECOVERED = "recovered"
#: Lost: the channel was subscribed again on a new connection without
#: recovery (the server answered ``recovered: false``, or the channel has no
#: history, so the client had no position to recover from).
LOST_RECONNECT = "reconnect"
#: Lost: a live ``channel_message`` skipped offsets (offset > last + 1).
LOST_GAP = "gap"
#: Lost: a live ``channel_message`` came with another epoch: the server lost
#: the channel's history, and its offsets started again.
LOST_EPOCH = "epoch"
#: Lost: the server refused the resubscription with an ``error`` (kept in
#: the subscription's ``error``); the subscription is closed.
LOST_REFUSED = "refused"


class Position(NamedTuple):
    """Where a subscriber is in a history channel: the offset of the last
    publication it has, and the channel's epoch."""

    offset: int
    epoch: str


class Published(NamedTuple):
    """The answer to ``publish``: how many subscribers it was queued to, the
    server's timestamp, and on a history channel the publication's
    ``offset`` and ``epoch`` (``None`` on other channels)."""

    channel: str
    recipients: int
    offset: Optional[int]
    epoch: Optional[str]
    timestamp: Optional[str]


class History(NamedTuple):
    """The answer to ``history``: the channel's latest ``offset`` and its
    ``epoch``, and the publications asked for, oldest first, each a dict
    with ``offset``, ``content``, ``from`` and ``timestamp``."""

    channel: str
    offset: int
    epoch: str
    publications: List[Message]


def _position_of(frame: Mapping[str, Any]) -> Optional[Position]:
    """The ``(offset, epoch)`` a frame carries, or None when it has none
    (a channel without history)."""
    offset = frame.get("offset")
    epoch = frame.get("epoch")
    if isinstance(offset, int) and not isinstance(offset, bool) and isinstance(epoch, str):
        return Position(offset, epoch)
    return None


def published_from_frame(frame: Mapping[str, Any]) -> Published:
    """Reads a ``published`` answer; raises :class:`ProtocolError` when its
    ``recipients`` is not a number."""
    recipients = frame.get("recipients")
    if not isinstance(recipients, int) or isinstance(recipients, bool):
        raise ProtocolError(f"published without a numeric recipients field: {frame}")
    pos = _position_of(frame)
    timestamp = frame.get("timestamp")
    return Published(
        str(frame.get("channel", "")),
        recipients,
        pos.offset if pos is not None else None,
        pos.epoch if pos is not None else None,
        timestamp if isinstance(timestamp, str) else None,
    )


def history_from_frame(frame: Mapping[str, Any]) -> History:
    """Reads a ``history`` answer; raises :class:`ProtocolError` when it
    lacks ``offset``, ``epoch`` or a ``publications`` list."""
    pos = _position_of(frame)
    publications = frame.get("publications")
    if pos is None or not isinstance(publications, list):
        raise ProtocolError(f"history answer without offset, epoch and publications: {frame}")
    return History(str(frame.get("channel", "")), pos.offset, pos.epoch, publications)


class Report:
    """In a subscription's queue of messages: an event (:data:`RECOVERED`
    or a loss reason) to tell the application when its reading reaches this
    place, so it learns of a loss just before the first message after it."""

    __slots__ = ("event",)

    def __init__(self, event: str) -> None:
        self.event = event

    def __repr__(self) -> str:
        return f"Report({self.event!r})"


class ChannelState:
    """One subscribed channel's position and the recovery rules (module doc).

    ``position`` is None until the server has given one (a channel without
    history never has one). ``recovered`` is the outcome of the last
    resubscription (None before the first); ``lost`` counts the times
    messages may have been lost; ``duplicates`` counts the messages dropped
    because their offset was not past the position.
    """

    __slots__ = (
        "channel",
        "position",
        "subscribed_once",
        "resubscribing",
        "asked_recover",
        "recovered",
        "lost",
        "duplicates",
    )

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.position: Optional[Position] = None
        #: Whether a ``subscribed`` answer has come on some connection: a
        #: later subscribe is a resubscription, reported recovered or lost.
        self.subscribed_once = False
        #: A resubscription was sent and its answer has not come yet.
        self.resubscribing = False
        #: That resubscription carried ``recover``.
        self.asked_recover = False
        self.recovered: Optional[bool] = None
        self.lost = 0
        self.duplicates = 0

    def subscribe_request(self) -> Message:
        """The ``subscribe`` frame for a new connection: plain the first
        time; afterwards with ``recover`` from the position when there is
        one (a channel without history is subscribed plainly, and will be
        reported lost)."""
        if not self.subscribed_once:
            return subscribe_message(self.channel)
        self.resubscribing = True
        pos = self.position
        self.asked_recover = pos is not None
        return subscribe_message(self.channel, pos)

    def handle_subscribed(self, frame: Mapping[str, Any]) -> Optional[str]:
        """Takes the ``subscribed`` answer. Returns None for a first
        subscription, else :data:`RECOVERED` or :data:`LOST_RECONNECT`.

        First subscription: the position becomes the channel's latest (its
        ``offset``, 0 when nothing was published yet). Recovered: the
        position stays where it was, and the replayed messages that follow
        move it. Not recovered: it jumps to the latest, or to None without
        history."""
        first = not self.subscribed_once
        self.subscribed_once = True
        latest = _position_of(frame)
        if first or not self.resubscribing:
            # A first subscription, or a repeated subscribe on the same
            # connection: nothing was missed, nothing is replayed.
            if first:
                self.position = latest
            return None
        self.resubscribing = False
        recovered = (
            self.asked_recover
            and frame.get("recovered") is True
            and (latest is None or self.position is None or latest.epoch == self.position.epoch)
        )
        self.recovered = recovered
        if recovered:
            return RECOVERED
        self.position = latest
        self.lost += 1
        return LOST_RECONNECT

    def handle_message(self, frame: Mapping[str, Any]) -> Tuple[bool, Optional[str]]:
        """Takes a ``channel_message``. Returns ``(deliver, lost)``:
        ``deliver`` is False for a duplicate (an offset at or before the
        position, same epoch), which is dropped; ``lost`` is
        :data:`LOST_GAP` or :data:`LOST_EPOCH` when this message shows that
        others were missed (report it before delivering this one), else
        None. A message without offset (no history) is always delivered."""
        got = _position_of(frame)
        if got is None:
            return True, None
        pos = self.position
        self.position = got
        if pos is None:
            return True, None
        if got.epoch != pos.epoch:
            self.lost += 1
            return True, LOST_EPOCH
        if got.offset <= pos.offset:
            self.position = pos
            self.duplicates += 1
            return False, None
        if got.offset != pos.offset + 1:
            self.lost += 1
            return True, LOST_GAP
        return True, None
