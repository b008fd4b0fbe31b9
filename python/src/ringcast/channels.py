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

A subscription may name a *pattern* (``room.*``: ``*`` is one token,
a last ``>`` one or more). The server sends a connection each publication
once, naming the concrete channel; :class:`Subscriptions` finds the
subscriptions it belongs to (the channel's own, and every matching
pattern's), and a pattern's :class:`ChannelState` keeps no position
(offsets are per channel: a pattern subscription recovers nothing).

A subscription read without a callback keeps its messages, and those
events, in a :class:`MessageQueue`: bounded in messages, it never drops an
event, and reports its own overflow as a loss (:data:`LOST_OVERFLOW`).
"""

from __future__ import annotations

import collections
from typing import (
    Any,
    Deque,
    Dict,
    Generic,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
)

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
#: Lost: the subscription's queue was full (the application read too
#: slowly), so its oldest message was dropped (:class:`MessageQueue`).
LOST_OVERFLOW = "overflow"


def is_pattern(name: str) -> bool:
    """Whether a subscription name is a pattern: it has a token ``*`` or
    ``>`` (the server checks the rest of the syntax)."""
    return any(t == "*" or t == ">" for t in name.split("."))


def matches(pattern: str, channel: str) -> bool:
    """Whether ``pattern`` matches the concrete ``channel``, as the server
    matches: ``*`` one token, a last ``>`` one or more."""
    chan = channel.split(".")
    tokens = pattern.split(".")
    for i, t in enumerate(tokens):
        if t == ">":
            return len(chan) > i
        if i >= len(chan) or (t != "*" and t != chan[i]):
            return False
    return len(chan) == len(tokens)


S = TypeVar("S")


class Subscriptions(Dict[str, S], Generic[S]):
    """A client's subscriptions by name, which also finds the ones a
    ``channel_message`` belongs to. A plain dict otherwise; the patterns
    among its names are kept apart so that a client without any pays one
    lookup per message."""

    def __init__(self) -> None:
        super().__init__()
        self._patterns: Set[str] = set()

    def __setitem__(self, name: str, sub: S) -> None:
        super().__setitem__(name, sub)
        if is_pattern(name):
            self._patterns.add(name)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._patterns.discard(name)

    def pop(self, name: str, *default: Any) -> Any:  # type: ignore[override]
        self._patterns.discard(name)
        return super().pop(name, *default)

    def for_message(self, channel: Any) -> List[S]:
        """The subscriptions a ``channel_message`` of ``channel`` goes to:
        the channel's own, then each pattern's that matches it (each gets
        the message once; the server sent it once)."""
        if not isinstance(channel, str):
            return []
        own = self.get(channel)
        out: List[S] = [] if own is None else [own]
        for p in self._patterns:
            if matches(p, channel):
                out.append(self[p])
        return out


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


class MessageQueue:
    """A subscription's queue, read by the application: messages and
    :class:`Report` events, in the stream's order.

    It holds at most ``max_messages`` messages; the reports do not count,
    and are never dropped. A message that comes when the queue is full
    evicts the oldest *message*, counted in :attr:`dropped`, and a
    ``Report(LOST_OVERFLOW)`` takes its place, so that the reader learns of
    the loss just before the first message after it. A run of evictions
    makes one report: none is added while the reports before the oldest
    message end with an overflow report. So the queue holds at most
    ``max_messages`` messages and, for each other event, one overflow
    report more.

    No lock: the client holds its own around every call.
    """

    __slots__ = ("max_messages", "messages", "dropped", "_items")

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max(1, max_messages)
        #: How many messages (not reports) are queued.
        self.messages = 0
        #: How many messages were dropped because the queue was full.
        self.dropped = 0
        self._items: Deque[Union[Message, Report]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def push_report(self, event: str) -> None:
        """Queues an event; it is never dropped."""
        self._items.append(Report(event))

    def push_message(self, frame: Message) -> bool:
        """Queues a message, evicting the oldest message when the queue is
        full. Returns True when that eviction started a new loss (an
        overflow report was queued in the evicted message's place), False
        otherwise."""
        new_loss = False
        if self.messages >= self.max_messages:
            items = self._items
            # The reports before the oldest message stay where they are.
            head: List[Report] = []
            while True:
                item = items.popleft()
                if not isinstance(item, Report):
                    break  # the oldest message: dropped
                head.append(item)
            self.messages -= 1
            self.dropped += 1
            if not head or head[-1].event != LOST_OVERFLOW:
                head.append(Report(LOST_OVERFLOW))
                new_loss = True
            items.extendleft(reversed(head))
        self._items.append(frame)
        self.messages += 1
        return new_loss

    def popleft(self) -> Union[Message, Report]:
        """The oldest item; raises IndexError when the queue is empty."""
        item = self._items.popleft()
        if not isinstance(item, Report):
            self.messages -= 1
        return item

    def __repr__(self) -> str:
        return (
            f"MessageQueue({list(self._items)!r}, max_messages={self.max_messages}, "
            f"dropped={self.dropped})"
        )


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
        "pattern",
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
        #: A pattern keeps no position: its messages come from many
        #: channels, each with offsets of its own.
        self.pattern = is_pattern(channel)
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

    def handle_overflow(self) -> str:
        """Counts a loss from a full queue (:meth:`MessageQueue.push_message`
        returned True); returns :data:`LOST_OVERFLOW`."""
        self.lost += 1
        return LOST_OVERFLOW

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
        None. A message without offset (no history), or to a pattern
        subscription, is always delivered."""
        got = None if self.pattern else _position_of(frame)
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
