"""ringcast.Client: the blocking request/response client against the real server."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from helpers import (
    CLOSE,
    Collector,
    RingcastServer,
    ScriptedServer,
    SilentServer,
    pong_for,
    self_signed_cert,
    wait_until,
)

from ringcast import (
    Client,
    ConnectionClosed,
    ProtocolError,
    ReconnectPolicy,
    RingcastError,
    ServerError,
    Timeout,
)


def test_ping_returns_the_round_trip_in_seconds(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        rtt = c.ping()
        assert isinstance(rtt, float)
        assert 0 < rtt < 5


def test_echo_returns_the_content(server: RingcastServer) -> None:
    values: List[Any] = [
        "Hello TCP Server!",
        "",
        "é ☃ \U0001f600 \u2028",
        42,
        2.5,
        None,
        True,
        [1, "two", {"three": 3}],
        {"nested": {"list": [None, False], "n": -7}},
        "x" * 100_000,
    ]
    with Client(server.host, server.port) as c:
        for v in values:
            assert c.echo(v) == v


def test_broadcast_returns_the_recipient_count_and_reaches_the_others(
    server: RingcastServer,
) -> None:
    a_got, b_got = Collector(), Collector()
    with Client(server.host, server.port) as sender:
        assert sender.broadcast("nobody else") == 0
        with contextlib.ExitStack() as stack:
            a = stack.enter_context(Client(server.host, server.port, message_callback=a_got))
            b = stack.enter_context(Client(server.host, server.port))
            b.set_message_callback(b_got)
            # Round trips first: a connection counts in `recipients` once its
            # shard has taken it in.
            a.ping()
            b.ping()
            assert sender.broadcast({"k": "v"}) == 2
            for got in (a_got, b_got):
                # Only this broadcast: the server may also deliver "nobody
                # else" to a client that connected just after it was sent
                # (python/README.md, "Server behaviour seen from Python").
                (m,) = got.wait_for(
                    lambda items: [
                        x
                        for x in items
                        if x.get("type") == "broadcast_message" and x["content"] == {"k": "v"}
                    ]
                )
                assert m["from"] == "{}:{}".format(*sender.local_address)
                assert "id" not in m
            # The callback runs on the client's receiving thread.
            assert a_got.threads[0] is a._receiver
            assert a_got.threads[0] is not threading.current_thread()
            # The sender's own answer never reaches its callback or queue.
            with pytest.raises(Timeout):
                sender.next_message(timeout=0.05)


def test_get_stats_returns_a_dict(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        c.ping()
        stats = c.get_stats()
        assert isinstance(stats, dict)
        assert "type" not in stats and "id" not in stats
        assert stats["connected_clients"] == 1
        assert stats["messages_by_type"]["ping"] == 1
        assert stats["shards"] == 2
        for key in ("uptime_seconds", "total_messages", "server_start_time", "current_time"):
            assert key in stats


def test_send_text_returns_the_ack(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        ack = c.send_text("plain text")
        assert ack["type"] == "message_ack"
        assert isinstance(ack["id"], int) and "timestamp" in ack
        assert c.get_stats()["messages_by_type"]["message"] == 1


def test_send_custom_raises_server_error_for_an_unknown_type(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        with pytest.raises(ServerError) as info:
            c.send_custom("custom_type", {"data": "value"})
        e = info.value
        assert e.code == "unknown_type"
        assert e.message == "no handler for this message type"
        assert e.request_type == "custom_type"
        assert e.frame["type"] == "error"
        assert isinstance(e, RingcastError)
        # The connection stays usable after a JSON-level error.
        assert c.echo("still here") == "still here"


def test_request_reports_invalid_field(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        with pytest.raises(ServerError) as info:
            c.request("echo")  # no content
        assert info.value.code == "invalid_field"
        assert info.value.request_type == "echo"
        frame = c.request("broadcast", {}, check=False)
        assert frame["type"] == "error" and frame["code"] == "invalid_field"
        assert c.request("auth", {"token": "any"})["type"] == "auth_ok"


def test_many_threads_share_one_client(server: RingcastServer) -> None:
    errors: List[BaseException] = []
    with Client(server.host, server.port) as c:

        def work(t: int) -> None:
            try:
                for i in range(200):
                    content = {"thread": t, "i": i}
                    assert c.echo(content) == content
                    if i % 50 == 0:
                        assert c.ping() > 0
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert c.get_stats()["messages_by_type"]["echo"] == 8 * 200


def test_broadcasts_between_answers_are_not_taken_for_answers(server: RingcastServer) -> None:
    with Client(server.host, server.port) as receiver, Client(server.host, server.port) as sender:
        stop = threading.Event()

        def spam() -> None:
            while not stop.is_set():
                sender.broadcast("noise")

        t = threading.Thread(target=spam)
        t.start()
        try:
            for i in range(300):
                assert receiver.echo(i) == i
        finally:
            stop.set()
            t.join()
        first = receiver.next_message(timeout=5)
        assert first["type"] == "broadcast_message" and first["content"] == "noise"


def test_unsolicited_frames_queue_without_a_callback(server: RingcastServer) -> None:
    with contextlib.ExitStack() as stack:
        c = stack.enter_context(Client(server.host, server.port, max_queued_messages=3))
        other = stack.enter_context(Client(server.host, server.port))
        with pytest.raises(Timeout):
            c.next_message(timeout=0.01)
        c.ping()  # taken in by its shard before the broadcasts are sent
        for i in range(5):
            other.broadcast(i)
        wait_until(lambda: c.dropped_messages == 2, what="the queue to overflow")
        assert [c.next_message(timeout=1)["content"] for _ in range(3)] == [2, 3, 4]


def test_requests_from_the_callback_fail_instead_of_deadlocking(server: RingcastServer) -> None:
    outcome: List[BaseException] = []
    with Client(server.host, server.port) as c, Client(server.host, server.port) as other:

        def cb(msg: Dict[str, Any]) -> None:
            try:
                c.ping()
            except RingcastError as e:
                outcome.append(e)

        c.set_message_callback(cb)
        other.broadcast("x")
        wait_until(lambda: outcome, what="the callback")
        assert "callback" in str(outcome[0])
        assert c.echo("fine") == "fine"


def test_timeout_on_a_silent_server(silent_server: SilentServer) -> None:
    with Client("127.0.0.1", silent_server.port, timeout=0.2) as c:
        start = time.monotonic()
        with pytest.raises(Timeout):
            c.ping()
        assert 0.15 < time.monotonic() - start < 3
        with pytest.raises(TimeoutError):  # Timeout is a TimeoutError too
            c.echo("x", timeout=0.05)
        assert c.connected  # a timeout does not close the connection


def test_late_answers_are_dropped_and_the_next_request_gets_its_own() -> None:
    def answer(msg: Dict[str, Any]) -> Any:
        if msg.get("content") == "slow":
            return 0.4, [pong_for(msg)]
        return 0, [pong_for(msg)]

    fake = ScriptedServer(answer)
    try:
        with Client("127.0.0.1", fake.port, timeout=0.1) as c:
            with pytest.raises(Timeout):
                c.echo("slow")
            # The slow answer arrives while this request waits; ids keep them apart.
            assert c.echo("fast", timeout=5) == "fast"
            with pytest.raises(Timeout):
                c.next_message(timeout=0.01)  # the late answer was dropped, not queued
    finally:
        fake.close()


def test_answers_without_ids_go_to_the_oldest_request() -> None:
    # The seed's Python server does not copy ids back.
    def answer(msg: Dict[str, Any]) -> Any:
        reply = pong_for(msg)
        reply.pop("id", None)
        return 0, [reply]

    fake = ScriptedServer(answer)
    try:
        with Client("127.0.0.1", fake.port) as c:
            assert c.echo("seed") == "seed"
            assert c.ping() > 0
    finally:
        fake.close()


def test_a_wrong_answer_type_is_a_protocol_error() -> None:
    fake = ScriptedServer(lambda msg: (0, [{"type": "surprise", "id": msg["id"]}]))
    try:
        with Client("127.0.0.1", fake.port) as c:
            with pytest.raises(ProtocolError):
                c.ping()
    finally:
        fake.close()


# The frame a ringcast server sends every client as it stops.
FAREWELL = {"type": "error", "code": "shutting_down", "message": "the server is shutting down"}


def test_connection_closed_when_the_server_stops(server: RingcastServer) -> None:
    c = Client(server.host, server.port)
    assert c.echo("registered") == "registered"
    server.stop()
    wait_until(lambda: not c.connected, what="the client to notice")
    with pytest.raises(ConnectionClosed) as info:
        c.ping()
    assert isinstance(info.value, ConnectionError)
    # The server means to send shutting_down first, but does not always
    # (python/README.md, "Server behaviour seen from Python"); when it does,
    # the exception carries it.
    assert info.value.code in ("shutting_down", None)
    c.close()


def test_connection_closed_carries_the_servers_reason() -> None:
    # A scripted server that always says goodbye, as ringcast's stop means to.
    def answer(msg: Dict[str, Any]) -> Any:
        if msg.get("content") == "bye":
            return 0, [FAREWELL, CLOSE]
        return 0, [pong_for(msg)]

    fake = ScriptedServer(answer)
    try:
        got = Collector()
        with Client("127.0.0.1", fake.port, message_callback=got) as c:
            with pytest.raises(ConnectionClosed) as info:
                c.echo("bye")
            assert info.value.code == "shutting_down"
            assert info.value.message == "the server is shutting down"
            assert "shutting_down" in str(info.value)
            assert got.wait_type("error")[0]["code"] == "shutting_down"
            with pytest.raises(ConnectionClosed) as later:
                c.ping()
            assert later.value.code == "shutting_down"
    finally:
        fake.close()


def test_requests_in_flight_fail_when_the_server_vanishes(
    server: RingcastServer, silent_server: SilentServer
) -> None:
    # A request waiting on a connection that dies gets ConnectionClosed, not Timeout.
    c = Client("127.0.0.1", silent_server.port, timeout=10)
    failure: List[BaseException] = []

    def call() -> None:
        try:
            c.ping()
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=call)
    t.start()
    wait_until(lambda: c._pending, what="the request to be in flight")
    wait_until(lambda: silent_server.conns, what="the fake server to accept")
    silent_server.conns[0].close()
    t.join(10)
    assert len(failure) == 1 and isinstance(failure[0], ConnectionClosed)
    assert failure[0].code is None
    c.close()

    # The real server killed outright: no farewell frame, still ConnectionClosed.
    c = Client(server.host, server.port)
    c.ping()
    server.kill()
    wait_until(lambda: not c.connected, what="the client to notice")
    with pytest.raises(ConnectionClosed):
        c.echo("x")
    c.close()


def test_context_manager_and_close_twice(server: RingcastServer) -> None:
    with Client(server.host, server.port) as c:
        assert c.connected
        assert "connected" in repr(c)
    assert not c.connected
    with pytest.raises(ConnectionClosed, match="closed"):
        c.ping()
    c.close()
    c.disconnect()
    assert not c._receiver.is_alive()


def test_connect_errors(closed_port: int) -> None:
    with pytest.raises(OSError):
        Client("127.0.0.1", closed_port, timeout=2)


def test_auth_token(auth_server: RingcastServer) -> None:
    with Client(auth_server.host, auth_server.port, auth_token="s3cret") as c:
        assert c.echo("in") == "in"
        assert c.get_stats()["messages_by_type"]["auth"] == 1
    with pytest.raises(ServerError) as info:
        Client(auth_server.host, auth_server.port, auth_token="wrong")
    assert info.value.code == "unauthorized"
    # Without a token the first request is refused and the connection closed.
    c = Client(auth_server.host, auth_server.port)
    with pytest.raises(ConnectionClosed) as closed:
        c.ping()
    assert closed.value.code == "unauthorized"
    c.close()


def test_reconnects_after_a_server_restart(server: RingcastServer) -> None:
    policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.2)
    with Client(server.host, server.port, reconnect=policy) as c:
        c.ping()
        server.stop()
        wait_until(lambda: not c.connected, what="the client to notice")
        with pytest.raises(ConnectionClosed):
            c.ping()
        server.start()
        assert c.wait_connected(timeout=10)
        assert c.reconnect_count == 1
        assert c.echo("back") == "back"


def test_reconnect_gives_up_after_max_attempts(server: RingcastServer) -> None:
    policy = ReconnectPolicy(initial_delay=0.01, max_delay=0.02, max_attempts=3)
    c = Client(server.host, server.port, reconnect=policy)
    c.ping()
    server.stop()
    wait_until(lambda: not c._receiver.is_alive(), what="the receiver to give up")
    assert not c.wait_connected(timeout=0.01)
    assert c.reconnect_count == 0
    c.close()


def _tls_contexts(tmp_path: Path) -> "tuple[ssl.SSLContext, ssl.SSLContext]":
    made = self_signed_cert(tmp_path)
    if made is None:
        pytest.skip("test_tls: no openssl command to make a test certificate")
    cert, key = made
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls_wraps_the_socket(tmp_path: Path) -> None:
    # The ringcast server has no TLS yet: a fake TLS server stands in for a
    # TLS terminator in front of it.
    server_ctx, client_ctx = _tls_contexts(tmp_path)
    fake = ScriptedServer(lambda msg: (0, [pong_for(msg)]), ssl_context=server_ctx)
    try:
        with Client(
            "127.0.0.1", fake.port, ssl_context=client_ctx, server_hostname="localhost"
        ) as c:
            assert isinstance(c._sock, ssl.SSLSocket)
            assert c.echo("over tls") == "over tls"
            assert c.ping() > 0
        # Verification is real: a wrong name is refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            Client("127.0.0.1", fake.port, ssl_context=client_ctx, server_hostname="other")
    finally:
        fake.close()
