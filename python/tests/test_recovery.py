"""Channel history and recovery in the three clients: PROTOCOL-LEVEL tests
against a fake server (fake_history.FakeHistoryServer), not the real one.

The real server has no history yet. The fake implements the wire rules for
history channels (``offset``/``epoch`` on ``subscribed`` and
``channel_message``, ``subscribe`` with ``recover``, ``history``,
``no_history``), so these tests pin the clients' side: that after a cut
they subscribe again with ``recover`` set to the last offset and epoch
they saw, report each channel recovered or lost, deliver the replay once
and in order, and drop duplicates. Real-server recovery tests belong beside
the server's history support.

Each scenario runs against ``Client``, ``TCPClient`` and ``aio.Client``
(through the small adapters below; the aio client runs on an event loop in
a thread, and its messages are read with ``async for``). The bottom of the
file tests :class:`ringcast.channels.ChannelState`, the rules themselves,
without any client.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, Dict, Iterator, List, Optional, Tuple

import pytest
from fake_history import FakeHistoryServer
from helpers import DEADLINE, Collector, wait_until

from ringcast import (
    Client,
    History,
    Position,
    ReconnectPolicy,
    ServerError,
    TCPClient,
    aio,
)
from ringcast.channels import (
    LOST_EPOCH,
    LOST_GAP,
    LOST_OVERFLOW,
    LOST_RECONNECT,
    RECOVERED,
    ChannelState,
    MessageQueue,
    Report,
    history_from_frame,
)

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)


class Timeline:
    """What the application saw, in order, from every subscription of one
    client: a message as its content (``str``), ``"recovered"``,
    ``"lost:<reason>"``; each as ``(channel, what)``."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, str]] = []
        self._cond = threading.Condition()

    def add(self, channel: str, what: str) -> None:
        with self._cond:
            self.items.append((channel, what))
            self._cond.notify_all()

    def of(self, channel: str) -> List[str]:
        with self._cond:
            return [w for c, w in self.items if c == channel]

    def wait(self, channel: str, last: str) -> List[str]:
        """Waits until ``last`` is among ``channel``'s items; returns them."""
        with self._cond:
            if not self._cond.wait_for(lambda: last in self.of(channel), DEADLINE):
                raise AssertionError(f"timed out waiting for {last!r}; saw {self.items}")
            return self.of(channel)


class Adapter:
    """One client kind, driven the same way by every scenario."""

    kind = ""

    def __init__(self, fake: FakeHistoryServer) -> None:
        self.fake = fake
        self.timeline = Timeline()

    def callbacks(self, channel: str) -> Dict[str, Any]:
        tl = self.timeline
        return {
            "on_recovered": lambda sub: tl.add(channel, "recovered"),
            "on_lost": lambda sub, reason: tl.add(channel, f"lost:{reason}"),
        }

    def on_message(self, msg: Dict[str, Any]) -> None:
        self.timeline.add(msg["channel"], str(msg["content"]))

    def subscribe(self, channel: str) -> Any:
        raise NotImplementedError

    def history(self, channel: str, **kw: Any) -> History:
        raise NotImplementedError

    def subscriptions(self) -> Dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ClientAdapter(Adapter):
    kind = "Client"

    def __init__(self, fake: FakeHistoryServer) -> None:
        super().__init__(fake)
        self.client = Client(fake.host, fake.port, reconnect=FAST)

    def subscribe(self, channel: str) -> Any:
        return self.client.subscribe(channel, self.on_message, **self.callbacks(channel))

    def history(self, channel: str, **kw: Any) -> History:
        return self.client.history(channel, **kw)

    def subscriptions(self) -> Dict[str, Any]:
        return dict(self.client.subscriptions)

    def close(self) -> None:
        self.client.close()


class TCPClientAdapter(Adapter):
    kind = "TCPClient"

    def __init__(self, fake: FakeHistoryServer) -> None:
        super().__init__(fake)
        self.frames = Collector()
        self.client = TCPClient(fake.host, fake.port, reconnect_policy=FAST)
        self.client.set_message_callback(self.frames)
        assert self.client.connect()

    def subscribe(self, channel: str) -> Any:
        sub = self.client.subscribe(channel, self.on_message, **self.callbacks(channel))
        assert sub.wait_subscribed(DEADLINE)
        return sub

    def history(self, channel: str, **kw: Any) -> History:
        # Fire-and-forget: the answer reaches the message callback.
        before = len(self.frames.items)
        assert self.client.history(channel, kw.get("since"), kw.get("limit"))
        reply = self.frames.wait_for(
            lambda items: next(
                (m for m in items[before:] if m.get("type") in ("history", "error")), None
            )
        )
        if reply["type"] == "error":
            raise ServerError.from_frame(reply)
        return history_from_frame(reply)

    def subscriptions(self) -> Dict[str, Any]:
        return dict(self.client.subscriptions)

    def close(self) -> None:
        self.client.disconnect()


class AioAdapter(Adapter):
    kind = "aio"

    def __init__(self, fake: FakeHistoryServer) -> None:
        super().__init__(fake)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.consumers: List["asyncio.Future[None]"] = []
        self.client: aio.Client = self.run(aio.connect(fake.host, fake.port, reconnect=FAST))

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE)

    def subscribe(self, channel: str) -> Any:
        async def go() -> aio.Subscription:
            sub = await self.client.subscribe(channel, **self.callbacks(channel))

            async def consume() -> None:
                try:
                    async for msg in sub:
                        self.on_message(msg)
                except Exception as e:  # a refused resubscription ends it so
                    self.timeline.add(channel, f"end:{type(e).__name__}")

            self.consumers.append(asyncio.ensure_future(consume()))
            return sub

        return self.run(go())

    def history(self, channel: str, **kw: Any) -> History:
        return self.run(self.client.history(channel, **kw))  # type: ignore[no-any-return]

    def subscriptions(self) -> Dict[str, Any]:
        async def get() -> Dict[str, Any]:
            return dict(self.client.subscriptions)

        return self.run(get())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


ADAPTERS: Dict[str, Callable[[FakeHistoryServer], Adapter]] = {
    "Client": ClientAdapter,
    "TCPClient": TCPClientAdapter,
    "aio": AioAdapter,
}


@pytest.fixture
def fake() -> Iterator[FakeHistoryServer]:
    """The fake: ``prices`` keeps history, every other channel does not."""
    srv = FakeHistoryServer(history_channels=("prices",))
    yield srv
    srv.close()


@pytest.fixture(params=list(ADAPTERS))
def client(request: pytest.FixtureRequest, fake: FakeHistoryServer) -> Iterator[Adapter]:
    adapter = ADAPTERS[request.param](fake)
    yield adapter
    adapter.close()


def last_subscribe(fake: FakeHistoryServer, channel: str) -> Dict[str, Any]:
    frames = [m for m in fake.subscribes() if m["channel"] == channel]
    return {k: v for k, v in frames[-1].items() if k != "id"}


# ---------------------------------------------------------------- scenarios


def test_recovers_what_was_published_during_a_cut(fake: FakeHistoryServer, client: Adapter) -> None:
    fake.publish("prices", 1)
    fake.publish("prices", 2)
    sub = client.subscribe("prices")
    assert sub.position == Position(2, "e1")  # from subscribed: the latest
    assert last_subscribe(fake, "prices") == {"type": "subscribe", "channel": "prices"}
    fake.publish("prices", 3)
    client.timeline.wait("prices", "3")
    assert sub.position == (3, "e1")
    with fake.paused():
        fake.cut()
        fake.publish("prices", 4)  # missed: only in the history
        fake.publish("prices", 5)
    client.timeline.wait("prices", "5")
    assert last_subscribe(fake, "prices") == {
        "type": "subscribe",
        "channel": "prices",
        "recover": {"offset": 3, "epoch": "e1"},
    }
    fake.publish("prices", 6)
    # Recovered is told before the replay; each message once, in order.
    assert client.timeline.wait("prices", "6") == ["3", "recovered", "4", "5", "6"]
    assert sub.recovered is True and sub.lost_count == 0
    assert sub.position == (6, "e1")
    assert fake.accepted == 2


def test_lost_when_the_history_no_longer_reaches_back(
    fake: FakeHistoryServer, client: Adapter
) -> None:
    sub = client.subscribe("prices")
    assert sub.position == (0, "e1")  # nothing published yet
    fake.publish("prices", 1)
    fake.publish("prices", 2)
    client.timeline.wait("prices", "2")
    with fake.paused():
        fake.cut()
        for i in (3, 4, 5):
            fake.publish("prices", i)
        fake.trim("prices", keep=1)  # 3 and 4 are gone: not recoverable from 2
    client.timeline.wait("prices", f"lost:{LOST_RECONNECT}")
    assert last_subscribe(fake, "prices")["recover"] == {"offset": 2, "epoch": "e1"}
    assert sub.recovered is False and sub.lost_count == 1
    assert sub.position == (5, "e1")  # moved to the latest: nothing replayed
    fake.publish("prices", 6)
    # 6 follows 5: no second loss; 3, 4 and 5 were never delivered.
    assert client.timeline.wait("prices", "6") == ["1", "2", "lost:reconnect", "6"]


def test_lost_when_the_epoch_changed_during_a_cut(fake: FakeHistoryServer, client: Adapter) -> None:
    sub = client.subscribe("prices")
    fake.publish("prices", "a")
    client.timeline.wait("prices", "a")
    with fake.paused():
        fake.cut()
        assert fake.new_epoch("prices") == "e2"
        fake.publish("prices", "b")  # offset 1 of epoch e2
    client.timeline.wait("prices", "lost:reconnect")
    assert last_subscribe(fake, "prices")["recover"] == {"offset": 1, "epoch": "e1"}
    assert sub.position == (1, "e2")
    fake.publish("prices", "c")
    assert client.timeline.wait("prices", "c") == ["a", "lost:reconnect", "c"]
    assert sub.lost_count == 1


def test_an_epoch_change_in_live_messages_is_a_loss(
    fake: FakeHistoryServer, client: Adapter
) -> None:
    sub = client.subscribe("prices")
    fake.publish("prices", "a")
    fake.publish("prices", "b")
    fake.new_epoch("prices")
    fake.publish("prices", "c")  # offset 1 again, epoch e2
    fake.publish("prices", "d")
    timeline = client.timeline.wait("prices", "d")
    assert timeline == ["a", "b", f"lost:{LOST_EPOCH}", "c", "d"]
    assert sub.position == (2, "e2") and sub.lost_count == 1


def test_a_gap_in_live_offsets_is_a_loss(fake: FakeHistoryServer, client: Adapter) -> None:
    sub = client.subscribe("prices")
    fake.publish("prices", 1)
    fake.skip("prices")  # offset 2 never reaches the client
    fake.publish("prices", 3)
    assert client.timeline.wait("prices", "3") == ["1", f"lost:{LOST_GAP}", "3"]
    assert sub.position == (3, "e1") and sub.lost_count == 1
    assert sub.recovered is None  # no resubscription yet


def test_duplicate_offsets_are_dropped(fake: FakeHistoryServer, client: Adapter) -> None:
    sub = client.subscribe("prices")
    fake.publish("prices", 1)
    fake.publish("prices", 2)
    fake.resend("prices", 1)
    fake.resend("prices", 2)
    fake.publish("prices", 3)
    assert client.timeline.wait("prices", "3") == ["1", "2", "3"]
    assert sub.state.duplicates == 2 and sub.lost_count == 0


def test_a_channel_without_history_is_resubscribed_plainly_and_reported_lost(
    fake: FakeHistoryServer, client: Adapter
) -> None:
    chat = client.subscribe("chat")
    prices = client.subscribe("prices")
    assert chat.position is None
    fake.publish("chat", "hi")
    client.timeline.wait("chat", "hi")
    with fake.paused():
        fake.cut()
        fake.publish("chat", "missed")
        fake.publish("prices", "p1")
    client.timeline.wait("chat", "lost:reconnect")
    client.timeline.wait("prices", "p1")
    assert last_subscribe(fake, "chat") == {"type": "subscribe", "channel": "chat"}
    assert last_subscribe(fake, "prices")["recover"] == {"offset": 0, "epoch": "e1"}
    fake.publish("chat", "again")
    assert client.timeline.wait("chat", "again") == ["hi", "lost:reconnect", "again"]
    assert client.timeline.of("prices") == ["recovered", "p1"]
    assert chat.recovered is False and prices.recovered is True


def test_a_long_replay_arrives_once_and_in_order(fake: FakeHistoryServer, client: Adapter) -> None:
    client.subscribe("prices")
    fake.publish("prices", 0)
    client.timeline.wait("prices", "0")
    with fake.paused():
        fake.cut()
        for i in range(1, 301):
            fake.publish("prices", i)
    client.timeline.wait("prices", "300")
    fake.publish("prices", 301)
    timeline = client.timeline.wait("prices", "301")
    assert timeline == ["0", "recovered"] + [str(i) for i in range(1, 302)]


def test_two_cuts_in_a_row_recover_from_the_latest_position(
    fake: FakeHistoryServer, client: Adapter
) -> None:
    client.subscribe("prices")
    for round_ in (1, 2):
        with fake.paused():
            fake.cut()
            fake.publish("prices", f"r{round_}")
        client.timeline.wait("prices", f"r{round_}")
    recovers = [m.get("recover") for m in fake.subscribes()]
    assert recovers == [None, {"offset": 0, "epoch": "e1"}, {"offset": 1, "epoch": "e1"}]
    assert client.timeline.of("prices") == ["recovered", "r1", "recovered", "r2"]


def test_a_refused_resubscription_closes_the_subscription(
    fake: FakeHistoryServer, client: Adapter
) -> None:
    sub = client.subscribe("prices")
    fake.refuse["prices"] = "too_many_subscriptions"
    fake.cut()
    client.timeline.wait("prices", "lost:refused")
    assert sub.closed
    assert isinstance(sub.error, ServerError) and sub.error.code == "too_many_subscriptions"
    assert "prices" not in client.subscriptions()


def test_history_requests(fake: FakeHistoryServer, client: Adapter) -> None:
    for i in range(1, 6):
        fake.publish("prices", f"p{i}")
    h = client.history("prices", since=2, limit=2)
    assert isinstance(h, History)
    assert (h.channel, h.offset, h.epoch) == ("prices", 5, "e1")
    assert [(p["offset"], p["content"]) for p in h.publications] == [(3, "p3"), (4, "p4")]
    assert [p["offset"] for p in client.history("prices").publications] == [1, 2, 3, 4, 5]
    with pytest.raises(ServerError) as info:
        client.history("chat")
    assert info.value.code == "no_history"
    assert client.history("prices", since=5).publications == []  # the connection stays
    sent = [m for _, m in fake.received if m.get("type") == "history"]
    assert {k: v for k, v in sent[0].items() if k != "id"} == {
        "type": "history",
        "channel": "prices",
        "since": 2,
        "limit": 2,
    }
    assert "since" not in sent[1] and "limit" not in sent[1]


def test_published_carries_offset_and_epoch() -> None:
    srv = FakeHistoryServer(history_channels=("prices",))
    try:
        with Client(srv.host, srv.port) as c:
            first = c.publish("prices", "x")
            assert (first.offset, first.epoch, first.recipients) == (1, "e1", 0)
            assert c.publish("prices", "y").offset == 2
            plain = c.publish("chat", "z")
            assert plain.offset is None and plain.epoch is None
    finally:
        srv.close()


# ------------------------------------------- ChannelState, without a client


def subscribed(**kw: Any) -> Dict[str, Any]:
    return {"type": "subscribed", "channel": "c", "subscriptions": 1, **kw}


def message(offset: Optional[int] = None, epoch: Optional[str] = None) -> Dict[str, Any]:
    msg: Dict[str, Any] = {"type": "channel_message", "channel": "c", "content": 0}
    if offset is not None:
        msg.update(offset=offset, epoch=epoch)
    return msg


def test_channel_state_first_subscription_and_live_rules() -> None:
    st = ChannelState("c")
    assert st.subscribe_request() == {"type": "subscribe", "channel": "c"}
    assert st.handle_subscribed(subscribed(offset=7, epoch="e")) is None
    assert st.position == (7, "e") and not st.resubscribing
    assert st.handle_message(message(8, "e")) == (True, None)
    assert st.handle_message(message(8, "e")) == (False, None)  # duplicate
    assert st.handle_message(message(3, "e")) == (False, None)  # older: duplicate too
    assert st.position == (8, "e") and st.duplicates == 2
    assert st.handle_message(message(10, "e")) == (True, LOST_GAP)
    assert st.handle_message(message(1, "f")) == (True, LOST_EPOCH)
    assert st.position == (1, "f") and st.lost == 2
    assert st.handle_message(message()) == (True, None)  # no offset: delivered as is


def test_channel_state_resubscription_outcomes() -> None:
    st = ChannelState("c")
    st.subscribe_request()
    st.handle_subscribed(subscribed(offset=4, epoch="e"))
    # Recovered: the position stays, the replay moves it.
    assert st.subscribe_request()["recover"] == {"offset": 4, "epoch": "e"}
    assert st.handle_subscribed(subscribed(offset=9, epoch="e", recovered=True)) == RECOVERED
    assert st.position == (4, "e") and st.recovered is True
    assert st.handle_message(message(5, "e")) == (True, None)
    # Not recovered: lost, and the position jumps to the latest.
    st.subscribe_request()
    assert st.handle_subscribed(subscribed(offset=20, epoch="e", recovered=False)) == LOST_RECONNECT
    assert st.position == (20, "e") and st.recovered is False
    # recovered: true with another epoch is not believed.
    st.subscribe_request()
    assert st.handle_subscribed(subscribed(offset=2, epoch="x", recovered=True)) == LOST_RECONNECT
    assert st.position == (2, "x")
    # A server that ignores recover (no "recovered" field): lost.
    st.subscribe_request()
    assert st.handle_subscribed(subscribed()) == LOST_RECONNECT
    assert st.position is None
    # Without a position the resubscription is plain, and reported lost.
    assert st.subscribe_request() == {"type": "subscribe", "channel": "c"}
    assert st.handle_subscribed(subscribed(recovered=True)) == LOST_RECONNECT
    assert st.lost == 4


def test_aio_on_lost_coroutine_is_awaited_before_the_next_message(
    fake: FakeHistoryServer,
) -> None:
    """With ``async for``, an ``on_lost`` coroutine runs in the stream's
    place: here it catches up from the history before the loop reads on."""

    async def main() -> List[Any]:
        seen: List[Any] = []
        async with aio.Client(fake.host, fake.port, reconnect=FAST) as c:

            async def on_lost(sub: aio.Subscription, reason: str) -> None:
                seen.append(f"lost:{reason}")
                await asyncio.sleep(0.01)  # the iteration waits for it
                history = await c.history(sub.channel, since=1)
                seen.extend(f"history:{p['content']}" for p in history.publications)

            sub = await c.subscribe("prices", on_lost=on_lost)
            fake.publish("prices", "a")
            fake.skip("prices", "b")  # the gap
            fake.publish("prices", "c")
            async for msg in sub:
                seen.append(msg["content"])
                if msg["content"] == "c":
                    break
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    assert seen == ["a", "lost:gap", "history:b", "history:c", "c"]


def test_client_queue_reports_a_loss_in_its_place(fake: FakeHistoryServer) -> None:
    """``Client`` without a callback: ``next_message`` calls ``on_lost`` on
    its caller's thread, between the messages, where requests are allowed."""
    seen: List[Any] = []
    with Client(fake.host, fake.port) as c:

        def on_lost(sub: Any, reason: str) -> None:
            seen.append((f"lost:{reason}", threading.current_thread()))
            history = c.history(sub.channel, since=1)  # a request: fine on this thread
            seen.extend(f"history:{p['content']}" for p in history.publications)

        sub = c.subscribe("prices", on_lost=on_lost)
        fake.publish("prices", "a")
        fake.skip("prices", "b")
        fake.publish("prices", "c")
        wait_until(lambda: sub.lost_count == 1, what="the gap")
        assert seen == []  # not yet: the reading has not reached it
        assert sub.next_message(timeout=DEADLINE)["content"] == "a"
        assert seen == []
        assert sub.next_message(timeout=DEADLINE)["content"] == "c"
    assert seen == [("lost:gap", threading.current_thread()), "history:b", "history:c"]


# ------------------------------------------- a full queue keeps its notices


def drain(q: MessageQueue) -> List[Any]:
    """The queue's items, oldest first: a message as its content, a report
    as ``"lost:<reason>"`` or ``"recovered"``."""
    items: List[Any] = []
    while len(q):
        item = q.popleft()
        if isinstance(item, Report):
            items.append(item.event if item.event == RECOVERED else f"lost:{item.event}")
        else:
            items.append(item["content"])
    return items


def content(c: Any) -> Dict[str, Any]:
    return {"type": "channel_message", "channel": "c", "content": c}


def test_message_queue_evicts_messages_never_reports() -> None:
    q = MessageQueue(2)
    q.push_report(RECOVERED)
    assert q.push_message(content(1)) is False
    q.push_report(LOST_GAP)
    assert q.push_message(content(2)) is False
    assert q.messages == 2 and len(q) == 4
    # Full: the oldest message goes, an overflow report takes its place.
    assert q.push_message(content(3)) is True
    assert q.dropped == 1 and q.messages == 2
    assert drain(q) == ["recovered", "lost:overflow", "lost:gap", 2, 3]
    assert q.messages == 0


def test_message_queue_one_report_per_run_of_drops() -> None:
    q = MessageQueue(2)
    for i in range(1, 7):  # 1..4 dropped, in one run: one report
        assert q.push_message(content(i)) is (i == 3)
    assert q.dropped == 4
    assert drain(q) == ["lost:overflow", 5, 6]
    # A report between two drops: each run is reported in its own place.
    q.push_message(content(1))
    q.push_report(LOST_GAP)
    q.push_message(content(2))
    assert q.push_message(content(3)) is True  # 1 dropped
    assert q.push_message(content(4)) is True  # 2 dropped, after the gap
    assert q.push_message(content(5)) is False  # 3 dropped, same run as 2
    assert drain(q) == ["lost:overflow", "lost:gap", "lost:overflow", 4, 5]
    # Reports alone are never dropped, and never count as messages.
    q = MessageQueue(1)
    for _ in range(5):
        q.push_report(LOST_RECONNECT)
    q.push_message(content(1))
    assert q.push_message(content(2)) is True
    assert drain(q) == ["lost:reconnect"] * 5 + ["lost:overflow", 2]


def test_client_full_queue_keeps_the_loss_notice(fake: FakeHistoryServer) -> None:
    """``Client`` reading a queue of 3 messages: the ``gap`` notice queued
    before ``c`` survives the overflow that drops ``a`` (it used to be the
    oldest item evicted), and the overflow is reported too, in its place."""
    seen: List[Any] = []
    with Client(fake.host, fake.port, max_queued_messages=3) as c:
        sub = c.subscribe("prices", on_lost=lambda sub, reason: seen.append(f"lost:{reason}"))
        fake.publish("prices", "a")
        fake.skip("prices", "b")  # the gap, queued as a notice before c
        for x in "cde":
            fake.publish("prices", x)
        wait_until(lambda: sub.dropped_messages >= 1, what="the queue to overflow")
        assert seen == []  # not yet: the reading has not reached them
        for _ in range(3):
            seen.append(sub.next_message(timeout=DEADLINE)["content"])
        assert seen == [f"lost:{LOST_OVERFLOW}", "lost:gap", "c", "d", "e"]
        assert sub.lost_count == 2


def test_aio_full_queue_keeps_the_loss_notice(fake: FakeHistoryServer) -> None:
    """The same with ``async for``: the notices reach ``on_lost`` (a
    coroutine, awaited in the stream's place), none is evicted."""

    async def main() -> Tuple[List[Any], int]:
        seen: List[Any] = []

        async def on_lost(sub: aio.Subscription, reason: str) -> None:
            seen.append(f"lost:{reason}")

        async with aio.Client(fake.host, fake.port, max_queued_messages=3) as c:
            sub = await c.subscribe("prices", on_lost=on_lost)
            fake.publish("prices", "a")
            fake.skip("prices", "b")
            for x in "cde":
                fake.publish("prices", x)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while sub.dropped_messages < 1:
                assert loop.time() < deadline, "the queue did not overflow"
                await asyncio.sleep(0.005)
            assert seen == []
            async for msg in sub:
                seen.append(msg["content"])
                if msg["content"] == "e":
                    break
            return seen, sub.lost_count

    seen, lost_count = asyncio.run(asyncio.wait_for(main(), 30))
    assert seen == [f"lost:{LOST_OVERFLOW}", "lost:gap", "c", "d", "e"]
    assert lost_count == 2
