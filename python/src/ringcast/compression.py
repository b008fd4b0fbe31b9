"""Negotiated per-frame compression (``hello``; docs/PROTOCOL.md, issue #16).

After the server's ``hello_ok`` names a codec, a frame whose 4-byte header
has the top bit (``0x80000000``) set carries a compressed payload; the low
31 bits are the compressed length. The payload is one complete,
self-contained stream of the codec: a zlib stream (RFC 1950) for
``deflate``, one zstd frame for ``zstd``. Either side compresses only
payloads larger than the threshold (``hello_ok``'s
``compression_threshold``, default 1024) and only when that saves bytes.

- ``deflate`` uses the standard library's :mod:`zlib`.
- ``zstd`` needs the optional ``zstandard`` module
  (``pip install zstandard``, or ``pip install ringcast[zstd]``).

Decompression is always bounded: it stops once the output passes the
limit (the client's ``max_frame_bytes``), so a small compressed frame
cannot inflate into gigabytes (a "zip bomb").
"""

from __future__ import annotations

import threading
import zlib
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .errors import CodecUnavailable, CompressionError, FrameTooLarge

#: Top bit of the frame header: the payload is compressed.
COMPRESSED_FLAG = 0x80000000
#: Low 31 bits of a compressed frame's header: the compressed payload length.
LENGTH_MASK = 0x7FFFFFFF

#: ``hello_ok`` without ``compression_threshold`` means this (bytes).
DEFAULT_THRESHOLD = 1024

#: Codec names this package knows, in the default order of preference.
CODEC_NAMES: Tuple[str, ...] = ("zstd", "deflate")

#: What ``pip`` installs to get the zstd codec.
ZSTD_HINT = "pip install zstandard (or pip install ringcast[zstd])"

#: Compression levels: zstd's default (3) and zlib's default (6).
ZSTD_LEVEL = 3
DEFLATE_LEVEL = 6

CompressionArg = Union[None, str, Sequence[str]]


def _zstandard() -> Any:
    """The ``zstandard`` module, or None when it is not installed."""
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return zstandard


class Codec:
    """One compression codec: ``compress`` and a bounded ``decompress``."""

    name = ""

    def compress(self, data: bytes) -> bytes:
        raise NotImplementedError

    def decompress(self, data: bytes, limit: int) -> bytes:
        """The whole decompressed payload. Raises :class:`FrameTooLarge` once
        the output would pass ``limit`` bytes (without producing much more
        than that), :class:`CompressionError` for a stream that is not one
        complete, valid stream of this codec (garbage, truncated, trailing
        bytes)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<ringcast codec {self.name}>"


class DeflateCodec(Codec):
    """``deflate``: one zlib stream (RFC 1950) per frame, standard library only."""

    name = "deflate"

    def __init__(self, level: int = DEFLATE_LEVEL) -> None:
        self.level = level

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, self.level)

    def decompress(self, data: bytes, limit: int) -> bytes:
        d = zlib.decompressobj()
        try:
            # max_length bounds the output: at most limit + 1 bytes are made.
            out = d.decompress(data, limit + 1)
        except zlib.error as e:
            raise CompressionError(f"bad deflate stream: {e}") from None
        if len(out) > limit or d.unconsumed_tail:
            raise FrameTooLarge(f"deflate payload inflates past the {limit}-byte limit")
        if not d.eof:
            raise CompressionError("truncated deflate stream")
        if d.unused_data:
            raise CompressionError(
                f"{len(d.unused_data)} bytes after the end of the deflate stream"
            )
        return out


#: A zstd block makes at most 128 KiB of output and takes at least 4 bytes
#: of input (an RLE block), so one input byte yields at most 32 KiB.
_ZSTD_BLOCK_MAX = 128 * 1024
_ZSTD_MAX_RATIO = 32 * 1024


def _zstd_output_bound(data: bytes, header_size: int, limit: int) -> Optional[int]:
    """The most output the blocks of the zstd frame in ``data`` can make,
    read from their headers (a raw or RLE block states its size, a
    compressed one makes at most 128 KiB); stops counting past ``limit``.
    None when the blocks cannot be walked (truncated, reserved type): the
    decompressor will say what is wrong."""
    bound = 0
    pos = header_size
    n = len(data)
    while pos + 3 <= n:
        header = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
        pos += 3
        kind = (header >> 1) & 3
        size = header >> 3
        if kind == 0:  # raw
            bound += size
            pos += size
        elif kind == 1:  # RLE: one byte, repeated size times
            bound += size
            pos += 1
        elif kind == 2:  # compressed
            bound += _ZSTD_BLOCK_MAX
            pos += size
        else:
            return None
        if bound > limit or header & 1:  # over, or the last block
            return bound
    return None


class ZstdCodec(Codec):
    """``zstd``: one zstd frame per frame, with the ``zstandard`` module.

    Compressor and decompressor contexts are not safe to share between
    threads, so each thread gets its own.
    """

    name = "zstd"

    def __init__(self, level: int = ZSTD_LEVEL) -> None:
        zstd = _zstandard()
        if zstd is None:
            raise CodecUnavailable(f"the zstd codec needs the zstandard module: {ZSTD_HINT}")
        self._zstd = zstd
        self.level = level
        self._local = threading.local()

    def _cctx(self) -> Any:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = self._zstd.ZstdCompressor(level=self.level)
        return c

    def _dctx(self) -> Any:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = self._zstd.ZstdDecompressor()
        return d

    def compress(self, data: bytes) -> bytes:
        # One-shot compress writes the content size into the frame header.
        return self._cctx().compress(data)  # type: ignore[no-any-return]

    def decompress(self, data: bytes, limit: int) -> bytes:
        zstd = self._zstd
        try:
            size = zstd.frame_content_size(data)
        except zstd.ZstdError as e:
            raise CompressionError(f"bad zstd frame: {e}") from None
        dctx = self._dctx()
        if size >= 0:
            # The header states the size: a buffer of exactly that size is
            # made, and a frame that would write more fails.
            if size > limit:
                raise FrameTooLarge(f"zstd frame of {size} bytes, over the {limit}-byte limit")
            try:
                return dctx.decompress(data, allow_extra_data=False)  # type: ignore[no-any-return]
            except zstd.ZstdError as e:
                raise CompressionError(f"bad zstd frame: {e}") from None
        # No size in the header (a streaming compressor's frame). The
        # zstandard module has no output limit here (decompress's
        # max_output_size also skips the trailing-bytes check).
        try:
            # One frame only (the default may change to reading on; the
            # argument exists from zstandard 0.22).
            obj = dctx.decompressobj(read_across_frames=False)
        except TypeError:
            obj = dctx.decompressobj()
        try:
            bound = _zstd_output_bound(data, zstd.frame_header_size(data), limit)
        except zstd.ZstdError:
            bound = None
        if bound is not None and bound <= limit:
            # The block headers show the output cannot pass the limit: one call.
            try:
                out = obj.decompress(data)
            except zstd.ZstdError as e:
                raise CompressionError(f"bad zstd frame: {e}") from None
            if len(out) > limit:  # cannot happen with a frame as walked
                raise FrameTooLarge(f"zstd frame inflates past the {limit}-byte limit")
            if not obj.eof:
                raise CompressionError("truncated zstd frame")
            if obj.unused_data:
                raise CompressionError("bytes after the end of the zstd frame")
            return out  # type: ignore[no-any-return]
        # Otherwise (a frame near or over the limit, or one the walk could
        # not read) the input goes in slices small enough that one slice
        # cannot take the output far past the limit (at most 32 KiB out per
        # byte in).
        parts = []
        total = 0
        pos = 0
        n = len(data)
        try:
            while pos < n and not obj.eof:
                step = max(4, (limit - total) // _ZSTD_MAX_RATIO)
                out = obj.decompress(data[pos : pos + step] if step < n - pos else data[pos:])
                pos += step
                if out:
                    total += len(out)
                    if total > limit:
                        raise FrameTooLarge(f"zstd frame inflates past the {limit}-byte limit")
                    parts.append(out)
        except zstd.ZstdError as e:
            raise CompressionError(f"bad zstd frame: {e}") from None
        if not obj.eof:
            raise CompressionError("truncated zstd frame")
        if obj.unused_data or pos < n:
            raise CompressionError("bytes after the end of the zstd frame")
        return parts[0] if len(parts) == 1 else b"".join(parts)


_codecs: Dict[str, Codec] = {}
_codecs_lock = threading.Lock()


def get_codec(name: str) -> Codec:
    """The shared codec for ``name`` (``"zstd"`` or ``"deflate"``). Raises
    ``ValueError`` for an unknown name, :class:`CodecUnavailable` for zstd
    without the ``zstandard`` module."""
    codec = _codecs.get(name)
    if codec is not None:
        return codec
    with _codecs_lock:
        codec = _codecs.get(name)
        if codec is None:
            if name == "deflate":
                codec = DeflateCodec()
            elif name == "zstd":
                codec = ZstdCodec()
            else:
                raise ValueError(f"unknown compression codec {name!r} (known: zstd, deflate)")
            _codecs[name] = codec
    return codec


def zstd_available() -> bool:
    """Whether the ``zstandard`` module can be imported."""
    return _zstandard() is not None


def available_codecs() -> Tuple[str, ...]:
    """The codec names usable here, in the default order of preference."""
    return tuple(n for n in CODEC_NAMES if n != "zstd" or zstd_available())


def resolve_offer(compression: CompressionArg) -> Optional[Tuple[str, ...]]:
    """Turns a client's ``compression=`` argument into the list it offers.

    - ``None``: no ``hello`` at all (the connection behaves as before).
    - ``"zstd"`` or ``"deflate"``: that codec only; ``"zstd"`` without the
      ``zstandard`` module raises :class:`CodecUnavailable`.
    - A list (preference order): zstd is left out silently when the module
      is missing; duplicates are dropped.

    Unknown names raise ``ValueError``.
    """
    if compression is None:
        return None
    if isinstance(compression, str):
        get_codec(compression)  # raises for an unknown name or a missing module
        return (compression,)
    offer = []
    for name in compression:
        if not isinstance(name, str) or name not in CODEC_NAMES:
            raise ValueError(f"unknown compression codec {name!r} (known: zstd, deflate)")
        if name == "zstd" and not zstd_available():
            continue
        if name not in offer:
            offer.append(name)
    return tuple(offer)


def compress_frame(payload: bytes, codec: Codec, threshold: int) -> bytes:
    """One frame for ``payload``: compressed (top bit set) when it is larger
    than ``threshold`` and compressing saves bytes, plain otherwise."""
    n = len(payload)
    if n > threshold:
        packed = codec.compress(payload)
        if len(packed) < n and len(packed) <= LENGTH_MASK:
            return (COMPRESSED_FLAG | len(packed)).to_bytes(4, "big") + packed
    if n > LENGTH_MASK:
        # After negotiation the top bit means "compressed": plain frames
        # stay under 2 GiB (far above any server's limit anyway).
        raise ValueError("message too large for a 31-bit length prefix")
    return n.to_bytes(4, "big") + payload
