"""ringcast.TCPClient: the seed's client API against the real server."""

from __future__ import annotations

import contextlib
import io
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Dict

import pytest
from helpers import (
    CLOSE,
    REPO,
    Collector,
    RingcastServer,
    ScriptedServer,
    SilentServer,
    free_port,
    pong_for,
    port_accepts,
    self_signed_cert,
    wait_until,
)

import ringcast
from ringcast import ReconnectPolicy, TCPClient

FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.2)

SEED_README = REPO.parent / "shared" / "seed" / "000_16a273353da00319.txt"

# The seed README's "Basic Client Usage" block, verbatim but for the import
# line. Kept here too so the test runs where shared/ is absent; when the seed
# file is present, the test checks this copy against it.
SEED_USAGE = """\
from client import TCPClient

client = TCPClient('localhost', 9999)

def on_message(message):
    print(f"Received: {message}")

client.set_message_callback(on_message)

if client.connect():
    # Send messages
    client.ping()
    client.echo("Hello Server!")
    client.broadcast("Hello all clients!")
    client.get_server_stats()
    
    # Send custom message
    client.send_custom_message("custom_type", {"data": "value"})
    
    client.disconnect()
"""


def seed_usage_block() -> str:
    if SEED_README.is_file():
        text = SEED_README.read_text(encoding="utf-8")
        m = re.search(r"### Basic Client Usage\n```python\n(.*?)```", text, re.S)
        assert m, "the seed README lost its Basic Client Usage block"
        assert m.group(1) == SEED_USAGE
        return m.group(1)
    return SEED_USAGE


def test_seed_basic_usage_block_runs_unchanged(ringcast_bin: Path, tmp_path: Path) -> None:
    code = seed_usage_block().replace(
        "from client import TCPClient", "from ringcast import TCPClient"
    )
    # The block names localhost:9999: run a server there. Only if that port
    # is taken on this machine is the port (and nothing else) replaced.
    port = 9999
    if port_accepts(port) or not _bindable(port):
        port = free_port()
        code = code.replace("9999", str(port))
    srv = RingcastServer(ringcast_bin, port, tmp_path / "server.log")
    srv.start()
    try:
        observer = ringcast.Client("127.0.0.1", port)
        # A round trip first: the server counts a connection in `recipients`
        # only once its shard has taken it in (see python/README.md).
        observer.ping()
        pushed = Collector()
        observer.set_message_callback(pushed)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "seed-basic-usage", "exec"), {"__name__": "seed_usage"})
        printed = out.getvalue()
        # disconnect() closes gracefully, so every answer reached on_message,
        # in request order.
        kinds = re.findall(r"Received: \{'type': '(\w+)'", printed)
        assert kinds == ["pong", "echo_response", "broadcast_sent", "server_stats", "error"]
        assert "'content': 'Hello Server!'" in printed
        assert "'recipients': 1" in printed
        assert "'code': 'unknown_type'" in printed and "'request_type': 'custom_type'" in printed
        got = pushed.wait_type("broadcast_message")
        assert got[0]["content"] == "Hello all clients!"
        stats = observer.get_stats()
        by_type = stats["messages_by_type"]
        assert (by_type["ping"], by_type["echo"], by_type["broadcast"]) == (2, 1, 1)
        assert by_type["custom"] == 1 and by_type["get_stats"] == 2
        observer.close()
    finally:
        srv.stop()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_default_address_is_the_seeds() -> None:
    c = TCPClient()
    assert (c.host, c.port) == ("localhost", 9999)
    assert c.connected is False and c.running is False and c.socket is None
    assert c.message_callback is None and c.receive_thread is None


def test_every_method_is_answered_through_the_callback(server: RingcastServer) -> None:
    got = Collector()
    client = TCPClient(server.host, server.port)
    client.set_message_callback(got)
    assert client.message_callback is got
    assert client.connect() is True
    assert client.connected and client.running and client.socket is not None
    assert client.ping() is True
    assert client.echo("Hello Server!") is True
    assert client.broadcast("Hello all clients!") is True
    assert client.get_server_stats() is True
    assert client.send_custom_message("custom_type", {"data": "value"}) is True
    assert client.send_text("just text") is True
    assert client.send_message({"type": "echo", "content": [1, {"a": None}]}) is True
    items = got.wait_for(lambda items: items if len(items) >= 7 else None)
    assert [m["type"] for m in items] == [
        "pong",
        "echo_response",
        "broadcast_sent",
        "server_stats",
        "error",
        "message_ack",
        "echo_response",
    ]
    pong, echo, sent, stats, err, ack, echo2 = items
    assert pong["client_id"].startswith("127.0.0.1:")
    assert re.match(r"^\d{4}-\d\d-\d\dT", pong["ping_timestamp"])
    assert echo["content"] == "Hello Server!" and echo["echoed_by"] == "ringcast"
    assert sent["recipients"] == 0
    assert stats["connected_clients"] == 1 and "uptime_seconds" in stats
    assert err["code"] == "unknown_type" and err["request_type"] == "custom_type"
    assert "timestamp" in ack
    assert echo2["content"] == [1, {"a": None}]
    # The seed's callback runs on the background receiving thread.
    assert all(t is client.receive_thread for t in got.threads)
    assert client.messages_sent == 7
    client.disconnect()
    assert not client.connected and not client.running


def test_broadcast_from_another_client_reaches_the_callback(server: RingcastServer) -> None:
    got = Collector()
    with TCPClient(server.host, server.port) as client:
        client.set_message_callback(got)
        assert client.ping()
        got.wait_type("pong")  # registered on its shard, so counted in recipients
        with ringcast.Client(server.host, server.port) as other:
            assert other.broadcast({"hello": "from other"}) == 1
            (msg,) = got.wait_type("broadcast_message")
            assert msg["content"] == {"hello": "from other"}
            assert got.items[0]["type"] == "pong"
            assert msg["from"] == "{}:{}".format(*other.local_address)
            assert "id" not in msg
            assert got.threads[0] is client.receive_thread
            assert got.threads[0] is not threading.current_thread()


def test_connect_fails_cleanly_and_sends_return_false(closed_port: int) -> None:
    client = TCPClient("127.0.0.1", closed_port)
    assert client.connect() is False
    assert client.connected is False
    assert client.ping() is False
    assert client.echo("x") is False
    client.disconnect()
    client.disconnect()


def test_disconnect_is_safe_twice_and_sends_then_fail(server: RingcastServer) -> None:
    client = TCPClient(server.host, server.port)
    assert client.connect()
    assert client.connect() is True  # already connected
    client.disconnect()
    client.disconnect()
    assert client.ping() is False
    assert client.receive_thread is not None and not client.receive_thread.is_alive()
    # It can connect again afterwards.
    got = Collector()
    client.set_message_callback(got)
    assert client.connect()
    assert client.ping()
    got.wait_type("pong")
    client.disconnect()


def test_disconnect_from_the_callback(server: RingcastServer) -> None:
    client = TCPClient(server.host, server.port)
    done = threading.Event()

    def on_message(msg: dict) -> None:
        client.disconnect()
        done.set()

    client.set_message_callback(on_message)
    assert client.connect()
    assert client.ping()
    assert done.wait(10)
    wait_until(lambda: not client.receive_thread.is_alive(), what="receiver to end")
    assert not client.connected


def test_reconnects_after_a_server_restart(server: RingcastServer) -> None:
    got = Collector()
    client = TCPClient(server.host, server.port, reconnect_policy=FAST)
    client.set_message_callback(got)
    assert client.connect()
    first_id = client.socket.getsockname()
    assert client.ping()
    got.wait_type("pong")  # the server has surely taken the connection in
    server.stop()
    wait_until(lambda: not client.connected, what="the client to notice")
    # The server's farewell, when it manages to send it (python/README.md),
    # reaches the callback like any frame.
    assert [m["code"] for m in got.of_type("error")] in ([], ["shutting_down"])
    assert client.ping() is False  # disconnected: sends fail at once
    server.start()  # same port
    assert client.wait_connected(timeout=10)
    assert client.reconnect_count == 1
    assert client.socket.getsockname() != first_id
    assert client.echo("after restart")
    (echo,) = got.wait_type("echo_response")
    assert echo["content"] == "after restart"
    client.disconnect()


def test_without_auto_reconnect_the_client_stops(server: RingcastServer) -> None:
    client = TCPClient(server.host, server.port, auto_reconnect=False)
    assert client.connect()
    server.kill()
    wait_until(lambda: not client.running, what="the client to stop")
    assert not client.connected
    client.disconnect()


def test_heartbeat_pings_without_bothering_the_callback(server: RingcastServer) -> None:
    got = Collector()
    client = TCPClient(server.host, server.port, heartbeat_interval=0.05)
    client.set_message_callback(got)
    assert client.connect()
    with ringcast.Client(server.host, server.port) as probe:
        wait_until(
            lambda: probe.get_stats()["messages_by_type"]["ping"] >= 3,
            what="three heartbeat pings",
        )
    assert client.messages_received >= 2
    assert got.items == []  # the heartbeat pongs were not passed on
    assert client.connected
    client.disconnect()


def test_heartbeat_declares_a_silent_server_dead(silent_server: SilentServer) -> None:
    client = TCPClient(
        "127.0.0.1",
        silent_server.port,
        heartbeat_interval=0.05,
        heartbeat_max_missed=2,
        reconnect_policy=ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
        connect_timeout=0.2,
    )
    assert client.connect()  # TCP connect works: the listener accepts
    # No pong ever comes: the heartbeat drops the connection, then each
    # reconnection is checked with a ping, which times out too.
    wait_until(lambda: not client.connected, what="the dead connection to be dropped")
    wait_until(lambda: silent_server.accepted >= 3, what="reconnection attempts")
    assert client.reconnect_count == 0
    client.disconnect()


def test_auth_token(auth_server: RingcastServer) -> None:
    got = Collector()
    client = TCPClient(auth_server.host, auth_server.port, auth_token="s3cret")
    client.set_message_callback(got)
    assert client.connect()
    assert client.echo("authenticated")
    assert got.wait_type("echo_response")[0]["content"] == "authenticated"
    assert not got.of_type("auth_ok")  # the handshake's answer is the client's own
    client.disconnect()
    bad = TCPClient(auth_server.host, auth_server.port, auth_token="wrong")
    assert bad.connect() is False


def test_invalid_heartbeat_settings() -> None:
    with pytest.raises(ValueError):
        TCPClient(heartbeat_interval=0)
    with pytest.raises(ValueError):
        TCPClient(heartbeat_max_missed=0)


def test_tls_parameters(tmp_path: Path) -> None:
    # No TLS in the ringcast server yet: a fake TLS server stands in.
    made = self_signed_cert(tmp_path)
    if made is None:
        pytest.skip("test_tls_parameters: no openssl command to make a test certificate")
    cert, key = made
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    fake = ScriptedServer(lambda msg: (0, [pong_for(msg)]), ssl_context=server_ctx)
    got = Collector()
    client = TCPClient(
        "127.0.0.1",
        fake.port,
        ssl_context=ssl.create_default_context(cafile=str(cert)),
        server_hostname="localhost",
    )
    client.set_message_callback(got)
    try:
        assert client.connect()
        assert isinstance(client.socket, ssl.SSLSocket)
        assert client.echo("over tls")
        assert got.wait_type("echo_response")[0]["content"] == "over tls"
    finally:
        client.disconnect()
        fake.close()


def test_a_farewell_frame_reaches_the_callback_then_it_reconnects() -> None:
    farewell = {"type": "error", "code": "shutting_down", "message": "stopping"}

    def answer(msg: Dict[str, Any]) -> Any:
        if msg.get("content") == "bye":
            return 0, [farewell, CLOSE]
        return 0, [pong_for(msg)]

    fake = ScriptedServer(answer)
    got = Collector()
    client = TCPClient("127.0.0.1", fake.port, reconnect_policy=FAST)
    client.set_message_callback(got)
    try:
        assert client.connect()
        assert client.echo("bye")
        assert got.wait_type("error")[0] == farewell
        wait_until(lambda: client.reconnect_count == 1, what="the reconnection")
        assert client.echo("again")
        assert got.wait_type("echo_response")[0]["content"] == "again"
    finally:
        client.disconnect()
        fake.close()
