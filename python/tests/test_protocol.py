"""The wire format without sockets: framing, decoding, timestamps, builders, backoff."""

from __future__ import annotations

import json
import re
import struct
import time

import pytest

from ringcast import ProtocolError, ReconnectPolicy
from ringcast import protocol as p

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_encode_is_length_prefixed_compact_utf8_json() -> None:
    frame = p.encode({"type": "echo", "content": "héllo"})
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4
    assert frame[4:] == '{"type":"echo","content":"héllo"}'.encode()


def test_decoder_reassembles_frames_split_at_every_byte() -> None:
    msgs = [{"type": "echo", "content": i, "id": i} for i in range(5)] + [{"type": "x" * 300}]
    stream = b"".join(p.encode(m) for m in msgs)
    for step in (1, 2, 3, 7, 64, len(stream)):
        d = p.FrameDecoder()
        out = []
        for i in range(0, len(stream), step):
            out += d.feed(stream[i : i + step])
        assert out == msgs, f"step {step}"
        assert d.buffered == 0


def test_decoder_keeps_an_incomplete_frame() -> None:
    frame = p.encode({"type": "pong"})
    d = p.FrameDecoder()
    assert d.feed(frame + frame[:5]) == [{"type": "pong"}]
    assert d.buffered == 5
    assert d.feed(frame[5:]) == [{"type": "pong"}]


def test_decoder_rejects_a_header_over_the_limit_before_the_payload() -> None:
    d = p.FrameDecoder(max_frame_bytes=100)
    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        d.feed(struct.pack(">I", 101))


def test_decoder_rejects_non_objects_and_bad_json() -> None:
    for payload in (b"[1,2]", b"not json", b"\xff\xfe"):
        with pytest.raises(ProtocolError):
            p.FrameDecoder().feed(struct.pack(">I", len(payload)) + payload)


def test_timestamp_has_the_seed_format() -> None:
    assert p.timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert p.timestamp(1704110400.001) == "2024-01-01T12:00:00.001Z"
    assert p.timestamp(1704110400.999) == "2024-01-01T12:00:00.999Z"
    assert TS.match(p.timestamp())
    # The cached date part follows the clock across seconds.
    assert p.timestamp(1704110401.5) == "2024-01-01T12:00:01.500Z"


def test_builders_make_the_seed_shapes() -> None:
    ping = p.ping_message("TCP Client info")
    assert set(ping) == {"type", "timestamp", "client_info"} and ping["type"] == "ping"
    assert TS.match(ping["timestamp"])
    assert p.echo_message("Hello TCP Server!")["content"] == "Hello TCP Server!"
    assert set(p.echo_message(1)) == {"type", "content", "timestamp"}
    assert p.broadcast_message("all")["type"] == "broadcast"
    assert set(p.stats_message()) == {"type", "timestamp"}
    assert p.text_message("hi")["type"] == "message"
    assert p.auth_message("t") == {"type": "auth", "token": "t"}


def test_custom_message_puts_data_fields_beside_type() -> None:
    m = p.custom_message("custom_type", {"data": "value"})
    assert m["type"] == "custom_type" and m["data"] == "value" and TS.match(m["timestamp"])
    assert p.custom_message("t", {"timestamp": "mine"})["timestamp"] == "mine"
    for bad in ({"type": "x"}, {"id": 1}):
        with pytest.raises(ValueError):
            p.custom_message("t", bad)
    with pytest.raises(ValueError):
        p.custom_message("", {})


def test_encode_round_trips_through_json() -> None:
    value = {"type": "echo", "content": {"n": [1, 2.5, None, True], "s": "é\u2028"}}
    assert json.loads(p.encode(value)[4:]) == value


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = ReconnectPolicy(initial_delay=0.1, max_delay=1.0, multiplier=2.0, jitter=0.5)
    no_jitter = [policy.delay(n, rand=lambda: 0.0) for n in range(1, 7)]
    assert no_jitter == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    full_jitter = [policy.delay(n, rand=lambda: 1.0) for n in range(1, 4)]
    assert full_jitter == pytest.approx([0.05, 0.1, 0.2])
    for n in range(1, 20):
        assert 0.05 <= policy.delay(n) / min(0.1 * 2 ** (n - 1), 1.0) <= 1.0 + 1e-9
    assert policy.delay(5000) <= 1.0  # no overflow on very late attempts


def test_backoff_stops_after_max_attempts() -> None:
    assert len(list(ReconnectPolicy(max_attempts=3).delays())) == 3
    unlimited = ReconnectPolicy().delays()
    assert len([next(unlimited) for _ in range(100)]) == 100
    with pytest.raises(ValueError):
        ReconnectPolicy(jitter=2)
    with pytest.raises(ValueError):
        ReconnectPolicy(max_attempts=0)


def test_timestamp_is_cheap() -> None:
    start = time.perf_counter()
    for _ in range(10_000):
        p.timestamp()
    # Generous bound: it runs on every request of every client.
    assert time.perf_counter() - start < 1.0
