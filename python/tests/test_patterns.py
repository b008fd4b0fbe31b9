"""Pattern subscriptions (``room.*``, ``room.>``) in the three clients
against the real server: a ``channel_message`` names the concrete channel
and reaches the pattern subscription's callback, queue or iterator; a
client holding the channel and a pattern gets the server's one copy in
each subscription; a pattern on a history server keeps no position and is
resubscribed without ``recover`` after a cut. Plus the client-side
matching rules themselves."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from helpers import DEADLINE, Collector, CutProxy, RingcastServer, free_port, wait_until

from ringcast import Client, TCPClient, Timeout, aio
from ringcast.channels import ChannelState, Subscriptions, is_pattern, matches
from ringcast.backoff import ReconnectPolicy

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)


def test_matching_is_the_servers() -> None:
    assert is_pattern("a.*") and is_pattern(">") and not is_pattern("a.b*")
    assert matches("a.*", "a.b") and not matches("a.*", "a") and not matches("a.*", "a.b.c")
    assert matches("a.>", "a.b.c") and not matches("a.>", "a")
    assert matches("*.b.>", "x.b.c.d") and not matches("*.b.>", "x.c.d")
    assert matches("a.b", "a.b") and not matches("a.b", "a.c")
    subs: Subscriptions[str] = Subscriptions()
    subs["room.1"] = "own"
    subs["room.*"] = "star"
    subs["room.>"] = "rest"
    assert sorted(subs.for_message("room.1")) == ["own", "rest", "star"]
    assert subs.for_message("room.1")[0] == "own"  # the channel's own first
    assert sorted(subs.for_message("room.2.x")) == ["rest"]
    assert subs.for_message(5) == []
    del subs["room.>"]
    assert subs.pop("room.*") == "star"
    assert subs.for_message("room.2") == []


def test_a_pattern_keeps_no_position() -> None:
    st = ChannelState("h.*")
    assert st.handle_subscribed({"type": "subscribed", "channel": "h.*"}) is None
    for offset, ch in [(1, "h.a"), (1, "h.b"), (7, "h.a")]:
        frame = {"type": "channel_message", "channel": ch, "offset": offset, "epoch": "e"}
        assert st.handle_message(frame) == (True, None)
    assert st.position is None
    assert "recover" not in st.subscribe_request()


def test_client_pattern_and_channel_subscriptions_each_get_the_one_copy(
    server: RingcastServer,
) -> None:
    star, own = Collector(), Collector()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(Client(server.host, server.port))
        pub = stack.enter_context(Client(server.host, server.port))
        sub_star = a.subscribe("room.*", star)
        a.subscribe("room.1", own)
        rest = a.subscribe("room.>")  # no callback: its queue
        assert set(a.subscriptions) == {"room.*", "room.1", "room.>"}
        # (``recipients`` counts the connection once on its own shard; the
        # publisher may be on another, which counts each matching pattern.)
        assert pub.publish("room.1", "one").recipients >= 1
        pub.publish("room.2", "two")
        pub.publish("room.2.x", "deep")
        assert pub.publish("lobby", "none").recipients == 0
        star.wait_for(lambda items: len(items) >= 2)
        assert [(m["channel"], m["content"]) for m in star.items] == [
            ("room.1", "one"),
            ("room.2", "two"),
        ]
        own.wait_for(lambda items: len(items) >= 1)
        assert [(m["channel"], m["content"]) for m in own.items] == [("room.1", "one")]
        got = [rest.next_message(timeout=DEADLINE) for _ in range(3)]
        assert [(m["channel"], m["content"]) for m in got] == [
            ("room.1", "one"),
            ("room.2", "two"),
            ("room.2.x", "deep"),
        ]
        with pytest.raises(Timeout):
            rest.next_message(timeout=0.05)
        with pytest.raises(Timeout):
            a.next_message(timeout=0.02)  # nothing fell through to the client
        sub_star.unsubscribe()
        pub.publish("room.3", "three")
        assert rest.next_message(timeout=DEADLINE)["channel"] == "room.3"
        assert len(star.items) == 2


def test_tcpclient_pattern_subscription(server: RingcastServer) -> None:
    frames, on_sub = Collector(), Collector()
    client = TCPClient(server.host, server.port)
    client.set_message_callback(frames)
    sub = client.subscribe("news.*", on_sub)
    assert client.connect()
    try:
        assert sub.wait_subscribed(DEADLINE)
        with Client(server.host, server.port) as pub:
            pub.publish("news.sport", "goal")
            pub.publish("news.sport.extra", "not matched")
            pub.publish("news.tech", "chip")
            on_sub.wait_for(lambda items: len(items) >= 2)
            assert [(m["channel"], m["content"]) for m in on_sub.items] == [
                ("news.sport", "goal"),
                ("news.tech", "chip"),
            ]
        assert not [f for f in frames.items if f.get("type") == "channel_message"]
    finally:
        client.disconnect()


def test_aio_pattern_subscription_iterates_concrete_channels(server: RingcastServer) -> None:
    async def main() -> None:
        async with (
            aio.Client(server.host, server.port) as a,
            aio.Client(server.host, server.port) as pub,
        ):
            sub = await a.subscribe("room.>")
            for ch in ["room.a", "lobby", "room.b.c"]:
                await pub.publish(ch, ch)
            got: List[Any] = []
            async for msg in sub:
                got.append((msg["channel"], msg["content"]))
                if len(got) == 2:
                    break
            assert got == [("room.a", "room.a"), ("room.b.c", "room.b.c")]
            with pytest.raises(Timeout):
                await sub.next_message(timeout=0.05)

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.fixture
def hserver(ringcast_bin: Path, tmp_path: Path) -> Iterator[RingcastServer]:
    srv = RingcastServer(
        ringcast_bin, free_port(), tmp_path / "server.log", ["--history-size", "100"]
    )
    srv.start()
    yield srv
    srv.stop()


def test_a_pattern_on_a_history_server_is_resubscribed_without_recover(
    hserver: RingcastServer,
) -> None:
    proxy = CutProxy(hserver.port)
    lost: List[str] = []
    got = Collector()
    try:
        with (
            Client(proxy.host, proxy.port, reconnect=FAST) as a,
            Client(hserver.host, hserver.port) as pub,
        ):
            sub = a.subscribe("h.*", got, on_lost=lambda s, why: lost.append(why))
            pub.publish("h.a", 1)
            pub.publish("h.b", 2)
            got.wait_for(lambda items: len(items) >= 2)
            assert [m["offset"] for m in got.items] == [1, 1]  # per channel
            assert sub.position is None
            proxy.cut()
            wait_until(lambda: lost == ["reconnect"], what="the loss to be reported")
            assert not sub.closed  # resubscribed, not refused
            pub.publish("h.a", 3)
            got.wait_for(lambda items: len(items) >= 3)
            assert (got.items[2]["channel"], got.items[2]["offset"]) == ("h.a", 2)
    finally:
        proxy.close()
