"""Channels in the three clients against the real server: subscribe, publish,
unsubscribe, delivery to callbacks, queues and ``async for``, the server's
refusals, bad arguments, and the automatic resubscription after the
connection is cut (through :class:`helpers.CutProxy`).

These servers keep no channel history (``history_size`` 0), so a channel
resubscribed after a cut is reported lost (reason ``"reconnect"``) and
``history`` is answered ``no_history``. Recovery is tested against the real
server with history in test_history_server.py, and its client-side rules
against a fake server in test_recovery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from helpers import DEADLINE, Collector, CutProxy, RingcastServer, free_port, wait_until

from ringcast import (
    Client,
    ConnectionClosed,
    Published,
    ReconnectPolicy,
    ServerError,
    TCPClient,
    Timeout,
    aio,
)

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)

#: Channel arguments the clients refuse before sending anything.
BAD_CHANNELS: List[Tuple[Any, type]] = [
    ("", ValueError),
    (None, TypeError),
    (5, TypeError),
    (b"news", TypeError),
    (["news"], TypeError),
]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture
def proxy(server: RingcastServer) -> Iterator[CutProxy]:
    """A proxy to the real server whose connections the test can cut."""
    p = CutProxy(server.port)
    yield p
    p.close()


class Events:
    """``on_recovered`` / ``on_lost`` for a subscription, recorded in order."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, str]] = []
        self.threads: List[threading.Thread] = []
        self._cond = threading.Condition()

    def recovered(self, sub: Any) -> None:
        self._add(("recovered", sub.channel))

    def lost(self, sub: Any, reason: str) -> None:
        self._add((f"lost:{reason}", sub.channel))

    def _add(self, item: Tuple[str, str]) -> None:
        with self._cond:
            self.items.append(item)
            self.threads.append(threading.current_thread())
            self._cond.notify_all()

    def wait(self, count: int = 1) -> List[Tuple[str, str]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, DEADLINE):
                raise AssertionError(f"timed out; events so far: {self.items}")
            return list(self.items)


def contents(frames: List[Dict[str, Any]]) -> List[Any]:
    return [f["content"] for f in frames if f.get("type") == "channel_message"]


# ------------------------------------------------------------ ringcast.Client


def test_client_subscribe_publish_to_a_callback_and_a_queue(server: RingcastServer) -> None:
    got = Collector()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(Client(server.host, server.port))
        b = stack.enter_context(Client(server.host, server.port))
        pub = stack.enter_context(Client(server.host, server.port))
        sub_a = a.subscribe("news", got)
        sub_b = b.subscribe("news")  # no callback: its queue
        assert sub_a.channel == "news" and not sub_a.closed
        assert sub_a.position is None  # the server keeps no history for it
        assert a.subscriptions == {"news": sub_a}
        result = pub.publish("news", {"headline": "hi"})
        assert isinstance(result, Published)
        assert result.channel == "news" and result.offset is None and result.epoch is None
        assert isinstance(result.recipients, int) and isinstance(result.timestamp, str)
        (msg,) = got.wait_type("channel_message")
        assert msg["channel"] == "news" and msg["content"] == {"headline": "hi"}
        assert pub.local_address is not None
        assert msg["from"] == "{}:{}".format(*pub.local_address)
        assert "id" not in msg
        assert got.threads[0] is a._receiver  # the callback runs on the receiving thread
        assert sub_b.next_message(timeout=DEADLINE) == msg
        with pytest.raises(Timeout):
            sub_b.next_message(timeout=0.05)
        # Channel messages do not reach the clients' general queues, and
        # the publisher, not subscribed, gets nothing.
        for c in (a, b, pub):
            with pytest.raises(Timeout):
                c.next_message(timeout=0.02)


def test_client_publisher_gets_its_own_message_after_published(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        sub = c.subscribe("echo-chamber")
        assert c.publish("echo-chamber", [1, 2]).recipients == 1
        assert sub.next_message(timeout=DEADLINE)["content"] == [1, 2]


def test_client_unsubscribe_stops_delivery(server: RingcastServer) -> None:
    with Client(server.host, server.port) as a, Client(server.host, server.port) as pub:
        sub = a.subscribe("news")
        other = a.subscribe("sport")
        assert set(a.subscriptions) == {"news", "sport"}
        sub.unsubscribe()
        assert sub.closed and set(a.subscriptions) == {"sport"}
        sub.unsubscribe()  # twice is fine
        assert pub.publish("news", "nobody").recipients == 0
        pub.publish("sport", "goal")
        assert other.next_message(timeout=DEADLINE)["content"] == "goal"
        with pytest.raises(ConnectionClosed):
            sub.next_message(timeout=0.05)  # closed, nothing queued
        a.unsubscribe("sport")  # by name
        assert other.closed and a.subscriptions == {}
        a.unsubscribe("never-subscribed")  # a plain request: the server answers it
        # A channel can be subscribed again once left.
        again = a.subscribe("news")
        pub.publish("news", "back")
        assert again.next_message(timeout=DEADLINE)["content"] == "back"
        stats = a.get_stats()
        assert stats["messages_by_type"]["unsubscribe"] == 3


def test_client_refuses_bad_channels_before_sending(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        for bad, error in BAD_CHANNELS:
            with pytest.raises(error, match="channel"):
                c.subscribe(bad)
            with pytest.raises(error, match="channel"):
                c.publish(bad, "x")
            with pytest.raises(error, match="channel"):
                c.unsubscribe(bad)
            with pytest.raises(error, match="channel"):
                c.history(bad)
        with pytest.raises(TypeError, match="since"):
            c.history("news", since="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit"):
            c.history("news", limit=0)
        by_type = c.get_stats()["messages_by_type"]
        assert by_type["subscribe"] == by_type["publish"] == by_type["unsubscribe"] == 0
        assert c.subscriptions == {}
        c.subscribe("news")
        with pytest.raises(ValueError, match="already subscribed"):
            c.subscribe("news")


def test_client_server_refusals_raise_server_error(ringcast_bin: Path, tmp_path: Path) -> None:
    srv = RingcastServer(
        ringcast_bin, free_port(), tmp_path / "server.log", ["--max-subscriptions", "2"]
    )
    srv.start()
    try:
        with Client(srv.host, srv.port) as c:
            with pytest.raises(ServerError) as info:
                c.subscribe("bad\x01name")
            assert info.value.code == "invalid_channel"
            assert info.value.request_type == "subscribe"
            with pytest.raises(ServerError) as info:
                c.publish("x" * 257, "too long a name")
            assert info.value.code == "invalid_channel"
            c.subscribe("one")
            c.subscribe("two")
            with pytest.raises(ServerError) as info:
                c.subscribe("three")
            assert info.value.code == "too_many_subscriptions"
            # A refused subscription is not kept; the connection stays.
            assert set(c.subscriptions) == {"one", "two"}
            with pytest.raises(ServerError) as info:
                c.history("one")
            # This server keeps no history.
            assert info.value.code == "no_history"
            assert c.echo("still here") == "still here"
    finally:
        srv.stop()


def test_client_resubscribes_after_a_cut_and_reports_the_loss(
    server: RingcastServer, proxy: CutProxy
) -> None:
    got = Collector()
    events = Events()
    with (
        Client(proxy.host, proxy.port, reconnect=FAST) as a,
        Client(server.host, server.port) as pub,
    ):
        sub = a.subscribe("news", got, on_recovered=events.recovered, on_lost=events.lost)
        queued = a.subscribe("quiet", on_lost=events.lost)
        pub.publish("news", "before")
        got.wait_for(lambda items: contents(items) == ["before"])
        proxy.cut()
        # No history, so no position: resubscribed plainly, reported lost;
        # with a callback, on the receiving thread as soon as it is known.
        assert events.wait(1) == [("lost:reconnect", "news")]
        assert events.threads[0] is a._receiver
        assert a.reconnect_count == 1 and proxy.accepted == 2
        assert sub.recovered is False and sub.lost_count == 1 and not sub.closed
        wait_until(lambda: queued.lost_count == 1, what="the second resubscription")
        pub.publish("news", "after")
        pub.publish("quiet", "after")
        got.wait_for(lambda items: contents(items) == ["before", "after"])
        # Without a callback, next_message() reports it, on its caller's
        # thread, before it returns the first message after the loss.
        assert len(events.items) == 1
        assert queued.next_message(timeout=DEADLINE)["content"] == "after"
        assert events.items[1] == ("lost:reconnect", "quiet")
        assert events.threads[1] is threading.current_thread()
        assert set(a.subscriptions) == {"news", "quiet"}


def test_client_without_reconnect_ends_its_subscriptions(
    server: RingcastServer, proxy: CutProxy
) -> None:
    with Client(proxy.host, proxy.port) as a:
        sub = a.subscribe("news")
        proxy.cut()
        wait_until(lambda: sub.closed, what="the subscription to close with the connection")
        with pytest.raises(ConnectionClosed):
            sub.next_message(timeout=DEADLINE)


def test_client_queue_overflow_is_reported_lost(server: RingcastServer) -> None:
    """A queue of 2 messages and 5 publications: the 3 oldest are dropped,
    and ``next_message`` reports one loss, ``"overflow"``, on its caller's
    thread before the first message after them."""
    events = Events()
    with Client(server.host, server.port, max_queued_messages=2) as c:
        sub = c.subscribe("firehose", on_lost=events.lost)
        for i in range(5):
            c.publish("firehose", i)
        wait_until(lambda: sub.dropped_messages == 3, what="the queue to overflow")
        assert sub.lost_count == 1 and events.items == []
        assert sub.next_message(timeout=DEADLINE)["content"] == 3
        assert events.items == [("lost:overflow", "firehose")]
        assert events.threads == [threading.current_thread()]
        assert sub.next_message(timeout=DEADLINE)["content"] == 4
        # Read in time: nothing more is dropped, nothing more reported.
        c.publish("firehose", 5)
        assert sub.next_message(timeout=DEADLINE)["content"] == 5
        assert sub.dropped_messages == 3 and sub.lost_count == 1 and len(events.items) == 1


# --------------------------------------------------------- ringcast.TCPClient


def test_tcpclient_subscribe_publish_unsubscribe(server: RingcastServer) -> None:
    frames, on_sub = Collector(), Collector()
    client = TCPClient(server.host, server.port)
    client.set_message_callback(frames)
    # Subscribing before connect(): sent by connect().
    sub = client.subscribe("news", on_sub)
    plain = client.subscribe("plain")  # no callback: the message callback
    assert not sub.wait_subscribed(timeout=0.01)
    assert client.connect()
    try:
        assert sub.wait_subscribed(DEADLINE) and plain.wait_subscribed(DEADLINE)
        subscribed = frames.wait_type("subscribed", 2)
        assert {f["channel"] for f in subscribed} == {"news", "plain"}
        with Client(server.host, server.port) as pub:
            pub.publish("news", "n1")
            pub.publish("plain", "p1")
            (msg,) = on_sub.wait_type("channel_message")
            assert msg["content"] == "n1"
            assert on_sub.threads[0] is client.receive_thread
            (msg,) = frames.wait_type("channel_message")
            assert msg["channel"] == "plain" and msg["content"] == "p1"
            # Publishing is a fire-and-forget send; the answer reaches the callback.
            assert client.publish("news", "own")
            (published,) = frames.wait_type("published")
            assert published["channel"] == "news" and isinstance(published["recipients"], int)
            on_sub.wait_for(lambda items: contents(items) == ["n1", "own"])
            assert sub.unsubscribe() is True
            assert sub.closed and set(client.subscriptions) == {"plain"}
            assert sub.unsubscribe() is False  # already left
            frames.wait_type("unsubscribed")
            pub.publish("news", "gone")
            pub.publish("plain", "p2")
            frames.wait_for(lambda items: contents(items) == ["p1", "p2"])
            assert contents(on_sub.items) == ["n1", "own"]
            assert client.unsubscribe("plain") is True
            frames.wait_type("unsubscribed", 2)
            assert client.subscriptions == {}
    finally:
        client.disconnect()


def test_tcpclient_refusals_and_bad_arguments(server: RingcastServer) -> None:
    frames = Collector()
    with TCPClient(server.host, server.port) as client:
        client.set_message_callback(frames)
        for bad, error in BAD_CHANNELS:
            for call in (client.subscribe, client.unsubscribe, client.history):
                with pytest.raises(error, match="channel"):
                    call(bad)
            with pytest.raises(error, match="channel"):
                client.publish(bad, "x")
        sub = client.subscribe("bad\x01name")
        with pytest.raises(ServerError) as info:
            sub.wait_subscribed(DEADLINE)
        assert info.value.code == "invalid_channel" and sub.error is info.value
        assert sub.closed and client.subscriptions == {}
        (err,) = frames.wait_type("error")  # the refusal reaches the callback too
        assert err["code"] == "invalid_channel"
        ok = client.subscribe("news")
        with pytest.raises(ValueError, match="already subscribed"):
            client.subscribe("news")
        assert ok.wait_subscribed(DEADLINE)
        assert client.history("news")
        (err, err2) = frames.wait_type("error", 2)
        assert err2["request_type"] == "history"
        assert err2["code"] == "no_history"  # see the Client test
    assert client.messages_sent == 3  # the two subscribes and history


def test_tcpclient_resubscribes_after_a_cut(server: RingcastServer, proxy: CutProxy) -> None:
    frames, on_sub = Collector(), Collector()
    events = Events()
    client = TCPClient(proxy.host, proxy.port, reconnect_policy=FAST)
    client.set_message_callback(frames)
    assert client.connect()
    try:
        sub = client.subscribe("news", on_sub, on_recovered=events.recovered, on_lost=events.lost)
        assert sub.wait_subscribed(DEADLINE)
        proxy.cut()
        assert events.wait(1) == [("lost:reconnect", "news")]
        assert events.threads[0] is client.receive_thread
        assert client.reconnect_count == 1
        # The resubscription's answer is the client's own: one subscribed
        # frame reached the callback, the first.
        assert len(frames.of_type("subscribed")) == 1
        with Client(server.host, server.port) as pub:
            pub.publish("news", "after the cut")
        on_sub.wait_for(lambda items: contents(items) == ["after the cut"])
    finally:
        client.disconnect()


# ------------------------------------------------------- ringcast.aio.Client


def test_aio_subscribe_iterate_and_unsubscribe(server: RingcastServer) -> None:
    async def main() -> None:
        async with (
            aio.Client(server.host, server.port) as a,
            aio.Client(server.host, server.port) as pub,
        ):
            sub = await a.subscribe("news")
            assert isinstance(sub, aio.Subscription) and a.subscriptions == {"news": sub}
            received: List[Any] = []

            async def consume() -> None:
                async for msg in sub:
                    received.append(msg["content"])

            consumer = asyncio.ensure_future(consume())
            for i in range(5):
                result = await pub.publish("news", {"i": i})
                assert result.offset is None
            while len(received) < 5:
                await asyncio.sleep(0.005)
            await sub.unsubscribe()
            await asyncio.wait_for(consumer, DEADLINE)  # the loop ended
            assert received == [{"i": i} for i in range(5)]
            assert sub.closed and a.subscriptions == {}
            assert (await pub.publish("news", "nobody")).recipients == 0
            with pytest.raises(ConnectionClosed):
                await sub.next_message(timeout=0.05)
            await sub.unsubscribe()  # twice is fine

    run(main())


def test_aio_queue_overflow_is_reported_lost(server: RingcastServer) -> None:
    """The iteration's queue of 2 messages: 3 of 5 publications dropped,
    one ``on_lost(sub, "overflow")`` awaited before the first message
    after them."""

    async def main() -> None:
        seen: List[Any] = []

        async def on_lost(sub: aio.Subscription, reason: str) -> None:
            seen.append(f"lost:{reason}")

        async with aio.Client(server.host, server.port, max_queued_messages=2) as c:
            sub = await c.subscribe("firehose", on_lost=on_lost)
            for i in range(5):
                await c.publish("firehose", i)
            for _ in range(1000):
                if sub.dropped_messages == 3:
                    break
                await asyncio.sleep(0.005)
            assert sub.dropped_messages == 3 and sub.lost_count == 1 and seen == []
            async for msg in sub:
                seen.append(msg["content"])
                if msg["content"] == 4:
                    break
            assert seen == ["lost:overflow", 3, 4]

    run(main())


def test_aio_callbacks_plain_and_coroutine(server: RingcastServer) -> None:
    async def main() -> None:
        plain: List[Any] = []
        from_coroutine: List[Any] = []

        async def on_message(msg: Dict[str, Any]) -> None:
            await asyncio.sleep(0)
            from_coroutine.append(msg["content"])

        async with aio.Client(server.host, server.port) as a:
            await a.subscribe("one", lambda m: plain.append(m["content"]))
            await a.subscribe("two", on_message)
            await a.publish("one", 1)
            await a.publish("two", 2)
            for _ in range(200):
                if plain and from_coroutine:
                    break
                await asyncio.sleep(0.005)
            assert plain == [1] and from_coroutine == [2]
            # Nothing reaches the general queue.
            with pytest.raises(Timeout):
                await a.next_message(timeout=0.02)

    run(main())


def test_aio_refusals_and_bad_arguments(server: RingcastServer) -> None:
    async def main() -> None:
        async with aio.Client(server.host, server.port) as c:
            for bad, error in BAD_CHANNELS:
                with pytest.raises(error, match="channel"):
                    await c.subscribe(bad)
                with pytest.raises(error, match="channel"):
                    await c.publish(bad, 1)
                with pytest.raises(error, match="channel"):
                    await c.unsubscribe(bad)
                with pytest.raises(error, match="channel"):
                    await c.history(bad)
            with pytest.raises(ServerError) as info:
                await c.subscribe("bad\x01name")
            assert info.value.code == "invalid_channel"
            assert c.subscriptions == {}
            await c.subscribe("news")
            with pytest.raises(ValueError, match="already subscribed"):
                await c.subscribe("news")
            with pytest.raises(ServerError) as info:
                await c.history("news", since=0, limit=10)
            assert info.value.code == "no_history"  # see the Client test
            by_type = (await c.get_stats())["messages_by_type"]
            assert by_type["publish"] == by_type["unsubscribe"] == 0  # nothing bad was sent

    run(main())


def test_aio_resubscribes_after_a_cut(server: RingcastServer, proxy: CutProxy) -> None:
    async def main() -> None:
        events = Events()
        async with (
            aio.Client(proxy.host, proxy.port, reconnect=FAST) as a,
            aio.Client(server.host, server.port) as pub,
        ):
            sub = await a.subscribe("news", on_recovered=events.recovered, on_lost=events.lost)
            await pub.publish("news", "before")
            assert (await sub.next_message(timeout=DEADLINE))["content"] == "before"
            waiting = asyncio.ensure_future(sub.resubscribed(timeout=DEADLINE))
            await asyncio.sleep(0)
            proxy.cut()
            assert await waiting is False  # no history: lost
            assert a.connected and a.reconnect_count == 1
            assert sub.recovered is False and sub.lost_count == 1
            # on_lost is called by the reading of the stream, in its place:
            # before the first message after the loss.
            assert events.items == []
            await pub.publish("news", "after")
            assert (await sub.next_message(timeout=DEADLINE))["content"] == "after"
            assert events.items == [("lost:reconnect", "news")]
            assert events.threads == [threading.current_thread()]
            assert await a.echo("fine") == "fine"

    run(main())


def test_aio_requests_fail_while_reconnecting_and_wait_connected(
    server: RingcastServer, proxy: CutProxy
) -> None:
    async def main() -> None:
        slow = ReconnectPolicy(initial_delay=0.3, max_delay=0.3, jitter=0)
        async with aio.Client(proxy.host, proxy.port, reconnect=slow) as a:
            proxy.cut()
            while a.connected:
                await asyncio.sleep(0.005)
            with pytest.raises(ConnectionClosed, match="reconnecting"):
                await a.ping()
            assert await a.wait_connected(timeout=DEADLINE)
            assert await a.echo(1) == 1
        assert not await a.wait_connected(timeout=0.01)  # closed

    run(main())


def test_aio_without_reconnect_the_iteration_raises(
    server: RingcastServer, proxy: CutProxy
) -> None:
    async def main() -> None:
        async with aio.Client(proxy.host, proxy.port) as a:
            sub = await a.subscribe("news")

            async def consume() -> None:
                async for _ in sub:
                    pass

            consumer = asyncio.ensure_future(consume())
            await asyncio.sleep(0.01)
            proxy.cut()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(consumer, DEADLINE)
            assert sub.closed and not await a.wait_connected(timeout=0.01)

    run(main())


def test_aio_close_ends_the_iteration(server: RingcastServer) -> None:
    async def main() -> None:
        a = await aio.connect(server.host, server.port)
        sub = await a.subscribe("news")
        seen: List[Any] = []

        async def consume() -> None:
            async for msg in sub:
                seen.append(msg)

        consumer = asyncio.ensure_future(consume())
        await asyncio.sleep(0.01)
        await a.close()
        await asyncio.wait_for(consumer, DEADLINE)  # ends without an error
        assert seen == [] and sub.closed

    run(main())
