"""Channel history and recovery against the REAL server (started with
``--history-size``), for the three clients: a cut mid-stream is recovered
(every publication once, in order, ``recovered`` told first); a restart
(a new epoch) is reported lost; so is a cut that outlasts ``history_size``
(the same epoch, but the missed publications are no longer kept);
``history`` reads the kept publications.
The clients are driven through the adapters of test_recovery.py, which
pins the same rules against a fake server."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from helpers import CutProxy, RingcastServer, free_port
from test_recovery import ADAPTERS, Adapter

from ringcast import Client, ServerError


@pytest.fixture
def hserver(ringcast_bin: Path, tmp_path: Path) -> Iterator[RingcastServer]:
    """A server keeping 100 publications per channel."""
    srv = RingcastServer(
        ringcast_bin, free_port(), tmp_path / "server.log", ["--history-size", "100"]
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def hproxy(hserver: RingcastServer) -> Iterator[CutProxy]:
    p = CutProxy(hserver.port)
    yield p
    p.close()


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_a_cut_mid_stream_is_recovered_in_order(
    kind: str, hserver: RingcastServer, hproxy: CutProxy
) -> None:
    client: Adapter = ADAPTERS[kind](hproxy)  # type: ignore[arg-type]
    try:
        with Client(hserver.host, hserver.port) as pub:
            sub = client.subscribe("prices")
            assert sub.position is not None and sub.position.offset == 0
            epoch = sub.position.epoch
            for i in range(1, 21):
                pub.publish("prices", i)
            client.timeline.wait("prices", "20")
            hproxy.cut()
            # Published around the reconnection: replayed or live, each once.
            for i in range(21, 41):
                pub.publish("prices", i)
            want = [str(i) for i in range(1, 21)] + ["recovered"]
            want += [str(i) for i in range(21, 41)]
            assert client.timeline.wait("prices", "40") == want
            assert sub.recovered is True and sub.lost_count == 0
            assert tuple(sub.position) == (40, epoch)
            assert hproxy.accepted == 2
    finally:
        client.close()


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_a_restart_is_reported_lost(kind: str, hserver: RingcastServer) -> None:
    client: Adapter = ADAPTERS[kind](hserver)  # type: ignore[arg-type]
    try:
        sub = client.subscribe("prices")
        with Client(hserver.host, hserver.port) as pub:
            pub.publish("prices", "a")
        client.timeline.wait("prices", "a")
        old = sub.position
        hserver.restart()  # the history is lost with the process: a new epoch
        client.timeline.wait("prices", "lost:reconnect")
        assert sub.recovered is False and sub.lost_count == 1
        assert sub.position is not None and sub.position.epoch != old.epoch
        with Client(hserver.host, hserver.port) as pub:
            pub.publish("prices", "b")
        assert client.timeline.wait("prices", "b") == ["a", "lost:reconnect", "b"]
    finally:
        client.close()


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_a_cut_longer_than_history_size_is_refused_and_reported_lost(
    kind: str, hserver: RingcastServer, hproxy: CutProxy
) -> None:
    client: Adapter = ADAPTERS[kind](hproxy)  # type: ignore[arg-type]
    try:
        with Client(hserver.host, hserver.port) as pub:
            sub = client.subscribe("prices")
            epoch = sub.position.epoch
            for i in range(1, 21):
                pub.publish("prices", i)
            client.timeline.wait("prices", "20")
            # The network stays down while 150 are published: the server
            # keeps 100, so offsets 21 ... 70 are gone when the client is back.
            hproxy.refusing = True
            hproxy.cut()
            for i in range(21, 171):
                pub.publish("prices", i)
            hproxy.refusing = False
            client.timeline.wait("prices", "lost:reconnect")
            assert sub.recovered is False and sub.lost_count == 1
            # Told the channel's position now; the epoch did not change
            # (no restart): the refusal is the history's size alone.
            assert tuple(sub.position) == (170, epoch)
            pub.publish("prices", "after")
            # Nothing missed is replayed, not even the 100 still kept.
            want = [str(i) for i in range(1, 21)] + ["lost:reconnect", "after"]
            assert client.timeline.wait("prices", "after") == want
            assert tuple(sub.position) == (171, epoch)
            assert hproxy.accepted >= 2
    finally:
        client.close()


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_history_reads_the_kept_publications(kind: str, hserver: RingcastServer) -> None:
    client: Adapter = ADAPTERS[kind](hserver)  # type: ignore[arg-type]
    try:
        with Client(hserver.host, hserver.port) as pub:
            for i in range(1, 6):
                pub.publish("prices", {"n": i})
        h = client.history("prices", since=2, limit=2)
        assert h.offset == 5
        assert [p["offset"] for p in h.publications] == [3, 4]
        assert [p["content"] for p in h.publications] == [{"n": 3}, {"n": 4}]
    finally:
        client.close()


def test_history_without_history_is_no_history(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        with pytest.raises(ServerError) as info:
            c.history("news")
        assert info.value.code == "no_history"
        assert info.value.request_type == "history"
        assert c.echo("still here") == "still here"
