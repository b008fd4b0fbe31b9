"""The dashboard (``GET /``) in a real browser: headless Debian chromium,
driven through chromedriver, loads the page from a live server under steady
load, and the figures it renders are checked against what the server
itself reports (``/v1/stats``, ``/metrics``).

The screenshot is written to ``$RINGCAST_DASHBOARD_PNG`` when that is set
(``RINGCAST_DASHBOARD_PNG=docs/dashboard.png`` refreshes the README's
picture), else into the test's temporary directory; either way it is
checked to be a real PNG of the page.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from helpers import DEADLINE, REPO, wait_until
from http_support import HttpServer, PacedLoad, WebDriver, browser, figures, polls

from ringcast.protocol import encode

#: How far a rate the page shows may be from the rate measured here, as a
#: fraction: both are averages over a second or two of paced load on a
#: shared machine, taken at slightly different moments.
RATE_TOLERANCE = 0.35


@pytest.fixture
def http_server(ringcast_bin: Path, tmp_path: Path) -> Iterator[HttpServer]:
    srv = HttpServer(ringcast_bin, tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def wd(tmp_path: Path) -> Iterator[WebDriver]:
    chromium, driver = browser()
    d = WebDriver(driver, chromium, tmp_path / "chromedriver.log")
    yield d
    d.close()


def send_invalid_json(port: int, count: int) -> None:
    """``count`` frames that are not JSON, on one connection: the server
    answers each with ``invalid_json`` (and keeps the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        bad = b"{not json"
        s.sendall((struct.pack(">I", len(bad)) + bad) * count)
        got = b""
        while got.count(b"invalid_json") < count:
            data = s.recv(65536)
            assert data, "closed before answering"
            got += data


def measured_rates(srv: HttpServer, secs: float = 2.0) -> dict:
    """Per-second rates over ``secs``, from two /v1/stats samples."""
    a = srv.stats()
    t0 = time.monotonic()
    time.sleep(secs)
    b = srv.stats()
    dt = time.monotonic() - t0

    def per_s(f):  # type: ignore[no-untyped-def]
        return (f(b) - f(a)) / dt

    return {
        "msgs-in-rate": per_s(lambda s: s["total_messages"]),
        "deliveries-rate": per_s(lambda s: s["broadcasts_delivered"] + s["channel_deliveries"]),
        "msgs-out-rate": per_s(
            lambda s: s["total_messages"] + s["broadcasts_delivered"] + s["channel_deliveries"]
        ),
        "bytes-out-rate": per_s(lambda s: s["bytes_sent"]),
        "bytes-in-rate": per_s(lambda s: s["bytes_received"]),
    }


def test_the_dashboard_shows_the_servers_figures_under_load(
    http_server: HttpServer, wd: WebDriver, tmp_path: Path
) -> None:
    send_invalid_json(http_server.port, 3)
    load = PacedLoad(http_server.port, pingers=3, subscribers=2, rate=50.0)
    try:
        wait_until(
            lambda: http_server.stats()["connected_clients"] == load.connections,
            what="the load's connections",
        )
        wd.open(http_server.base + "/")
        # Rates need two polls; the latency window wants a few.
        wait_until(lambda: polls(wd) >= 4, timeout=30, what="four polls of the page")
        expected = measured_rates(http_server)
        shown = figures(
            wd,
            [
                "clients",
                "msgs-in-rate",
                "msgs-out-rate",
                "deliveries-rate",
                "bytes-in-rate",
                "bytes-out-rate",
                "slow-consumers",
                "errors-total",
                "p50",
                "p99",
                "p50-total",
                "p99-total",
                "backplane",
                "subscriptions-count",
            ],
        )
        stats = http_server.stats()
        p50_here = http_server.request_quantile(0.5)
        p99_here = http_server.request_quantile(0.99)
        errors = wd.js(
            "return Array.from(document.querySelectorAll('#errors tbody tr'))"
            ".map(tr => [tr.dataset.code, Number(tr.dataset.value)])"
        )
        status = wd.js("return document.getElementById('status').dataset.state")
        png = Path(os.environ.get("RINGCAST_DASHBOARD_PNG") or tmp_path / "dashboard.png")
        if not png.is_absolute():
            png = REPO / png
        wd.screenshot(png)
    finally:
        load.stop()
    assert not load.errors, load.errors

    assert status == "ok"
    assert int(shown["clients"]) == stats["connected_clients"] == load.connections
    # 3 pingers and a publisher at 50/s: 200 requests a second; 2 subscribers
    # get each of 50 publishes: 100 deliveries a second.
    assert 200 * (1 - RATE_TOLERANCE) < expected["msgs-in-rate"] < 200 * (1 + RATE_TOLERANCE)
    for key, want in expected.items():
        got = float(shown[key])
        assert abs(got - want) <= RATE_TOLERANCE * want, f"{key}: page {got}, server {want}"
    assert int(shown["slow-consumers"]) == stats["slow_consumer_disconnects"] == 0
    assert int(shown["errors-total"]) == stats["protocol_errors"] == 3
    assert errors == [["invalid_json", 3]]
    assert shown["backplane"] == "none"
    assert int(shown["subscriptions-count"]) == stats["subscriptions"] == 2
    # Request time since start: the page's bucket bound is the one computed
    # here from /metrics (read a moment later: allow the next bucket up).
    assert p50_here is not None and p99_here is not None
    assert float(shown["p50-total"]) <= p50_here <= 2 * float(shown["p50-total"]) + 1e-9
    assert float(shown["p99-total"]) <= p99_here <= 2 * float(shown["p99-total"]) + 1e-9
    assert float(shown["p50"]) <= float(shown["p99"])
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000 and height >= 800, (width, height)


def test_the_page_loads_nothing_but_its_own_server(http_server: HttpServer, wd: WebDriver) -> None:
    """Every resource the browser fetched came from the server itself (the
    page must work on a machine with no network)."""
    with urllib.request.urlopen(http_server.base + "/", timeout=DEADLINE) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = r.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'none';") and "connect-src 'self'" in csp, csp
    wd.open(http_server.base + "/")
    wait_until(lambda: polls(wd) >= 1, timeout=30, what="a poll of the page")
    urls = wd.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls, "the page fetched nothing"
    assert all(u.startswith(http_server.base + "/") for u in urls), urls


def test_the_page_asks_for_the_key_once_and_lists_and_disconnects_clients(
    ringcast_bin: Path, tmp_path: Path, wd: WebDriver
) -> None:
    """With ``--api-key`` the page still loads, asks for the key when the API
    answers 401, keeps it for the tab (a reload does not ask again), lists
    the connections, and its disconnect button (two clicks) cuts the chosen
    client, which first gets ``error`` ``kicked``."""
    srv = HttpServer(ringcast_bin, tmp_path / "server.log", ["--api-key", "s3cret"])
    srv.start()
    victim = socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE)
    other = socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE)
    try:
        wait_until(lambda: srv.stats("s3cret")["connected_clients"] == 2, what="two clients")
        listed = json.loads(srv.get("/v1/connections?sort=cid", "s3cret")[1])["connections"]
        victim_port = victim.getsockname()[1]
        victim_id = next(c["client_id"] for c in listed if c["addr"].endswith(f":{victim_port}"))

        wd.open(srv.base + "/")
        wd.wait_js(
            "return !document.getElementById('key-form').hidden", what="the key form", timeout=20
        )
        assert polls(wd) == 0
        assert "unauthorized" in wd.js("return document.getElementById('key-error').textContent")
        wd.type_into("#key-input", "s3cret")
        wd.click("#key-form button")
        wait_until(lambda: polls(wd) >= 2, timeout=30, what="polls with the key")
        assert wd.js("return document.getElementById('key-form').hidden") is True
        assert int(figures(wd, ["clients"])["clients"]) == 2
        # Kept for the tab: a reload polls at once, without asking.
        # (A mark on the old page tells it apart from the reloaded one.)
        wd.js("window.oldPage = true; location.reload()")
        wd.wait_js(
            "return !window.oldPage && Number(document.body.dataset.polls || 0) >= 1",
            what="polls after a reload",
        )
        assert wd.js("return document.getElementById('key-form').hidden") is True

        rows = wd.wait_js(
            "const r = Array.from(document.querySelectorAll('#connections tbody tr'))"
            ".map(tr => tr.dataset.clientId); return r.length == 2 ? r : null",
            what="two connection rows",
        )
        assert sorted(rows) == sorted(c["client_id"] for c in listed)
        button = f'#connections button[data-client-id="{victim_id}"]'
        wd.click(button)
        assert wd.js(f"return document.querySelector('{button}').textContent") == "confirm"
        assert srv.stats("s3cret")["connected_clients"] == 2, "one click must not cut"
        wd.click(button)
        got = b""
        victim.settimeout(DEADLINE)
        while True:
            data = victim.recv(65536)
            if not data:
                break
            got += data
        assert b'"code":"kicked"' in got, got
        assert b"disconnected from the dashboard" in got, got
        wait_until(
            lambda: "disconnected " + victim_id
            in wd.js("return document.getElementById('action-result').textContent"),
            what="the page's confirmation",
        )
        wait_until(lambda: srv.stats("s3cret")["connected_clients"] == 1, what="one client left")
    finally:
        victim.close()
        other.close()
        srv.stop()
