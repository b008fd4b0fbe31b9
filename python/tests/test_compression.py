"""hello and negotiated per-frame compression (issue #16).

Three layers:

- the codecs and the framing alone (no server);
- the clients against a server: ``cserver`` runs each test twice, against
  a fake server written from the wire spec (tests/helpers.py) and against
  the real binary, which is skipped when it predates hello;
- the real server's side of the spec from hand-made raw sockets: zip
  bombs, garbage, empty frames, the top bit before hello, stats.

zstd tests are skipped when the ``zstandard`` module is not installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tracemalloc
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from helpers import (
    CLOSE,
    DEADLINE,
    CompressingFakeServer,
    RingcastServer,
    ScriptedServer,
    pong_for,
    wait_until,
    zstandard_module,
)

import ringcast
from ringcast import aio, compression, perf
from ringcast import protocol as p
from ringcast.compression import COMPRESSED_FLAG, get_codec, resolve_offer
from ringcast.errors import CodecUnavailable, CompressionError, FrameTooLarge, ProtocolError

zstd = zstandard_module()
needs_zstd = pytest.mark.skipif(zstd is None, reason="zstandard is not installed")

#: Every codec, zstd skipped without its module.
CODECS = [pytest.param("zstd", marks=needs_zstd), "deflate"]

#: 16 KiB of telemetry-like JSON: what compression is for.
BIG = perf.telemetry(16 * 1024)
BIG_LEN = len(json.dumps(BIG, separators=(",", ":")))


def _compress(codec: str, data: bytes, content_size: bool = True) -> bytes:
    """A codec stream made here, not by ringcast.compression."""
    if codec == "deflate":
        return zlib.compress(data)
    assert zstd is not None
    if content_size:
        return bytes(zstd.ZstdCompressor().compress(data))
    cobj = zstd.ZstdCompressor().compressobj()
    return bytes(cobj.compress(data) + cobj.flush())


def _decompress(codec: str, data: bytes) -> bytes:
    if codec == "deflate":
        return zlib.decompress(data)
    assert zstd is not None
    return bytes(zstd.ZstdDecompressor().decompress(data, max_output_size=64 << 20))


# ------------------------------------------------------------ codecs alone


@pytest.mark.parametrize("codec", CODECS)
def test_codec_round_trip_and_foreign_streams(codec: str) -> None:
    c = get_codec(codec)
    data = json.dumps(BIG).encode()
    packed = c.compress(data)
    assert len(packed) < len(data) // 3
    assert c.decompress(packed, len(data)) == data
    # Streams made elsewhere (zstd: with and without the content size).
    assert c.decompress(_compress(codec, data), 1 << 20) == data
    if codec == "zstd":
        nosize = _compress(codec, data, content_size=False)
        # Far under the limit (one call: the block headers bound the output)
        # and right at it (sliced input).
        assert c.decompress(nosize, 1 << 20) == data
        assert c.decompress(nosize, len(data)) == data
        with pytest.raises(FrameTooLarge):
            c.decompress(nosize, len(data) - 1)
    # Exactly at the limit is fine; one byte less is not.
    assert c.decompress(packed, len(data)) == data
    with pytest.raises(FrameTooLarge):
        c.decompress(packed, len(data) - 1)


# zlib streams carry no size: deflate has only the one case.
@pytest.mark.parametrize(
    "codec,content_size",
    [
        pytest.param("zstd", True, marks=needs_zstd),
        pytest.param("zstd", False, marks=needs_zstd),
        ("deflate", True),
    ],
)
def test_bomb_stops_at_the_limit_without_inflating(codec: str, content_size: bool) -> None:
    bomb = _compress(codec, bytes(64 << 20), content_size)
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge):
            get_codec(codec).decompress(bomb, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 64 MiB never exist: output stops about the 1 MiB limit.
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("codec", CODECS)
def test_bad_streams_are_compression_errors(codec: str) -> None:
    c = get_codec(codec)
    good = _compress(codec, json.dumps(BIG).encode())
    variants = {
        "garbage": b"definitely not a compressed stream",
        "truncated": good[:-7],
        "trailing bytes": good + b"xx",
        "two streams": good + good,
    }
    if codec == "zstd":
        nosize = _compress(codec, json.dumps(BIG).encode(), content_size=False)
        variants.update(
            {
                "truncated, no size": nosize[:-7],
                "trailing, no size": nosize + b"xx",
                "two streams, no size": nosize + nosize,
            }
        )
    for what, data in variants.items():
        with pytest.raises(CompressionError):
            c.decompress(data, 1 << 20)
            pytest.fail(what)


def test_compress_frame_threshold_and_saving() -> None:
    c = get_codec("deflate")
    small = b"x" * 1024
    frame = compression.compress_frame(small, c, 1024)
    assert frame == struct.pack(">I", 1024) + small  # not above the threshold: plain
    big = b"x" * 1025
    frame = compression.compress_frame(big, c, 1024)
    (header,) = struct.unpack(">I", frame[:4])
    assert header & COMPRESSED_FLAG and header & 0x7FFFFFFF == len(frame) - 4
    assert zlib.decompress(frame[4:]) == big
    noise = os.urandom(4096)  # does not compress: sent plain
    assert compression.compress_frame(noise, c, 1024) == struct.pack(">I", 4096) + noise


def test_encoder_counts_and_leaves_small_frames_plain() -> None:
    enc = p.FrameEncoder(get_codec("deflate"), 1024)
    assert enc({"type": "ping"}) == p.encode({"type": "ping"})
    frame = enc({"type": "echo", "content": BIG})
    assert frame[0] & 0x80
    assert enc.frames_compressed == 1
    assert enc.bytes_compressed_wire == len(frame) - 4 < enc.bytes_compressed_plain
    assert p.FrameEncoder().encode is p.encode  # without a codec: nothing added


@pytest.mark.parametrize("codec", CODECS)
def test_decoder_inflates_compressed_frames_split_anywhere(codec: str) -> None:
    msgs = [{"type": "echo_response", "content": BIG, "id": 1}, {"type": "pong", "id": 2}] * 2
    stream = b""
    for m in msgs:
        payload = json.dumps(m).encode()
        if len(payload) > 1024:
            packed = _compress(codec, payload, content_size=False)
            stream += struct.pack(">I", COMPRESSED_FLAG | len(packed)) + packed
        else:
            stream += struct.pack(">I", len(payload)) + payload
    for step in (1, 3, 1000, len(stream)):
        d = p.FrameDecoder(codec=get_codec(codec))
        out: List[Dict[str, Any]] = []
        for i in range(0, len(stream), step):
            out += d.feed(stream[i : i + step])
        assert out == msgs
        assert d.frames_compressed == 2 and d.bytes_inflated > 10 * 1024
        assert d.bytes_received == len(stream)


def test_decoder_takes_the_codec_at_hello_ok_in_the_same_chunk() -> None:
    payload = json.dumps({"type": "broadcast_message", "content": BIG}).encode()
    packed = zlib.compress(payload)
    chunk = (
        p.encode({"type": "hello_ok", "compression": "deflate", "id": 1})
        + struct.pack(">I", COMPRESSED_FLAG | len(packed))
        + packed
    )
    d = p.FrameDecoder()
    d.expect_hello({"deflate": get_codec("deflate")})
    out = d.feed(chunk)
    assert [m["type"] for m in out] == ["hello_ok", "broadcast_message"]
    assert out[1]["content"] == BIG and d.codec is get_codec("deflate")


def test_decoder_without_a_codec_never_inflates() -> None:
    packed = zlib.compress(json.dumps({"type": "pong"}).encode())
    d = p.FrameDecoder()
    with pytest.raises(FrameTooLarge, match="over the"):
        d.feed(struct.pack(">I", COMPRESSED_FLAG | len(packed)) + packed)
    # hello_ok naming no codec leaves it so.
    d = p.FrameDecoder()
    d.expect_hello({"deflate": get_codec("deflate")})
    d.feed(p.encode({"type": "hello_ok", "compression": None}))
    with pytest.raises(FrameTooLarge):
        d.feed(struct.pack(">I", COMPRESSED_FLAG | len(packed)) + packed)


def test_decoder_rejects_empty_and_oversized_compressed_frames() -> None:
    d = p.FrameDecoder(codec=get_codec("deflate"))
    with pytest.raises(ProtocolError, match="empty"):
        d.feed(struct.pack(">I", COMPRESSED_FLAG))
    d = p.FrameDecoder(max_frame_bytes=1000, codec=get_codec("deflate"))
    with pytest.raises(FrameTooLarge):
        d.feed(struct.pack(">I", COMPRESSED_FLAG | 1001))
    bomb = zlib.compress(bytes(10_000))
    d = p.FrameDecoder(max_frame_bytes=1000, codec=get_codec("deflate"))
    with pytest.raises(FrameTooLarge):
        d.feed(struct.pack(">I", COMPRESSED_FLAG | len(bomb)) + bomb)


def test_resolve_offer() -> None:
    assert resolve_offer(None) is None
    assert resolve_offer("deflate") == ("deflate",)
    assert resolve_offer(["deflate", "deflate"]) == ("deflate",)
    with pytest.raises(ValueError, match="lz4"):
        resolve_offer("lz4")
    with pytest.raises(ValueError):
        resolve_offer(["deflate", "lz4"])
    if zstd is not None:
        assert resolve_offer(["zstd", "deflate"]) == ("zstd", "deflate")


def test_zstd_without_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "_zstandard", lambda: None)
    monkeypatch.setattr(compression, "_codecs", {})
    with pytest.raises(CodecUnavailable, match="pip install zstandard") as e:
        resolve_offer("zstd")
    assert isinstance(e.value, ImportError) and isinstance(e.value, ringcast.RingcastError)
    # In a list, zstd is dropped silently.
    assert resolve_offer(["zstd", "deflate"]) == ("deflate",)
    assert compression.available_codecs() == ("deflate",)
    with pytest.raises(CodecUnavailable):
        ringcast.Client("127.0.0.1", 1, compression="zstd")
    with pytest.raises(CodecUnavailable):
        ringcast.TCPClient("127.0.0.1", 1, compression="zstd")
    with pytest.raises(CodecUnavailable):
        aio.Client("127.0.0.1", 1, compression="zstd")


# ------------------------------------------- raw sockets (spec, not the client)


class Raw:
    """A hand-made connection: frames built and read here, with zlib and
    zstandard directly, so the server is checked apart from the client."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=DEADLINE)
        self.codec: Optional[str] = None
        self.buf = b""
        self.headers: List[int] = []

    def send(self, msg: Dict[str, Any], compress: bool = False) -> None:
        payload = json.dumps(msg, separators=(",", ":")).encode()
        if compress:
            assert self.codec is not None
            packed = _compress(self.codec, payload)
            self.sock.sendall(struct.pack(">I", COMPRESSED_FLAG | len(packed)) + packed)
        else:
            self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return False
            if not data:
                return False
            self.buf += data
        return True

    def recv(self) -> Optional[Dict[str, Any]]:
        """The next message, inflated when its header's top bit is set; None at EOF."""
        if not self._fill(4):
            return None
        (header,) = struct.unpack(">I", self.buf[:4])
        self.headers.append(header)
        n = header & 0x7FFFFFFF
        if not self._fill(4 + n):
            return None
        body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        if header & COMPRESSED_FLAG:
            assert self.codec is not None, "compressed frame on a connection without a codec"
            body = _decompress(self.codec, body)
        value = json.loads(body)
        assert isinstance(value, dict)
        return value

    def recv_type(self, kind: str) -> Dict[str, Any]:
        while True:
            msg = self.recv()
            assert msg is not None, f"EOF before {kind}"
            if msg.get("type") == kind:
                return msg

    def hello(self, codecs: Any, **extra: Any) -> Dict[str, Any]:
        self.send({"type": "hello", "compression": codecs, "id": 1, **extra})
        reply = self.recv()
        assert reply is not None
        if reply.get("type") == "hello_ok":
            self.codec = reply.get("compression")
        return reply

    def expect_error_and_close(self, code: str) -> None:
        msg = self.recv()
        assert msg is not None and msg.get("type") == "error", msg
        assert msg.get("code") == code, msg
        self.sock.settimeout(DEADLINE)
        assert self.recv() is None  # the server closed the connection

    def close(self) -> None:
        self.sock.close()


def _server_knows_hello(srv: RingcastServer) -> bool:
    raw = Raw(srv.host, srv.port)
    try:
        reply = raw.hello([])
    finally:
        raw.close()
    return reply.get("type") == "hello_ok"


@pytest.fixture
def hserver(server: RingcastServer) -> RingcastServer:
    """The real server, skipped when the binary predates hello."""
    if not _server_knows_hello(server):
        pytest.skip("this ringcast binary predates hello (issue #16)")
    return server


@pytest.fixture(params=["fake", "real"])
def cserver(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A server speaking hello: the fake from the spec, then the real binary."""
    if request.param == "fake":
        fake = CompressingFakeServer()
        yield fake
        fake.close()
    else:
        yield request.getfixturevalue("hserver")


def test_hello_ok_fields(hserver: RingcastServer) -> None:
    raw = Raw(hserver.host, hserver.port)
    reply = raw.hello(["lz4", "deflate"], client="ringcast-py/test")
    assert reply["type"] == "hello_ok" and reply["id"] == 1
    assert reply["compression"] == "deflate"  # unknown names are ignored
    assert str(reply["server"]).startswith("ringcast/")
    assert reply["protocol"] == 1
    assert reply["max_frame_bytes"] == 1 << 20
    assert reply["compression_threshold"] == 1024
    assert {"broadcast", "channels", "compression"} <= set(reply["features"])
    assert "auth" not in reply["features"] and "tls" not in reply["features"]
    raw.close()


def test_hello_refusal_repeat_and_bad_field(hserver: RingcastServer) -> None:
    raw = Raw(hserver.host, hserver.port)
    assert raw.hello(["lz4"])["compression"] is None
    # A second hello: error, connection kept, codec unchanged.
    raw.send({"type": "hello", "compression": ["deflate"], "id": 2})
    err = raw.recv()
    assert err is not None and err["type"] == "error" and err["code"] == "hello_repeated"
    assert err.get("id") == 2
    raw.send({"type": "echo", "content": BIG, "id": 3})
    answer = raw.recv_type("echo_response")
    assert answer["content"] == BIG and not raw.headers[-1] & COMPRESSED_FLAG
    raw.close()
    raw = Raw(hserver.host, hserver.port)
    raw.send({"type": "hello", "compression": "deflate", "id": 1})
    err = raw.recv()
    assert err is not None and err["code"] == "invalid_field" and err.get("id") == 1
    raw.send({"type": "ping", "id": 2})
    assert raw.recv_type("pong")["id"] == 2  # kept
    raw.close()


def test_hello_on_an_auth_server(ringcast_bin: Any, tmp_path: Any) -> None:
    from helpers import free_port

    srv = RingcastServer(ringcast_bin, free_port(), tmp_path / "s.log", ["--auth-token", "tok"])
    srv.start()
    try:
        raw = Raw(srv.host, srv.port)
        reply = raw.hello(["deflate"])
        if reply.get("type") != "hello_ok":
            pytest.skip("this ringcast binary predates hello (issue #16)")
        assert "auth" in reply["features"]
        raw.send({"type": "auth", "token": "tok", "id": 2})
        assert raw.recv_type("auth_ok")["id"] == 2
        raw.send({"type": "echo", "content": BIG, "id": 3}, compress=True)
        assert raw.recv_type("echo_response")["content"] == BIG
        assert raw.headers[-1] & COMPRESSED_FLAG
        raw.close()
        with ringcast.Client(srv.host, srv.port, auth_token="tok", compression="deflate") as c:
            assert c.compression == "deflate" and c.echo(BIG) == BIG
    finally:
        srv.stop()


@pytest.mark.parametrize("codec", CODECS)
def test_raw_compressed_echo_both_ways(cserver: Any, codec: str) -> None:
    raw = Raw(cserver.host, cserver.port)
    assert raw.hello([codec])["compression"] == codec
    raw.send({"type": "echo", "content": BIG, "id": 2}, compress=True)
    assert raw.recv_type("echo_response")["content"] == BIG
    header = raw.headers[-1]
    assert header & COMPRESSED_FLAG and (header & 0x7FFFFFFF) < BIG_LEN // 3
    # Small answers stay plain, and plain requests are still fine.
    raw.send({"type": "ping", "id": 3})
    assert raw.recv_type("pong")["id"] == 3 and not raw.headers[-1] & COMPRESSED_FLAG
    raw.close()


@pytest.mark.parametrize("codec", CODECS)
def test_zip_bomb_gets_frame_too_large_and_a_close(cserver: Any, codec: str) -> None:
    bomb = _compress(codec, b'{"type":"echo","content":"' + b"a" * (64 << 20) + b'"}')
    assert len(bomb) < 1 << 20  # under the compressed limit: the inflating must stop it
    raw = Raw(cserver.host, cserver.port)
    raw.hello([codec])
    raw.send_raw(struct.pack(">I", COMPRESSED_FLAG | len(bomb)) + bomb)
    raw.expect_error_and_close("frame_too_large")
    raw.close()
    with ringcast.Client(cserver.host, cserver.port) as c:  # the server is fine
        c.ping()


# Only zstd frames may omit their size (zlib streams never carry one).
@pytest.mark.parametrize("codec", [pytest.param("zstd", marks=needs_zstd)])
def test_zip_bomb_without_content_size(hserver: RingcastServer, codec: str) -> None:
    bomb = _compress(codec, bytes(64 << 20), content_size=False)
    raw = Raw(hserver.host, hserver.port)
    raw.hello([codec])
    raw.send_raw(struct.pack(">I", COMPRESSED_FLAG | len(bomb)) + bomb)
    raw.expect_error_and_close("frame_too_large")
    raw.close()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("what", ["garbage", "truncated", "trailing"])
def test_bad_compressed_payload_gets_compression_error(cserver: Any, codec: str, what: str) -> None:
    good = _compress(codec, json.dumps({"type": "echo", "content": BIG}).encode())
    data = {"garbage": b"\x00garbage, not a codec stream", "truncated": good[:-9]}.get(
        what, good + b"\x01\x02"
    )
    raw = Raw(cserver.host, cserver.port)
    raw.hello([codec])
    raw.send_raw(struct.pack(">I", COMPRESSED_FLAG | len(data)) + data)
    raw.expect_error_and_close("compression_error")
    raw.close()


def test_empty_compressed_frame_gets_empty_frame(cserver: Any) -> None:
    raw = Raw(cserver.host, cserver.port)
    raw.hello(["deflate"])
    raw.send_raw(struct.pack(">I", COMPRESSED_FLAG))
    raw.expect_error_and_close("empty_frame")
    raw.close()


def test_top_bit_before_hello_is_frame_too_large(cserver: Any) -> None:
    packed = zlib.compress(json.dumps({"type": "echo", "content": BIG}).encode())
    raw = Raw(cserver.host, cserver.port)
    # The header alone: the server decides from it (and a close with unread
    # bytes would be a reset, which may drop the error frame).
    raw.send_raw(struct.pack(">I", COMPRESSED_FLAG | len(packed)))
    raw.expect_error_and_close("frame_too_large")
    raw.close()


def test_plain_connection_never_sees_the_top_bit(cserver: Any) -> None:
    """A connection without hello gets every frame plain, even while
    compressed clients make the server compress the same broadcasts."""
    raw = Raw(cserver.host, cserver.port)
    with ringcast.Client(cserver.host, cserver.port, compression="deflate") as c:
        raw.send({"type": "ping", "id": 1})
        raw.recv_type("pong")  # connected before the broadcast
        for _ in range(3):
            c.broadcast(BIG)
        raw.send({"type": "echo", "content": BIG, "id": 2})
        got = [raw.recv_type("broadcast_message") for _ in range(3)]
        assert all(m["content"] == BIG for m in got)
        assert raw.recv_type("echo_response")["content"] == BIG
    assert raw.headers and not any(h & COMPRESSED_FLAG for h in raw.headers)
    assert max(raw.headers) > BIG_LEN  # the big frames came whole
    raw.close()


# ---------------------------------------------------------------- clients


def _stats(client: Any) -> Dict[str, Any]:
    s = client.compression_stats()
    assert isinstance(s, dict)
    return s


@pytest.mark.parametrize("codec", CODECS)
def test_client_round_trip(cserver: Any, codec: str) -> None:
    with ringcast.Client(cserver.host, cserver.port, compression=codec) as c:
        assert c.compression == codec
        info = c.server_info
        assert info is not None and info["compression"] == codec
        assert "compression" in info["features"]
        assert c.echo(BIG) == BIG
        s = _stats(c)
        assert s["codec"] == codec
        assert s["frames_out"] == 1 and s["bytes_out_wire"] < s["bytes_out_plain"] // 3
        assert s["frames_in"] == 1 and s["bytes_in_wire"] < s["bytes_in_plain"] // 3
        assert s["bytes_sent"] < BIG_LEN // 2 and s["bytes_received"] < BIG_LEN // 2
        # Small frames both ways stay plain.
        c.ping()
        assert c.echo("small") == "small"
        s2 = _stats(c)
        assert (s2["frames_in"], s2["frames_out"]) == (1, 1)
        if isinstance(cserver, RingcastServer):
            comp = c.get_stats()["compression"]
            assert comp["connections"].get(codec) == 1
            assert comp["frames_in"] >= 1 and comp["bytes_in_plain"] > comp["bytes_in_wire"]
            assert comp["frames_out"] >= 1 and comp["bytes_out_plain"] > comp["bytes_out_wire"]
            assert comp["compressions"] >= 1
            assert comp["ratio_in"] > 3 and comp["ratio_out"] > 3


@pytest.mark.parametrize("codec", CODECS)
def test_aio_round_trip(cserver: Any, codec: str) -> None:
    async def main() -> None:
        async with aio.Client(cserver.host, cserver.port, compression=[codec]) as c:
            assert c.compression == codec
            assert c.server_info is not None
            answers = await asyncio.gather(*(c.echo(BIG) for _ in range(20)))
            assert all(a == BIG for a in answers)
            assert await c.echo("tiny") == "tiny"
            s = _stats(c)
            assert s["frames_out"] == 20 and s["frames_in"] == 20
            assert s["bytes_in_wire"] < s["bytes_in_plain"] // 3

    asyncio.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_tcpclient_round_trip(cserver: Any, codec: str) -> None:
    from helpers import Collector

    got = Collector()
    client = ringcast.TCPClient(cserver.host, cserver.port, compression=codec)
    client.set_message_callback(got)
    assert client.connect()
    try:
        assert client.compression == codec
        assert client.echo(BIG) and client.ping()
        echo = got.wait_type("echo_response")[0]
        got.wait_type("pong")
        assert echo["content"] == BIG
        assert not got.of_type("hello_ok")  # the handshake's answer is the client's own
        s = _stats(client)
        assert s["frames_in"] == 1 and s["frames_out"] == 1
    finally:
        client.disconnect()


def test_list_offer_takes_the_servers_choice() -> None:
    fake = CompressingFakeServer(codecs=("deflate",))
    try:
        with ringcast.Client(fake.host, fake.port, compression=["zstd", "deflate"]) as c:
            assert c.compression == "deflate"
            assert c.echo(BIG) == BIG
        hello = fake.received[0][2]
        assert hello["type"] == "hello" and str(hello["client"]).startswith("ringcast-py/")
        assert tuple(hello["compression"]) == compression.available_codecs()
    finally:
        fake.close()


def test_no_compression_sends_no_hello(cserver: Any) -> None:
    with ringcast.Client(cserver.host, cserver.port) as c:
        assert c.compression is None and c.server_info is None
        assert c.echo(BIG) == BIG
        s = _stats(c)
        assert s["frames_in"] == s["frames_out"] == 0
        assert s["bytes_received"] > BIG_LEN
    if isinstance(cserver, CompressingFakeServer):
        assert [m["type"] for _, _, m in cserver.received] == ["echo"]


@pytest.mark.parametrize("make", ["client", "aio", "tcpclient"])
def test_server_refuses_compression(make: str) -> None:
    """hello_ok with compression null: the connection goes on uncompressed."""
    fake = CompressingFakeServer(codecs=())
    try:
        codec, info, answer, headers = _use(make, fake.port)
        assert codec is None and info is not None and info["compression"] is None
        assert answer == BIG
        assert not any(h & COMPRESSED_FLAG for _, h, _ in fake.sent)
        assert not any(compressed for _, compressed, _ in fake.received)
    finally:
        fake.close()


def _real_server_with(ringcast_bin: Any, tmp_path: Any, *args: str) -> RingcastServer:
    """A real server started with ``args``; skipped when the binary does not
    know them (a binary from before compression)."""
    from helpers import free_port

    usage = subprocess.run(
        [str(ringcast_bin), "server", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for flag in args:
        if flag.startswith("--") and flag not in usage:
            pytest.skip(f"this ringcast binary has no {flag}")
    srv = RingcastServer(ringcast_bin, free_port(), tmp_path / "server.log", list(args))
    srv.start()
    return srv


@pytest.mark.parametrize("make", ["client", "aio", "tcpclient"])
def test_real_server_with_no_compression(make: str, ringcast_bin: Any, tmp_path: Any) -> None:
    srv = _real_server_with(ringcast_bin, tmp_path, "--no-compression")
    try:
        codec, info, answer, stats = _use(make, srv.port)
        assert codec is None and answer == BIG
        assert info is not None and info["compression"] is None
        assert str(info["server"]).startswith("ringcast/")
        assert stats["frames_in"] == stats["frames_out"] == 0
        assert stats["bytes_received"] > BIG_LEN  # the echo came plain
    finally:
        srv.stop()


def test_client_follows_the_servers_threshold(ringcast_bin: Any, tmp_path: Any) -> None:
    srv = _real_server_with(ringcast_bin, tmp_path, "--compression-threshold-bytes", "200")
    try:
        with ringcast.Client(srv.host, srv.port, compression="deflate") as c:
            assert c.server_info is not None
            assert c.server_info["compression_threshold"] == 200
            content = "abc " * 100  # 400 bytes: over 200, under the default 1024
            assert c.echo(content) == content
            s = _stats(c)
            assert s["frames_out"] == 1 and s["frames_in"] == 1
    finally:
        srv.stop()


def _use(make: str, port: int, **kw: Any) -> Tuple[Any, Any, Any, Any]:
    """Connects with compression=deflate, echoes BIG; returns (compression,
    server_info, echoed content, compression_stats)."""
    if make == "client":
        with ringcast.Client("127.0.0.1", port, compression="deflate", **kw) as c:
            return c.compression, c.server_info, c.echo(BIG), _stats(c)
    if make == "aio":

        async def main() -> Tuple[Any, Any, Any, Any]:
            async with aio.Client("127.0.0.1", port, compression="deflate", **kw) as c:
                return c.compression, c.server_info, await c.echo(BIG), _stats(c)

        return asyncio.run(main())
    from helpers import Collector

    got = Collector()
    t = ringcast.TCPClient("127.0.0.1", port, compression="deflate", **kw)
    t.set_message_callback(got)
    assert t.connect()
    try:
        t.echo(BIG)
        answer = got.wait_type("echo_response")[0]["content"]
        return t.compression, t.server_info, answer, _stats(t)
    finally:
        t.disconnect()


@pytest.mark.parametrize("make", ["client", "aio", "tcpclient"])
def test_old_server_answers_hello_with_unknown_type(make: str) -> None:
    """A server from before hello: unknown_type, then plain frames as ever."""
    old = ScriptedServer(lambda m: (0, [pong_for(m)]))
    try:
        codec, info, answer, _ = _use(make, old.port)
        assert codec is None and info is None and answer == BIG
        assert [m["type"] for m in old.received] == ["hello", "echo"]
    finally:
        old.close()


def _old_auth_answer(m: Dict[str, Any]) -> Tuple[float, List[Dict[str, Any]]]:
    if m.get("type") == "hello":  # not auth: unauthorized, closed (PROTOCOL.md)
        return 0, [{"type": "error", "code": "unauthorized", "message": "auth first"}, CLOSE]
    if m.get("type") == "auth":
        return 0, [{"type": "auth_ok", "id": m["id"]}]
    return 0, [pong_for(m)]


@pytest.mark.parametrize("make", ["client", "aio", "tcpclient"])
def test_old_auth_server_closing_at_hello_is_reconnected_without_it(make: str) -> None:
    old = ScriptedServer(_old_auth_answer)
    try:
        codec, info, answer, _ = _use(make, old.port, auth_token="t")
        assert codec is None and info is None and answer == BIG
        assert [m["type"] for m in old.received] == ["hello", "auth", "echo"]
    finally:
        old.close()


@pytest.mark.parametrize("make", ["client", "aio", "tcpclient"])
def test_compressed_frame_right_behind_hello_ok(make: str) -> None:
    """The server may send a compressed frame in the same segment as
    hello_ok; the decoder switches codec at hello_ok itself."""
    push = {"type": "broadcast_message", "content": BIG, "from": "x"}
    fake = CompressingFakeServer(push_after_hello=push)
    try:
        codec, _, answer, stats = _use(make, fake.port)
        assert codec == "deflate" and answer == BIG
        assert stats["frames_in"] == 2  # the push and the echo
        assert fake.sent[1][1] & COMPRESSED_FLAG
    finally:
        fake.close()


def test_hello_ok_naming_a_codec_not_offered_is_a_protocol_error() -> None:
    def answer(m: Dict[str, Any]) -> Tuple[float, List[Dict[str, Any]]]:
        if m.get("type") == "hello":
            return 0, [{"type": "hello_ok", "compression": "lz4", "id": m["id"]}]
        return 0, [pong_for(m)]

    srv = ScriptedServer(answer)
    try:
        with pytest.raises(ProtocolError, match="lz4"):
            ringcast.Client("127.0.0.1", srv.port, compression="deflate")
    finally:
        srv.close()


def test_broadcast_to_mixed_plain_deflate_and_zstd(cserver: Any) -> None:
    """One broadcast reaches plain and compressed clients alike; the server
    compresses it once per codec."""
    host, port = cserver.host, cserver.port
    codecs = ["deflate"] + (["zstd"] if zstd is not None else [])
    plain = ringcast.Client(host, port)
    raw = Raw(host, port)
    receivers = [ringcast.Client(host, port, compression=c) for c in codecs]
    sender = ringcast.Client(host, port, compression=codecs[-1])
    try:
        raw.send({"type": "ping", "id": 1})
        raw.recv_type("pong")
        for c in (plain, *receivers):
            c.ping()  # each is in: see "recipients lags accepts" in README
        before = plain.get_stats()["compression"]
        in_before = [_stats(c)["frames_in"] for c in receivers]
        assert sender.broadcast(BIG) >= 2 + len(codecs)
        for c in (plain, *receivers):
            msg = c.next_message(timeout=DEADLINE)
            assert msg["type"] == "broadcast_message" and msg["content"] == BIG
        assert raw.recv_type("broadcast_message")["content"] == BIG
        assert not any(h & COMPRESSED_FLAG for h in raw.headers)
        assert _stats(plain)["frames_in"] == 0
        for c, n in zip(receivers, in_before):
            assert _stats(c)["frames_in"] == n + 1
        after = plain.get_stats()["compression"]  # plain: its own answer is not compressed
        assert after["compressions"] - before["compressions"] == len(codecs)
        assert after["frames_out"] - before["frames_out"] == len(codecs)
    finally:
        for c in (plain, sender, *receivers):
            c.close()
        raw.close()


def test_client_reconnects_and_negotiates_again(hserver: RingcastServer) -> None:
    with ringcast.Client(
        hserver.host,
        hserver.port,
        compression="deflate",
        reconnect=ringcast.ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
    ) as c:
        assert c.echo(BIG) == BIG
        hserver.restart()
        wait_until(lambda: c.reconnect_count == 1, what="reconnection")
        assert c.compression == "deflate"
        assert c.echo(BIG) == BIG
        assert _stats(c)["frames_in"] == 1  # counted on the new connection


# ------------------------------------------------------------- CLI, bench


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringcast", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("codec", CODECS)
def test_cli_demo_with_compress(cserver: Any, codec: str) -> None:
    r = _cli("demo", "--host", cserver.host, "--port", str(cserver.port), "--compress", codec)
    assert r.returncode == 0, r.stderr
    assert f"compression: {codec}; server " in r.stdout
    assert r.stdout.rstrip().endswith("demo complete")


def test_cli_interactive_and_performance_with_compress(cserver: Any) -> None:
    where = ["--host", cserver.host, "--port", str(cserver.port)]
    r = subprocess.run(
        [sys.executable, "-m", "ringcast", "interactive", *where, "--compress", "deflate"],
        input="/echo hi\n/exit\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert '"hi" (echoed by' in r.stdout
    r = _cli(
        "performance",
        *where,
        "--compress",
        "deflate",
        "--content",
        "telemetry",
        "--size",
        "4096",
        "--count",
        "200",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(row["compression"] == "deflate" for row in rows)
    assert all(0 < row["wire_bytes_per_msg"] < 4096 for row in rows)


def test_cli_compress_zstd_without_the_module_says_how_to_get_it(tmp_path: Any) -> None:
    # A directory early on sys.path whose zstandard fails to import.
    (tmp_path / "zstandard.py").write_text("raise ImportError('hidden for the test')\n")
    r = subprocess.run(
        [sys.executable, "-m", "ringcast", "demo", "--port", "1", "--compress", "zstd"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert r.returncode == 2
    assert "pip install zstandard" in r.stderr


@pytest.mark.parametrize("codec", CODECS)
def test_threads_share_a_compressing_client(cserver: Any, codec: str) -> None:
    """Codec contexts are per thread: threads compress and the receiver
    inflates at the same time without mixing them up."""
    import threading

    errors: List[BaseException] = []
    with ringcast.Client(cserver.host, cserver.port, compression=codec) as c:

        def work(k: int) -> None:
            try:
                mine = perf.telemetry(8 * 1024, seed=k)
                for _ in range(10):
                    assert c.echo(mine) == mine
            except BaseException as e:  # noqa: B036 (reported below)
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE * 3)
        assert not errors, errors
        s = _stats(c)
        assert s["frames_out"] == 40 and s["frames_in"] == 40


def test_channel_message_to_mixed_subscribers(hserver: RingcastServer) -> None:
    """A channel message is compressed once per codec too."""
    host, port = hserver.host, hserver.port
    codecs = ["deflate"] + (["zstd", "zstd"] if zstd is not None else [])
    subs = [ringcast.Client(host, port)] + [
        ringcast.Client(host, port, compression=c) for c in codecs
    ]
    pub = ringcast.Client(host, port)
    try:
        for s in subs:
            assert s.request("subscribe", {"channel": "telemetry"})["type"] == "subscribed"
        before = pub.get_stats()["compression"]
        reply = pub.request("publish", {"channel": "telemetry", "content": BIG})
        assert reply["recipients"] == len(subs)
        for s in subs:
            m = s.next_message(timeout=DEADLINE)
            assert m["type"] == "channel_message" and m["content"] == BIG
        assert [_stats(s)["frames_in"] for s in subs] == [0] + [1] * len(codecs)
        after = pub.get_stats()["compression"]
        assert after["compressions"] - before["compressions"] == len(set(codecs))
        assert after["frames_out"] - before["frames_out"] == len(codecs)
    finally:
        for c in (pub, *subs):
            c.close()
