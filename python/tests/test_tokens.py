"""Signed tokens against the real server (issue 25), on both I/O backends.

The tokens are made by PyJWT (with ``cryptography`` for RS256, ES256 and
EdDSA): a library we did not write, so the server's verification is
checked against someone else's signing. Covered: each algorithm accepted;
every hostile token of docs/RELIABILITY.md refused with ``unauthorized``,
a message naming the check, a close, and a count by reason; permissions by
claim and by namespace; expiry with and without ``refresh``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest
from helpers import DEADLINE, RingcastServer, free_port

from ringcast.protocol import FrameDecoder, encode

jwt = pytest.importorskip("jwt", reason="PyJWT is not installed (python/run-tests.sh installs it)")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

SECRET = "an-hmac-secret-of-32-bytes-or-so!"
BACKENDS = ["auto", "epoll"]


class Conn:
    """One raw connection: frames out, frames in, with deadlines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.dec = FrameDecoder()
        self.pending: List[Dict[str, Any]] = []

    def send(self, msg: Dict[str, Any]) -> None:
        self.sock.sendall(encode(msg))

    def recv(self, timeout: float = DEADLINE) -> Optional[Dict[str, Any]]:
        """The next frame; None when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for a frame")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending.extend(self.dec.feed(data))
        return self.pending.pop(0)

    def ask(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        self.send(msg)
        r = self.recv()
        assert r is not None, f"closed after {msg}"
        return r

    def answer(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        """The answer to ``msg``, past the channel messages a connection
        subscribed to what it publishes gets too (its own publication, by a
        pattern or a channel, may come before the reply)."""
        self.send(msg)
        while True:
            r = self.recv()
            assert r is not None, f"closed after {msg}"
            if r["type"] != "channel_message":
                return r

    def quiet(self, secs: float = 0.3) -> List[Dict[str, Any]]:
        """Frames that arrive within ``secs`` (none expected, usually)."""
        got = list(self.pending)
        self.pending.clear()
        self.sock.settimeout(secs)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                got.extend(self.dec.feed(data))
        except socket.timeout:
            pass
        return got

    def closed(self) -> bool:
        self.sock.settimeout(DEADLINE)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.dec.feed(data)
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


KEYS = {
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
}


def sign(claims: Dict[str, Any], alg: str = "HS256", key: Any = None) -> str:
    if key is None:
        key = SECRET if alg.startswith("HS") else KEYS[alg]
    return jwt.encode(claims, key, algorithm=alg)


def claims(sub: str = "alice", ttl: int = 600, **extra: Any) -> Dict[str, Any]:
    c: Dict[str, Any] = {"sub": sub, "exp": int(time.time()) + ttl}
    c.update(extra)
    return c


def start(ringcast_bin: Path, tmp_path: Path, args: Sequence[str]) -> RingcastServer:
    srv = RingcastServer(ringcast_bin, free_port(), tmp_path / f"server-{free_port()}.log", args)
    srv.start()
    return srv


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def hs_server(ringcast_bin: Path, tmp_path: Path, backend: str) -> Iterator[RingcastServer]:
    srv = start(ringcast_bin, tmp_path, ["--io-backend", backend, "--jwt-secret", SECRET,
                                         "--history-size", "10"])
    yield srv
    srv.stop()


def authed(srv: RingcastServer, token: str) -> Conn:
    c = Conn(srv.port)
    r = c.ask({"type": "auth", "token": token})
    assert r["type"] == "auth_ok", r
    return c


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "EdDSA"])
def test_each_algorithm_is_accepted(ringcast_bin: Path, tmp_path: Path, backend: str, alg: str) -> None:
    args = ["--io-backend", backend]
    if alg == "HS256":
        args += ["--jwt-secret", SECRET]
    else:
        pem = tmp_path / f"{alg}.pem"
        pem.write_bytes(pem_public(KEYS[alg]))
        args += ["--jwt-public-key", str(pem)]
    srv = start(ringcast_bin, tmp_path, args)
    try:
        c = claims(channels={"subscribe": ["room.*"], "publish": ["room.1"]}, broadcast=True)
        a = Conn(srv.port)
        r = a.ask({"type": "auth", "token": sign(c, alg), "id": 1})
        assert r == {"type": "auth_ok", "user": "alice", "expires_at": c["exp"], "id": 1}
        b = authed(srv, sign(claims("bob", channels={"subscribe": ["room.*"]}), alg))
        assert b.ask({"type": "subscribe", "channel": "room.1"})["type"] == "subscribed"
        assert a.ask({"type": "publish", "channel": "room.1", "content": "hi"})["type"] == "published"
        m = b.recv()
        assert m is not None and m["type"] == "channel_message"
        assert m["user"] == "alice" and m["content"] == "hi"
        assert a.ask({"type": "broadcast", "content": "all"})["type"] == "broadcast_sent"
        m = b.recv()
        assert m is not None and m["type"] == "broadcast_message" and m["user"] == "alice"
    finally:
        srv.stop()


def test_hostile_tokens_are_refused_by_name_and_counted(
    ringcast_bin: Path, tmp_path: Path, backend: str
) -> None:
    pem = tmp_path / "es.pem"
    pem.write_bytes(pem_public(KEYS["ES256"]))
    srv = start(ringcast_bin, tmp_path, ["--io-backend", backend, "--jwt-public-key", str(pem),
                                         "--jwt-audience", "ringcast", "--jwt-issuer", "issuer.example"])
    ok = claims(aud="ringcast", iss="issuer.example")
    other_key = ec.generate_private_key(ec.SECP256R1())
    good = sign(ok, "ES256")
    header, body, sig = good.split(".")
    cases = [
        # alg none: PyJWT makes it unsigned.
        (jwt.encode(ok, None, algorithm="none"), "alg none", "alg_none"),
        # HMAC where only a public key is configured (key confusion).
        (sign(ok, "HS256"), "algorithm", "algorithm"),
        # The public key itself as the HMAC secret (PyJWT refuses to do this
        # with a PEM key, so the signature is made by hand with hmac).
        (hmac_with(pem_public(KEYS["ES256"]), ok), "algorithm", "algorithm"),
        # Over 8 KiB.
        (sign(dict(ok, pad="x" * 9000), "ES256"), "8 KiB", "too_large"),
        # Claims of the wrong type.
        (sign(dict(ok, sub=42), "ES256"), "claims", "claims"),
        (sign(dict(ok, broadcast="yes"), "ES256"), "claims", "claims"),
        (sign(dict(ok, channels={"subscribe": "chat"}), "ES256"), "claims", "claims"),
        (sign({k: v for k, v in ok.items() if k != "sub"}, "ES256"), "claims", "claims"),
        # Another key's signature.
        (sign(ok, "ES256", other_key), "signature", "signature"),
        # Expired (past the 30 s leeway), and not yet valid.
        (sign(dict(ok, exp=int(time.time()) - 120), "ES256"), "expired", "expired"),
        (sign(dict(ok, nbf=int(time.time()) + 120), "ES256"), "not valid yet", "not_yet_valid"),
        # Wrong audience, wrong issuer.
        (sign(dict(ok, aud="someone-else"), "ES256"), "audience", "audience"),
        (sign(dict(ok, iss="evil.example"), "ES256"), "issuer", "issuer"),
        # Truncated: the signature cut short, or a part missing.
        (good[:-10], "signature", "signature"),
        (f"{header}.{body}", "malformed", "malformed"),
        # Not base64.
        (f"{header}.@@not base64@@.{sig}", "malformed", "malformed"),
        ("!!!.???.***", "malformed", "malformed"),
    ]
    try:
        want: Dict[str, int] = {}
        for token, words, reason in cases:
            c = Conn(srv.port)
            r = c.ask({"type": "auth", "token": token})
            assert r["type"] == "error" and r["code"] == "unauthorized", (reason, r)
            assert words in r["message"], (reason, r)
            assert c.closed(), reason
            c.close()
            want[reason] = want.get(reason, 0) + 1
        good_conn = authed(srv, good)
        stats = good_conn.ask({"type": "get_stats"})
        failures = {k: v for k, v in stats["auth_failures"].items() if v}
        assert failures == want
    finally:
        srv.stop()


def hmac_with(secret: bytes, claims_: Dict[str, Any]) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims_).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_permissions_by_claim(hs_server: RingcastServer) -> None:
    a = authed(hs_server, sign(claims(channels={
        "subscribe": ["chat.public.*"], "publish": ["chat.public.room1"], "history": ["chat.public.room1"],
    })))
    spy = authed(hs_server, sign(claims("spy", channels={"subscribe": [">"]})))
    for ch in ["chat.public.room2", "chat.private.x"]:
        assert spy.ask({"type": "subscribe", "channel": ch})["type"] == "subscribed"
    denied = [
        {"type": "subscribe", "channel": "chat.private.x"},
        {"type": "subscribe", "channel": "chat.>"},  # wider than chat.public.*
        {"type": "subscribe", "channel": "*.public.room1"},
        {"type": "publish", "channel": "chat.public.room2", "content": 1},
        {"type": "publish", "channel": "chat.private.x", "content": 1},
        {"type": "history", "channel": "chat.public.room2"},
        {"type": "broadcast", "content": 1},
    ]
    for i, req in enumerate(denied):
        r = a.ask(dict(req, id=i))
        assert r["type"] == "error" and r["code"] == "permission_denied", (req, r)
        assert r["id"] == i
    # The connection stays, and nothing denied reached anyone.
    assert a.ask({"type": "ping"})["type"] == "pong"
    assert spy.quiet() == []
    allowed = [
        ({"type": "subscribe", "channel": "chat.public.room9"}, "subscribed"),
        ({"type": "subscribe", "channel": "chat.public.*"}, "subscribed"),
        ({"type": "publish", "channel": "chat.public.room1", "content": 1}, "published"),
        ({"type": "history", "channel": "chat.public.room1"}, "history"),
    ]
    for req, want in allowed:
        assert a.answer(req)["type"] == want, req


def test_namespaces_and_print_config(ringcast_bin: Path, tmp_path: Path, backend: str) -> None:
    cfg = tmp_path / "ringcast.toml"
    cfg.write_text(
        f'jwt_secret = "{SECRET}"\n'
        "[[namespace]]\n"
        'pattern = "public.>"\nsubscribe = "anyone"\npublish = "token"\n'
        "[[namespace]]\n"
        'pattern = "system.>"\nsubscribe = "token"\npublish = "nobody"\n'
    )
    import subprocess

    printed = subprocess.run(
        [str(ringcast_bin), "server", "--config", str(cfg), "--print-config"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert 'pattern = "public.>"' in printed and '"nobody"' in printed, printed
    assert SECRET not in printed
    srv = start(ringcast_bin, tmp_path, ["--io-backend", backend, "--config", str(cfg)])
    try:
        a = authed(srv, sign(claims(channels={"subscribe": ["system.alerts"],
                                             "publish": ["public.news", "system.alerts"]})))
        for req, want in [
            ({"type": "subscribe", "channel": "public.anything"}, "subscribed"),
            ({"type": "subscribe", "channel": "public.>"}, "subscribed"),
            ({"type": "publish", "channel": "public.news", "content": 1}, "published"),
            ({"type": "publish", "channel": "public.other", "content": 1}, "error"),
            ({"type": "subscribe", "channel": "system.alerts"}, "subscribed"),
            ({"type": "subscribe", "channel": "system.other"}, "error"),
            ({"type": "publish", "channel": "system.alerts", "content": 1}, "error"),
            ({"type": "subscribe", "channel": "elsewhere"}, "error"),
        ]:
            r = a.answer(req)
            assert r["type"] == want, (req, r)
            if want == "error":
                assert r["code"] == "permission_denied"
    finally:
        srv.stop()


@pytest.fixture
def short_server(ringcast_bin: Path, tmp_path: Path, backend: str) -> Iterator[RingcastServer]:
    """No leeway and a 2 s grace, so expiry tests take seconds."""
    srv = start(ringcast_bin, tmp_path, ["--io-backend", backend, "--jwt-secret", SECRET,
                                         "--jwt-leeway-secs", "0", "--token-refresh-grace-secs", "2"])
    yield srv
    srv.stop()


def test_expiry_with_a_refresh_in_time(short_server: RingcastServer) -> None:
    c = authed(short_server, sign(claims(ttl=2)))
    r = c.recv(timeout=6)
    assert r is not None and r["code"] == "token_expired", r
    new = claims(ttl=600)
    r = c.ask({"type": "refresh", "token": sign(new), "id": "r"})
    assert r == {"type": "refreshed", "expires_at": new["exp"], "id": "r"}
    # Past the grace: still served.
    time.sleep(3)
    assert c.ask({"type": "ping"})["type"] == "pong"


def test_expiry_without_a_refresh_is_cut_at_the_grace(short_server: RingcastServer) -> None:
    c = authed(short_server, sign(claims(ttl=2)))
    r = c.recv(timeout=6)
    assert r is not None and r["code"] == "token_expired"
    t0 = time.monotonic()
    r = c.recv(timeout=6)
    assert r is not None and r["code"] == "token_expired" and "not refreshed" in r["message"]
    assert 1.0 <= time.monotonic() - t0 <= 4.0
    assert c.closed()


def test_refresh_with_another_sub_is_refused(short_server: RingcastServer) -> None:
    c = authed(short_server, sign(claims("alice")))
    r = c.ask({"type": "refresh", "token": sign(claims("mallory"))})
    assert r["code"] == "unauthorized" and "another user" in r["message"]
    assert c.closed()


def test_refresh_that_narrows_drops_subscriptions(short_server: RingcastServer) -> None:
    c = authed(short_server, sign(claims(channels={"subscribe": ["a.*", "b.x"]})))
    for ch in ["a.one", "a.*", "b.x"]:
        assert c.ask({"type": "subscribe", "channel": ch})["type"] == "subscribed"
    r = c.ask({"type": "refresh", "token": sign(claims(channels={"subscribe": ["a.one"]}))})
    assert r["type"] == "refreshed"
    dropped = sorted(m["channel"] for m in (c.recv(), c.recv()) if m and m["reason"] == "permission_denied")
    assert dropped == ["a.*", "b.x"]
    pub = authed(short_server, sign(claims("p", channels={"publish": [">"]})))
    pub.ask({"type": "publish", "channel": "b.x", "content": 1})
    pub.ask({"type": "publish", "channel": "a.one", "content": 2})
    m = c.recv()
    assert m is not None and m["channel"] == "a.one", m


def test_client_token_provider_refreshes_before_expiry(short_server: RingcastServer) -> None:
    from ringcast import Client

    calls: List[int] = []

    def provider() -> str:
        calls.append(1)
        return sign(claims(ttl=4))

    with Client("127.0.0.1", short_server.port, token_provider=provider) as c:
        first = c.token_expires_at
        assert first is not None
        # Without refreshes the token would be cut at 4 s + the 2 s grace.
        time.sleep(8)
        assert c.connected
        assert c.ping() is not None
        assert len(calls) >= 3, calls
        assert c.token_expires_at is not None and c.token_expires_at > first
        assert c.refresh(sign(claims(ttl=600))) == c.token_expires_at


def test_aio_token_provider_refreshes_before_expiry(short_server: RingcastServer) -> None:
    import asyncio

    from ringcast import aio

    calls: List[int] = []

    async def provider() -> str:
        calls.append(1)
        return sign(claims(ttl=4))

    async def main() -> None:
        c = aio.Client("127.0.0.1", short_server.port, token_provider=provider)
        await c.connect()
        try:
            first = c.token_expires_at
            assert first is not None
            await asyncio.sleep(8)
            await c.ping()
            assert len(calls) >= 3, calls
            assert c.token_expires_at is not None and c.token_expires_at > first
        finally:
            await c.close()

    asyncio.run(main())
