"""Test helpers: server processes, fake servers, and waits with deadlines."""

from __future__ import annotations

import json
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ringcast.protocol import FrameDecoder, encode

#: The repository root (this file is python/tests/helpers.py).
REPO = Path(__file__).resolve().parents[2]

#: Seconds any wait in the tests may take before it counts as a failure.
DEADLINE = 10.0


def wait_until(cond: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    """Polls ``cond`` until it returns something truthy; returns that. Fails
    the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``, asked of the kernel
    (/proc/net/tcp) rather than by connecting: a probe connection would
    count, for a moment, in the server's ``connected_clients`` and
    ``recipients``. Falls back to connecting where /proc is missing."""
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return port_accepts(port)
    want = f"0100007F:{port:04X}"
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RingcastServer:
    """``ringcast server --addr 127.0.0.1:PORT --shards 2`` as a child process."""

    def __init__(
        self, binary: Path, port: int, log_path: Path, extra_args: Sequence[str] = ()
    ) -> None:
        self.binary = binary
        self.port = port
        self.host = "127.0.0.1"
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Starts the server and waits until its port accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "server", "--addr", self.addr, "--shards", "2", "--no-pin"]
            + self.extra_args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"ringcast server exited with {proc.returncode}:\n{self.log_path.read_text()}"
                )
            return port_listening(self.port)

        wait_until(up, what=f"ringcast server on {self.addr}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stops the server (SIGTERM by default) and waits for it; returns its exit status."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else 0
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def kill(self) -> int:
        """SIGKILL: the server vanishes without a word to its clients."""
        return self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers (reads and drops)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.conns: List[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()
        self._thread.join(timeout=DEADLINE)


class CutProxy:
    """A loopback TCP proxy to ``127.0.0.1:target_port`` that the test can
    cut: :meth:`cut` resets every connection through it at once (RST, with
    whatever is in flight lost), as a network failure would; it keeps
    accepting, so clients can reconnect through it. While :attr:`refusing`
    is set it closes every new connection at once (the network is still
    down), so a client stays away for as long as the test needs.

    One thread runs everything with a selector (non-blocking sockets), so
    the cut happens on the thread that owns the sockets: no other thread
    is inside a ``recv`` on a socket being closed.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.lsock = socket.socket()
        self.lsock.bind((self.host, 0))
        self.lsock.listen(16)
        self.lsock.setblocking(False)
        self.port = int(self.lsock.getsockname()[1])
        #: Connections accepted so far, and cuts made.
        self.accepted = 0
        self.cuts = 0
        #: Set to close new connections at once instead of forwarding them.
        self.refusing = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self.lsock, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._peer: Dict[socket.socket, socket.socket] = {}
        self._out: Dict[socket.socket, bytearray] = {}
        self._lock = threading.Lock()
        self._cut_requests: List[threading.Event] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cut-proxy", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        with self._lock:
            return len(self._peer) // 2

    def cut(self) -> None:
        """Resets every connection now (returns once done)."""
        done = threading.Event()
        with self._lock:
            self._cut_requests.append(done)
        self._wake_w.send(b"x")
        if not done.wait(DEADLINE):
            raise AssertionError("the proxy did not cut its connections in time")

    def close(self) -> None:
        self.cut()
        self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=DEADLINE)
        self._sel.close()
        for s in (self.lsock, self._wake_r, self._wake_w):
            s.close()

    def _run(self) -> None:
        while not self._closed:
            for key, mask in self._sel.select(timeout=0.2):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._do_cuts()
                else:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock not in self._peer:
                        continue  # closed earlier in this round
                    if mask & selectors.EVENT_WRITE:
                        self._flush(sock)
                    if mask & selectors.EVENT_READ and sock in self._peer:
                        self._read(sock)

    def _accept(self) -> None:
        try:
            conn, _ = self.lsock.accept()
        except OSError:
            return
        if self.refusing:
            conn.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=DEADLINE)
        except OSError:
            conn.close()
            return
        self.accepted += 1
        with self._lock:
            for a, b in ((conn, upstream), (upstream, conn)):
                a.setblocking(False)
                self._peer[a] = b
                self._out[a] = bytearray()
                self._sel.register(a, selectors.EVENT_READ, "pipe")

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pair(sock, reset=False)  # one side closed: close both
            return
        peer = self._peer[sock]
        self._out[peer] += data
        self._flush(peer)

    def _flush(self, sock: socket.socket) -> None:
        out = self._out[sock]
        try:
            n = sock.send(out) if out else 0
        except BlockingIOError:
            n = 0
        except OSError:
            self._close_pair(sock, reset=False)
            return
        del out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
        self._sel.modify(sock, want, "pipe")

    def _close_pair(self, sock: socket.socket, reset: bool) -> None:
        with self._lock:
            peer = self._peer.pop(sock, None)
            pair = [sock] if peer is None else [sock, peer]
            if peer is not None:
                self._peer.pop(peer, None)
            for s in pair:
                self._out.pop(s, None)
        for s in pair:
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            if reset:
                # SO_LINGER with a zero timeout: close() sends RST, not FIN.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def _do_cuts(self) -> None:
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        with self._lock:
            requests, self._cut_requests = self._cut_requests, []
            socks = list(self._peer)
        for s in socks:
            if s in self._peer:
                self._close_pair(s, reset=True)
        if requests:
            self.cuts += 1
        for done in requests:
            done.set()


#: In a ScriptedServer answer: close the connection after the frames before it.
CLOSE: Dict[str, Any] = {"__close__": True}


class ScriptedServer:
    """A fake server: each request frame is passed to ``answer``, which
    returns ``(delay_seconds, frames)`` to send back. Used where the real
    server cannot be made to misbehave (late answers, answers without ids)
    and for TLS, which the real server does not speak."""

    def __init__(
        self,
        answer: Callable[[Dict[str, Any]], "tuple[float, List[Dict[str, Any]]]"],
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.answer = answer
        self.ssl_context = ssl_context
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self.received: List[Dict[str, Any]] = []
        self.errors: List[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as e:
            self.errors.append(e)
            conn.close()
            return
        decoder = FrameDecoder()
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for msg in decoder.feed(data):
                    self.received.append(msg)
                    delay, frames = self.answer(msg)
                    if delay:
                        time.sleep(delay)  # the misbehaviour under test: a slow server
                    try:
                        conn.sendall(b"".join(encode(f) for f in frames if f != CLOSE))
                    except OSError:
                        return
                    if CLOSE in frames:
                        return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=DEADLINE)


def pong_for(msg: Dict[str, Any]) -> Dict[str, Any]:
    """The answer a ringcast server gives to ``msg`` (ping, echo), for fake servers."""
    kind = msg.get("type")
    if kind == "ping":
        reply: Dict[str, Any] = {"type": "pong", "ping_timestamp": msg.get("timestamp")}
    elif kind == "echo":
        reply = {"type": "echo_response", "content": msg.get("content"), "echoed_by": "fake"}
    else:
        reply = {"type": "error", "code": "unknown_type", "message": "fake", "request_type": kind}
    if "id" in msg:
        reply["id"] = msg["id"]
    return reply


def self_signed_cert(directory: Path) -> "Optional[tuple[Path, Path]]":
    """A certificate and key for ``localhost`` made with the openssl command,
    or None when there is no openssl."""
    if shutil.which("openssl") is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Collector:
    """A thread-safe list of received frames, with a wait for a condition."""

    def __init__(self) -> None:
        self.items: List[Dict[str, Any]] = []
        self.threads: List[threading.Thread] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Dict[str, Any]) -> None:
        with self._cond:
            self.items.append(msg)
            self.threads.append(threading.current_thread())
            self._cond.notify_all()

    def of_type(self, kind: str) -> List[Dict[str, Any]]:
        with self._cond:
            return [m for m in self.items if m.get("type") == kind]

    def wait_for(
        self, pred: Callable[[List[Dict[str, Any]]], Any], timeout: float = DEADLINE
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = pred(self.items)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; received so far: {self.items}")
                self._cond.wait(left)

    def wait_type(
        self, kind: str, count: int = 1, timeout: float = DEADLINE
    ) -> List[Dict[str, Any]]:
        return list(
            self.wait_for(
                lambda items: (
                    [m for m in items if m.get("type") == kind]
                    if sum(1 for m in items if m.get("type") == kind) >= count
                    else None
                ),
                timeout,
            )
        )


# --------------------------------------------------------------- compression


def zstandard_module() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


class CompressingFakeServer:
    """A fake ringcast server that speaks hello and compressed frames as
    the wire spec (issue #16) says, written apart from the client's code:
    its own framing, zlib and zstandard calls, limits and error codes.

    It answers hello (choosing the first of the client's codecs that is in
    ``codecs``; ``codecs=()`` refuses compression), echo, ping, broadcast
    (to every other connection, compressed once per codec), auth, and
    get_stats (with a ``compression`` object); other types get
    ``unknown_type``. zstd frames are made with a streaming compressor, so
    they carry no content size, like the Rust server's. Every frame it
    sends is kept in ``sent`` as ``(connection number, header, payload)``.
    """

    def __init__(
        self,
        codecs: Sequence[str] = ("zstd", "deflate"),
        threshold: int = 1024,
        max_frame_bytes: int = 1 << 20,
        push_after_hello: Optional[Dict[str, Any]] = None,
    ) -> None:
        #: Sent right after hello_ok, in the same send (compressed when large).
        self.push_after_hello = push_after_hello
        self.codecs = tuple(codecs)
        self.threshold = threshold
        self.max_frame_bytes = max_frame_bytes
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.host = "127.0.0.1"
        self.lock = threading.Lock()
        self.send_locks: Dict[int, threading.Lock] = {}
        self.conns: Dict[int, "tuple[socket.socket, Optional[str]]"] = {}
        self.sent: List["tuple[int, int, bytes]"] = []
        self.received: List["tuple[int, bool, Dict[str, Any]]"] = []
        self.stats: Dict[str, int] = {
            "frames_in": 0,
            "bytes_in_wire": 0,
            "bytes_in_plain": 0,
            "frames_out": 0,
            "bytes_out_plain": 0,
            "bytes_out_wire": 0,
            "compressions": 0,
        }
        self._next = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    # codecs, written without ringcast.compression
    def compress(self, codec: str, data: bytes) -> bytes:
        if codec == "deflate":
            return zlib.compress(data)
        zstd = zstandard_module()
        cobj = zstd.ZstdCompressor(level=3).compressobj()
        return bytes(cobj.compress(data) + cobj.flush())

    def decompress(self, codec: str, data: bytes) -> bytes:
        """Inflates at most max_frame_bytes; raises OverflowError past it,
        ValueError for a bad stream."""
        limit = self.max_frame_bytes
        if codec == "deflate":
            d = zlib.decompressobj()
            try:
                out = d.decompress(data, limit + 1)
            except zlib.error as e:
                raise ValueError(str(e)) from None
            if len(out) > limit:
                raise OverflowError
            if not d.eof or d.unused_data:
                raise ValueError("truncated or trailing bytes")
            return out
        zstd = zstandard_module()
        obj = zstd.ZstdDecompressor().decompressobj()
        out_parts: List[bytes] = []
        total = 0
        try:
            for i in range(0, len(data), 16):  # 16 bytes in: at most 512 KiB out
                part = obj.decompress(data[i : i + 16])
                total += len(part)
                if total > limit:
                    raise OverflowError
                out_parts.append(part)
                if obj.eof:
                    if i + 16 < len(data) or obj.unused_data:
                        raise ValueError("trailing bytes")
                    break
        except zstd.ZstdError as e:
            raise ValueError(str(e)) from None
        if not obj.eof:
            raise ValueError("truncated")
        return b"".join(out_parts)

    def frame_for(self, codec: Optional[str], payload: bytes) -> bytes:
        """The frame for ``payload`` toward a connection using ``codec``;
        counts a compression when it compresses."""
        if codec is not None and len(payload) > self.threshold:
            packed = self.compress(codec, payload)
            with self.lock:
                self.stats["compressions"] += 1
            if len(packed) < len(payload):
                return struct.pack(">I", 0x80000000 | len(packed)) + packed
        return struct.pack(">I", len(payload)) + payload

    def _send(self, n: int, conn: socket.socket, *frames: bytes) -> None:
        """Sends ``frames`` in one piece; counts each compressed one."""
        with self.lock:
            for frame in frames:
                (header,) = struct.unpack(">I", frame[:4])
                self.sent.append((n, header, frame[4:]))
                if header & 0x80000000:
                    self.stats["frames_out"] += 1
                    self.stats["bytes_out_wire"] += len(frame) - 4
            send_lock = self.send_locks.setdefault(n, threading.Lock())
        with send_lock:  # broadcasts come from other connections' threads
            conn.sendall(b"".join(frames))

    def _reply(
        self, n: int, conn: socket.socket, codec: Optional[str], msg: Dict[str, Any]
    ) -> None:
        self._send(n, conn, self.frame_for(codec, json.dumps(msg, separators=(",", ":")).encode()))

    def _error(self, n: int, conn: socket.socket, code: str, close: bool) -> None:
        self._send(n, conn, encode({"type": "error", "code": code, "message": "fake"}))
        if close:
            conn.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                n = self._next
                self._next += 1
                self.conns[n] = (conn, None)
            threading.Thread(target=self._serve, args=(n, conn), daemon=True).start()

    def _read_exact(self, conn: socket.socket, n: int) -> Optional[bytes]:
        buf = b""
        while len(buf) < n:
            try:
                data = conn.recv(n - len(buf))
            except OSError:
                return None
            if not data:
                return None
            buf += data
        return buf

    def _serve(self, n: int, conn: socket.socket) -> None:
        codec: Optional[str] = None
        helloed = False
        try:
            while True:
                head = self._read_exact(conn, 4)
                if head is None:
                    return
                (length,) = struct.unpack(">I", head)
                compressed = bool(codec is not None and length & 0x80000000)
                if compressed:
                    length &= 0x7FFFFFFF
                    if length == 0:
                        return self._error(n, conn, "empty_frame", True)
                if length > self.max_frame_bytes:
                    return self._error(n, conn, "frame_too_large", True)
                if length == 0:
                    return self._error(n, conn, "empty_frame", True)
                body = self._read_exact(conn, length)
                if body is None:
                    return
                if compressed:
                    assert codec is not None
                    try:
                        plain = self.decompress(codec, body)
                    except OverflowError:
                        return self._error(n, conn, "frame_too_large", True)
                    except ValueError:
                        return self._error(n, conn, "compression_error", True)
                    with self.lock:
                        self.stats["frames_in"] += 1
                        self.stats["bytes_in_wire"] += length
                        self.stats["bytes_in_plain"] += len(plain)
                    body = plain
                msg = json.loads(body)
                with self.lock:
                    self.received.append((n, compressed, msg))
                kind = msg.get("type")
                rid = {"id": msg["id"]} if "id" in msg else {}
                if kind == "hello":
                    if helloed:
                        self._reply(
                            n, conn, codec, {"type": "error", "code": "hello_repeated", **rid}
                        )
                        continue
                    helloed = True
                    offered = msg.get("compression") or []
                    chosen = next((c for c in offered if c in self.codecs), None)
                    hello_ok = {
                        "type": "hello_ok",
                        "compression": chosen,
                        "server": "fake/0",
                        "protocol": 1,
                        "max_frame_bytes": self.max_frame_bytes,
                        "compression_threshold": self.threshold,
                        "features": ["broadcast", "channels", "compression"],
                        **rid,
                    }
                    codec = chosen
                    with self.lock:
                        self.conns[n] = (conn, codec)
                    frames = [encode(hello_ok)]
                    if self.push_after_hello is not None:
                        push = json.dumps(self.push_after_hello, separators=(",", ":"))
                        frames.append(self.frame_for(codec, push.encode()))
                    self._send(n, conn, *frames)
                elif kind == "echo":
                    self._reply(
                        n,
                        conn,
                        codec,
                        {"type": "echo_response", "content": msg.get("content"), **rid},
                    )
                elif kind == "ping":
                    self._reply(n, conn, codec, {"type": "pong", **rid})
                elif kind == "auth":
                    self._reply(n, conn, codec, {"type": "auth_ok", **rid})
                elif kind == "get_stats":
                    with self.lock:
                        comp = dict(self.stats)
                    self._reply(
                        n, conn, codec, {"type": "server_stats", "compression": comp, **rid}
                    )
                elif kind == "broadcast":
                    recipients = self._broadcast(n, msg)
                    self._reply(
                        n, conn, codec, {"type": "broadcast_sent", "recipients": recipients, **rid}
                    )
                else:
                    self._reply(
                        n,
                        conn,
                        codec,
                        {"type": "error", "code": "unknown_type", "request_type": kind, **rid},
                    )
        finally:
            with self.lock:
                self.conns.pop(n, None)
            conn.close()

    def _broadcast(self, sender: int, msg: Dict[str, Any]) -> int:
        payload = json.dumps(
            {"type": "broadcast_message", "content": msg.get("content"), "from": str(sender)},
            separators=(",", ":"),
        ).encode()
        frames: Dict[Optional[str], bytes] = {}
        with self.lock:
            targets = [(n, c, codec) for n, (c, codec) in self.conns.items() if n != sender]
        for n, conn, codec in targets:
            frame = frames.get(codec)
            if frame is None:
                frame = frames[codec] = self.frame_for(codec, payload)
            try:
                self._send(n, conn, frame)
            except OSError:
                pass
        return len(targets)

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            conns = [c for c, _ in self.conns.values()]
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=DEADLINE)
