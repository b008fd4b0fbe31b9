"""ringcast.aio.Client: the asyncio client against the real server.

Each test runs its coroutine with ``asyncio.run`` (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any, Dict, List

import pytest
from helpers import CLOSE, RingcastServer, ScriptedServer, SilentServer, pong_for, self_signed_cert

from ringcast import ConnectionClosed, ServerError, Timeout, aio


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_every_method(server: RingcastServer) -> None:
    async def main() -> None:
        async with aio.Client(server.host, server.port) as c:
            assert c.connected
            rtt = await c.ping()
            assert isinstance(rtt, float) and 0 < rtt < 5
            assert await c.echo({"a": [1, 2]}) == {"a": [1, 2]}
            assert await c.echo("é☃") == "é☃"
            assert await c.broadcast("alone") == 0
            stats = await c.get_stats()
            assert stats["connected_clients"] == 1 and "type" not in stats
            assert stats["messages_by_type"]["echo"] == 2
            ack = await c.send_text("plain")
            assert ack["type"] == "message_ack"
            with pytest.raises(ServerError) as info:
                await c.send_custom("custom_type", {"data": "value"})
            assert info.value.code == "unknown_type"
            assert info.value.request_type == "custom_type"
            frame = await c.request("echo", check=False)
            assert frame["code"] == "invalid_field"
            assert (await c.request("auth", {"token": "t"}))["type"] == "auth_ok"
        assert not c.connected

    run(main())


def test_pipelining_many_concurrent_requests_on_one_connection(server: RingcastServer) -> None:
    async def main() -> None:
        async with aio.Client(server.host, server.port) as c:
            n = 2000
            results = await asyncio.gather(*(c.echo({"i": i}) for i in range(n)))
            assert results == [{"i": i} for i in range(n)]
            mixed = await asyncio.gather(c.ping(), c.get_stats(), c.echo("x"), c.broadcast("b"))
            assert mixed[2] == "x" and mixed[3] == 0
            stats = await c.get_stats()
            assert stats["messages_by_type"]["echo"] == n + 1
            assert stats["total_connections"] >= 1

    run(main())


def test_broadcasts_reach_callbacks_and_the_queue(server: RingcastServer) -> None:
    async def main() -> None:
        plain: List[Dict[str, Any]] = []
        from_coroutine: List[Dict[str, Any]] = []
        arrived = asyncio.Event()

        async def async_cb(msg: Dict[str, Any]) -> None:
            await asyncio.sleep(0)
            from_coroutine.append(msg)
            arrived.set()

        async with contextlib.AsyncExitStack() as stack:
            sender = await stack.enter_async_context(aio.Client(server.host, server.port))
            a = await stack.enter_async_context(
                aio.Client(server.host, server.port, message_callback=plain.append)
            )
            b = await stack.enter_async_context(aio.Client(server.host, server.port))
            b.set_message_callback(async_cb)
            queued = await stack.enter_async_context(aio.Client(server.host, server.port))
            # Round trips first: a connection counts in `recipients` once its
            # shard has taken it in.
            await asyncio.gather(a.ping(), b.ping(), queued.ping())
            assert await sender.broadcast("hi all") == 3
            await asyncio.wait_for(arrived.wait(), 10)
            m = await queued.next_message(timeout=10)
            assert m["type"] == "broadcast_message" and m["content"] == "hi all"
            await a.ping()  # the broadcast came before this answer on a's connection
            assert [x["content"] for x in plain] == ["hi all"]
            assert from_coroutine[0]["content"] == "hi all"
            with pytest.raises(Timeout):
                await queued.next_message(timeout=0.01)
            assert b.connected

    run(main())


def test_timeout_and_late_answers() -> None:
    def answer(msg: Dict[str, Any]) -> Any:
        return (0.3 if msg.get("content") == "slow" else 0), [pong_for(msg)]

    fake = ScriptedServer(answer)

    async def main() -> None:
        async with aio.Client("127.0.0.1", fake.port, timeout=0.1) as c:
            with pytest.raises(Timeout):
                await c.echo("slow")
            assert await c.echo("fast", timeout=5) == "fast"
            assert c.connected

    try:
        run(main())
    finally:
        fake.close()


def test_timeout_on_a_silent_server(silent_server: SilentServer) -> None:
    async def main() -> None:
        async with aio.Client("127.0.0.1", silent_server.port, timeout=0.1) as c:
            with pytest.raises(TimeoutError):
                await c.ping()

    run(main())


def test_connection_closed_when_the_server_stops(server: RingcastServer) -> None:
    async def main() -> None:
        c = await aio.connect(server.host, server.port)
        assert await c.echo("registered") == "registered"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, server.stop)
        deadline = loop.time() + 10
        while c.connected and loop.time() < deadline:  # until the client has seen the close
            await asyncio.sleep(0.005)
        with pytest.raises(ConnectionClosed) as info:
            await c.ping()
        # shutting_down when the server managed to send it (see test_client.py).
        assert info.value.code in ("shutting_down", None)
        await c.close()
        await c.close()

    run(main())


def test_connection_closed_carries_the_servers_reason() -> None:
    farewell = {"type": "error", "code": "shutting_down", "message": "stopping"}
    fake = ScriptedServer(lambda msg: (0, [farewell, CLOSE]))
    seen: List[Dict[str, Any]] = []

    async def main() -> None:
        async with aio.Client("127.0.0.1", fake.port, message_callback=seen.append) as c:
            with pytest.raises(ConnectionClosed) as info:
                await c.echo("anything")
            assert (info.value.code, info.value.message) == ("shutting_down", "stopping")
            assert seen == [farewell]

    try:
        run(main())
    finally:
        fake.close()


def test_requests_in_flight_fail_when_the_connection_dies(silent_server: SilentServer) -> None:
    async def main() -> None:
        async with aio.Client("127.0.0.1", silent_server.port, timeout=10) as c:
            waiting = [asyncio.ensure_future(c.echo(i)) for i in range(10)]
            await asyncio.sleep(0)
            while not silent_server.conns:
                await asyncio.sleep(0.01)
            silent_server.conns[0].close()
            results = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(r, ConnectionClosed) for r in results)

    run(main())


def test_not_connected_and_connect_errors(closed_port: int, server: RingcastServer) -> None:
    async def main() -> None:
        c = aio.Client(server.host, server.port)
        with pytest.raises(ConnectionClosed, match="connect"):
            await c.ping()
        with pytest.raises(OSError):
            await aio.connect("127.0.0.1", closed_port)

    run(main())


def test_auth_token(auth_server: RingcastServer) -> None:
    async def main() -> None:
        async with aio.Client(auth_server.host, auth_server.port, auth_token="s3cret") as c:
            assert await c.echo("in") == "in"
        with pytest.raises(ServerError) as info:
            await aio.connect(auth_server.host, auth_server.port, auth_token="wrong")
        assert info.value.code == "unauthorized"

    run(main())


def test_tls(tmp_path: Path) -> None:
    made = self_signed_cert(tmp_path)
    if made is None:
        pytest.skip("test_tls: no openssl command to make a test certificate")
    cert, key = made
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    fake = ScriptedServer(lambda msg: (0, [pong_for(msg)]), ssl_context=server_ctx)

    async def main() -> None:
        async with aio.Client(
            "127.0.0.1", fake.port, ssl_context=client_ctx, server_hostname="localhost"
        ) as c:
            assert c._transport is not None
            assert c._transport.get_extra_info("ssl_object") is not None
            results = await asyncio.gather(*(c.echo(i) for i in range(50)))
            assert results == list(range(50))

    try:
        run(main())
    finally:
        fake.close()


def test_connect_again_after_a_restart(server: RingcastServer) -> None:
    # The asyncio client does not reconnect by itself; connect() again does.
    async def main() -> None:
        c = await aio.connect(server.host, server.port)
        assert await c.echo(1) == 1
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, server.restart)
        deadline = loop.time() + 10
        while c.connected and loop.time() < deadline:
            await asyncio.sleep(0.005)
        assert not c.connected
        await c.connect()
        assert c.connected
        assert await c.echo(2) == 2
        await c.close()
        await c.connect()  # after close() too
        assert await c.ping() > 0
        await c.close()

    run(main())
