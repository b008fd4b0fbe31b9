"""The ringcast wire format, without sockets: framing, messages, timestamps.

A frame is a 4-byte big-endian unsigned payload length, then that many bytes
of one UTF-8 JSON object (docs/PROTOCOL.md in the repository). Every client
in this package builds its requests and reads its frames through this module.
After a ``hello`` that negotiated a codec, a header with the top bit set
announces a compressed payload (:mod:`ringcast.compression`).
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .compression import (
    COMPRESSED_FLAG,
    DEFAULT_THRESHOLD,
    LENGTH_MASK,
    Codec,
    compress_frame,
)
from .errors import FrameTooLarge, ProtocolError

#: The frame header: payload length, u32 big-endian.
HEADER = struct.Struct(">I")
HEADER_LEN = HEADER.size

#: The server's default request limit (``--max-frame-bytes``): 1 MiB.
SERVER_MAX_FRAME_BYTES = 1 << 20

#: Largest frame payload the clients accept: 16 MiB. Larger than the server's
#: request limit on purpose: a response adds an envelope and re-prints
#: numbers, so it can exceed the request it answers (PROTOCOL.md, "Framing").
#: The same figure as the Rust client's ``DEFAULT_CLIENT_MAX_FRAME_BYTES``.
CLIENT_MAX_FRAME_BYTES = 16 << 20

#: Bytes asked of the socket per receive call.
RECV_CHUNK = 256 * 1024

#: The answer type expected for each request type the server knows.
RESPONSE_TYPES: Dict[str, str] = {
    "ping": "pong",
    "echo": "echo_response",
    "broadcast": "broadcast_sent",
    "get_stats": "server_stats",
    "message": "message_ack",
    "auth": "auth_ok",
    "hello": "hello_ok",
    "subscribe": "subscribed",
    "unsubscribe": "unsubscribed",
    "publish": "published",
    "history": "history",
    "refresh": "refreshed",
}

#: Answer types, for servers that do not copy ``id`` back (the seed's Python
#: server): such an answer goes to the oldest waiting request.
ANSWER_TYPES = frozenset(RESPONSE_TYPES.values())

Message = Dict[str, Any]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_decode = json.JSONDecoder().decode


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame: the header, then ``message`` as compact UTF-8 JSON."""
    payload = _encoder.encode(message).encode("utf-8")
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("message too large for a u32 length prefix")
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Message:
    """Parses one frame payload; it must be a JSON object."""
    try:
        value = _decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"server sent a frame that is not UTF-8 JSON: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"server sent a frame that is not a JSON object: {value!r:.80}")
    return value


class FrameDecoder:
    """Turns a byte stream, split anywhere, into messages.

    Call :meth:`feed` with each chunk received; it returns the messages that
    chunk completed, in order. Raises :class:`ProtocolError` for a frame
    header above ``max_frame_bytes`` (decided from the header alone;
    :class:`FrameTooLarge`) or a payload that is not a JSON object; the
    stream is then out of step and the connection should be closed.

    Compression: once ``codec`` is set, a header with the top bit set
    announces a compressed payload, which is inflated with that codec, at
    most to ``max_frame_bytes`` (beyond that: :class:`FrameTooLarge`; a bad
    stream: :class:`CompressionError`). Before ``hello`` is sent, call
    :meth:`expect_hello` with the codecs offered: the decoder then takes the
    codec from the ``hello_ok`` frame itself, so a compressed frame that
    follows ``hello_ok`` in the same chunk is already understood.
    """

    __slots__ = (
        "_buf",
        "max_frame_bytes",
        "codec",
        "_offer",
        "bytes_received",
        "frames_compressed",
        "bytes_compressed",
        "bytes_inflated",
    )

    def __init__(
        self, max_frame_bytes: int = CLIENT_MAX_FRAME_BYTES, codec: Optional[Codec] = None
    ) -> None:
        self._buf = bytearray()
        self.max_frame_bytes = max_frame_bytes
        #: The negotiated codec, or None (a header's top bit is then just a
        #: length over the limit).
        self.codec = codec
        self._offer: Optional[Mapping[str, Codec]] = None
        #: Bytes fed so far: frames on the wire, headers included.
        self.bytes_received = 0
        #: Compressed frames decoded, their compressed payload bytes, and
        #: those payloads' bytes once inflated.
        self.frames_compressed = 0
        self.bytes_compressed = 0
        self.bytes_inflated = 0

    def expect_hello(self, offer: Optional[Mapping[str, Codec]]) -> None:
        """Takes the codec from the next ``hello_ok`` frame: the one of
        ``offer`` (name to codec) that it names, or none. ``None`` stops
        waiting for it (hello was answered with an error)."""
        self._offer = offer

    def feed(self, data: bytes) -> List[Message]:
        """Appends ``data``; returns every message completed so far."""
        buf = self._buf
        buf += data
        self.bytes_received += len(data)
        out: List[Message] = []
        pos = 0
        end_of_data = len(buf)
        unpack_from = HEADER.unpack_from
        max_frame = self.max_frame_bytes
        codec = self.codec
        offer = self._offer
        # Plain frames up to this length: one comparison per frame.
        max_plain = max_frame if codec is None else min(max_frame, LENGTH_MASK)
        while end_of_data - pos >= HEADER_LEN:
            (length,) = unpack_from(buf, pos)
            compressed = False
            if length > max_plain:
                if codec is not None and length & COMPRESSED_FLAG:
                    length &= LENGTH_MASK
                    if length == 0:
                        raise ProtocolError("server sent an empty compressed frame")
                    if length > max_frame:
                        raise FrameTooLarge(
                            f"server announced a {length}-byte compressed frame, "
                            f"over the {max_frame}-byte limit"
                        )
                    compressed = True
                else:
                    raise FrameTooLarge(
                        f"server announced a {length}-byte frame, over the {max_frame}-byte limit"
                    )
            end = pos + HEADER_LEN + length
            if end > end_of_data:
                break
            payload = bytes(buf[pos + HEADER_LEN : end])
            pos = end
            if compressed:
                assert codec is not None
                payload = codec.decompress(payload, max_frame)
                self.frames_compressed += 1
                self.bytes_compressed += length
                self.bytes_inflated += len(payload)
            msg = decode_payload(payload)
            out.append(msg)
            if offer is not None and msg.get("type") == "hello_ok":
                name = msg.get("compression")
                codec = self.codec = offer.get(name) if isinstance(name, str) else None
                offer = self._offer = None
                max_plain = max_frame if codec is None else min(max_frame, LENGTH_MASK)
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame."""
        return len(self._buf)


class FrameEncoder:
    """Encodes messages into frames for one connection, compressing per the
    negotiated codec: a payload larger than ``threshold`` bytes is sent
    compressed when that makes it smaller (:func:`compress_frame`).

    ``encoder.encode(message)`` returns the frame. Without a codec it *is*
    :func:`encode`, so a connection without compression pays nothing. It
    counts the frames it compressed; ``bytes_sent`` is counted by the
    client as it sends."""

    __slots__ = (
        "codec",
        "threshold",
        "encode",
        "bytes_sent",
        "frames_compressed",
        "bytes_compressed_plain",
        "bytes_compressed_wire",
    )

    def __init__(self, codec: Optional[Codec] = None, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.codec = codec
        self.threshold = threshold
        #: Frame bytes written to the connection (headers included).
        self.bytes_sent = 0
        #: Frames sent compressed, their payload bytes before and after.
        self.frames_compressed = 0
        self.bytes_compressed_plain = 0
        self.bytes_compressed_wire = 0
        self.encode: Callable[[Mapping[str, Any]], bytes] = (
            encode if codec is None else self._compressing(codec, threshold)
        )

    def _compressing(self, codec: Codec, threshold: int) -> Callable[[Mapping[str, Any]], bytes]:
        dumps = _encoder.encode
        pack = HEADER.pack

        def encode_compressing(message: Mapping[str, Any]) -> bytes:
            payload = dumps(message).encode("utf-8")
            if len(payload) <= threshold:  # small frames: what encode() does, no more
                return pack(len(payload)) + payload
            frame = compress_frame(payload, codec, threshold)
            if frame[0] & 0x80:
                self.frames_compressed += 1
                self.bytes_compressed_plain += len(payload)
                self.bytes_compressed_wire += len(frame) - HEADER_LEN
            return frame

        return encode_compressing

    def __call__(self, message: Mapping[str, Any]) -> bytes:
        return self.encode(message)


_ts_second = -1
_ts_prefix = ""


def timestamp(now: Optional[float] = None) -> str:
    """UTC with milliseconds in the seed's format: ``2024-01-01T12:00:00.001Z``."""
    global _ts_second, _ts_prefix
    if now is None:
        now = time.time()
    ms_total = int(now * 1000)
    second, ms = divmod(ms_total, 1000)
    if second != _ts_second:
        # Formatting the date part is the slow bit; it changes once a second.
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _ts_prefix, _ts_second = prefix, second
        return f"{prefix}.{ms:03d}Z"
    return f"{_ts_prefix}.{ms:03d}Z"


# Request builders: the seed's message shapes (its README's examples), shared
# by every client in this package. ``id`` is added by the clients that
# correlate answers.


def ping_message(client_info: str) -> Message:
    """``{"type": "ping", "timestamp": ..., "client_info": ...}``."""
    return {"type": "ping", "timestamp": timestamp(), "client_info": client_info}


def echo_message(content: Any) -> Message:
    """``{"type": "echo", "content": ..., "timestamp": ...}``."""
    return {"type": "echo", "content": content, "timestamp": timestamp()}


def broadcast_message(content: Any) -> Message:
    """``{"type": "broadcast", "content": ..., "timestamp": ...}``."""
    return {"type": "broadcast", "content": content, "timestamp": timestamp()}


def stats_message() -> Message:
    """``{"type": "get_stats", "timestamp": ...}``."""
    return {"type": "get_stats", "timestamp": timestamp()}


def text_message(text: str) -> Message:
    """Plain text, as the interactive client sends it: ``{"type": "message", "content": ...}``."""
    return {"type": "message", "content": text, "timestamp": timestamp()}


def hello_message(compression: Sequence[str], client: str) -> Message:
    """``{"type": "hello", "compression": [...], "client": ...}``: asks for
    compression (codec names in order of preference) and the server's
    version and features. The first frame on a connection, before ``auth``."""
    return {"type": "hello", "compression": list(compression), "client": client}


def auth_message(token: str) -> Message:
    """``{"type": "auth", "token": ...}``: the first frame when the server requires it."""
    return {"type": "auth", "token": token}


def refresh_message(token: str) -> Message:
    """``{"type": "refresh", "token": ...}``: a new JWT for the same user,
    before (or just after) the current one expires."""
    return {"type": "refresh", "token": token}


def custom_message(message_type: str, data: Optional[Mapping[str, Any]] = None) -> Message:
    """A message of any type: ``data``'s fields sit beside ``type``.

    ``send_custom_message("custom_type", {"data": "value"})`` sends
    ``{"type": "custom_type", "data": "value", "timestamp": ...}``.
    ``type`` and ``id`` in ``data`` are not allowed (they would replace the
    type or the clients' correlation id).
    """
    if not isinstance(message_type, str) or not message_type:
        raise ValueError("message_type must be a non-empty string")
    msg: Message = {"type": message_type}
    if data:
        for reserved in ("type", "id"):
            if reserved in data:
                raise ValueError(f"custom message data must not contain {reserved!r}")
        msg.update(data)
    msg.setdefault("timestamp", timestamp())
    return msg


# Channels (docs/PROTOCOL.md, "Channels"). ``channel`` is checked by the
# caller with :func:`check_channel`; the server checks the rest of the name.


def check_channel(channel: Any) -> str:
    """Returns ``channel`` if it is a non-empty ``str``; raises ``TypeError``
    (not a string) or ``ValueError`` (empty). What else the server refuses
    (over 256 bytes, control characters) it answers ``invalid_channel``."""
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, not {type(channel).__name__}")
    if not channel:
        raise ValueError("channel must not be empty")
    return channel


def subscribe_message(channel: str, recover: Optional[Tuple[int, str]] = None) -> Message:
    """``{"type": "subscribe", "channel": ...}``, with ``"recover": {"offset",
    "epoch"}`` when ``recover`` is given: the server then replays what the
    channel's history holds after that offset, if it still can."""
    msg: Message = {"type": "subscribe", "channel": channel}
    if recover is not None:
        msg["recover"] = {"offset": recover[0], "epoch": recover[1]}
    return msg


def unsubscribe_message(channel: str) -> Message:
    """``{"type": "unsubscribe", "channel": ...}``."""
    return {"type": "unsubscribe", "channel": channel}


def publish_message(channel: str, content: Any) -> Message:
    """``{"type": "publish", "channel": ..., "content": ...}``."""
    return {"type": "publish", "channel": channel, "content": content}


def history_message(
    channel: str, since: Optional[int] = None, limit: Optional[int] = None
) -> Message:
    """``{"type": "history", "channel": ..., "since"?: N, "limit"?: n}``:
    the publications after offset ``since`` (the server's default limit is
    100, its maximum 1000). ``since`` must be an int >= 0 and ``limit`` an
    int >= 1 (``TypeError`` / ``ValueError`` otherwise)."""
    msg: Message = {"type": "history", "channel": channel}
    for name, value, least in (("since", since, 0), ("limit", limit, 1)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
        msg[name] = value
    return msg
