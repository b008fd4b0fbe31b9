"""The operator's API names the users that tokens prove (issues 25 and 26):
`GET /v1/connections` shows each connection's JWT `sub` as `user` and
filters by it, closed connections keep it, and `POST /v1/disconnect
{user}` cuts every connection of that user (each told `kicked`) and no
other. Tokens are made by PyJWT. On both I/O backends."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from helpers import RingcastServer, free_port
from test_tokens import SECRET, Conn, authed, claims, sign

BACKENDS = ["auto", "epoll"]
KEY = "an-operator-key"


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, ringcast_bin: Path, tmp_path: Path) -> Iterator[RingcastServer]:
    http_port = free_port()
    srv = RingcastServer(
        ringcast_bin,
        free_port(),
        tmp_path / "server.log",
        ["--io-backend", str(request.param), "--jwt-secret", SECRET,
         "--http-addr", f"127.0.0.1:{http_port}", "--api-key", KEY],
    )
    srv.start()
    srv.http_port = http_port  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def api(srv: RingcastServer, method: str, path: str, body: Any = None) -> Dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{srv.http_port}{path}",  # type: ignore[attr-defined]
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_for(check: Any, what: str, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        v = check()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_listings_show_the_tokens_user_and_disconnect_by_user_cuts_only_them(server: RingcastServer) -> None:
    alice1 = authed(server, sign(claims("alice")))
    alice2 = authed(server, sign(claims("alice")))
    bob = authed(server, sign(claims("bob")))
    anon = Conn(server.port)  # connected, not authenticated: no user
    listing = wait_for(
        lambda: (lambda r: r if r["total"] >= 4 else None)(api(server, "GET", "/v1/connections?state=open")),
        "four open connections",
    )
    users = sorted(str(c["user"]) for c in listing["connections"])
    assert users == ["None", "alice", "alice", "bob"], listing
    only = api(server, "GET", "/v1/connections?user=alice")
    assert only["total"] == 2 and {c["user"] for c in only["connections"]} == {"alice"}, only

    r = api(server, "POST", "/v1/disconnect", {"user": "alice", "reason": "account closed"})
    assert r == {"disconnected": 2}, r
    for c in (alice1, alice2):
        m = c.recv()
        assert m is not None and m["type"] == "error" and m["code"] == "kicked", m
        assert "account closed" in m["message"], m
        assert c.closed()
    # Bob and the anonymous connection are untouched.
    assert bob.ask({"type": "ping", "id": 1})["type"] == "pong"
    assert anon.ask({"type": "auth", "token": sign(claims("carol"))})["type"] == "auth_ok"
    closed = wait_for(
        lambda: (lambda r: r if r["total"] >= 2 else None)(
            api(server, "GET", "/v1/connections?state=closed&user=alice")),
        "alice's two closed connections",
    )
    assert {(c["user"], c["reason"]) for c in closed["connections"]} == {("alice", "kicked")}, closed
    carol = api(server, "GET", "/v1/connections?user=carol")
    assert carol["total"] == 1, carol
    for c in (bob, anon):
        c.close()
