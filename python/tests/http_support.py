"""Helpers for the tests of the operator's HTTP side (the dashboard and
``ringcast top``): a server with its HTTP listener, steady paced load, the
API and /metrics read over plain HTTP, and a minimal WebDriver client for
chromedriver (the W3C protocol is JSON over HTTP, so the standard library
is enough; nothing like playwright or selenium is needed).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from helpers import DEADLINE, RingcastServer, free_port, port_listening, wait_until

from ringcast.protocol import FrameDecoder, encode


def cannot_run(why: str) -> None:
    """Skips the calling test, in plain sight (conftest.py writes it to the
    skip log), or fails it under RINGCAST_REQUIRE_ALL=1."""
    if os.environ.get("RINGCAST_REQUIRE_ALL") == "1":
        pytest.fail(f"cannot run: {why} (RINGCAST_REQUIRE_ALL=1 makes this a failure)")
    pytest.skip(why)


class HttpServer(RingcastServer):
    """A ringcast server with its HTTP listener on a free loopback port."""

    def __init__(self, binary: Path, log_path: Path, extra_args: List[str] = ()) -> None:  # type: ignore[assignment]
        self.http_port = free_port()
        super().__init__(
            binary,
            free_port(),
            log_path,
            ["--http-addr", f"127.0.0.1:{self.http_port}", *extra_args],
        )

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def base(self) -> str:
        return f"http://{self.http_addr}"

    def start(self) -> None:
        super().start()
        wait_until(lambda: port_listening(self.http_port), what="the HTTP listener")

    def get(self, path: str, key: Optional[str] = None) -> Tuple[int, bytes]:
        req = urllib.request.Request(self.base + path)
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=DEADLINE) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stats(self, key: Optional[str] = None) -> Dict[str, Any]:
        status, body = self.get("/v1/stats", key)
        assert status == 200, (status, body)
        return json.loads(body)

    def request_quantile(self, q: float) -> Optional[float]:
        """The upper bound (seconds) of the request-time bucket that holds
        quantile ``q`` since start, from /metrics: the dashboard's
        "since start" figure, computed here independently."""
        status, body = self.get("/metrics")
        assert status == 200, status
        by_le: Dict[float, float] = {}
        for line in body.decode().splitlines():
            if not line.startswith("ringcast_request_duration_seconds_bucket{"):
                continue
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            by_le[bound] = by_le.get(bound, 0.0) + float(value)
        buckets = sorted(by_le.items())
        if not buckets or buckets[-1][1] == 0:
            return None
        rank = q * buckets[-1][1]
        for i, (bound, n) in enumerate(buckets):
            if n >= rank:
                return bound if bound != float("inf") else buckets[i - 1][0]
        return None


class PacedLoad:
    """Steady traffic on the message port: ``pingers`` connections that each
    send ``rate`` pings a second, ``subscribers`` connections subscribed to
    ``channel``, and one publisher that publishes ``rate`` times a second to
    it. Every connection's answers are read and dropped. Known rates make
    the figures the dashboard and ``top`` show checkable."""

    def __init__(
        self,
        port: int,
        pingers: int = 3,
        subscribers: int = 2,
        rate: float = 50.0,
        channel: str = "dash.load",
    ) -> None:
        self.port = port
        self.rate = rate
        self.channel = channel
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self.socks: List[socket.socket] = []
        self.errors: List[BaseException] = []
        for _ in range(subscribers):
            s = self._connect()
            s.sendall(encode({"type": "subscribe", "channel": channel, "id": 1}))
            self._await(s, "subscribed")
            self._spawn(self._drain, s)
        for _ in range(pingers):
            s = self._connect()
            self._spawn(self._pace, s, {"type": "ping"})
        pub = self._connect()
        self._spawn(self._pace, pub, {"type": "publish", "channel": channel, "content": "tick"})

    @property
    def connections(self) -> int:
        return len(self.socks)

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE)
        self.socks.append(s)
        return s

    def _await(self, s: socket.socket, kind: str) -> None:
        dec = FrameDecoder()
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for m in dec.feed(s.recv(65536)):
                if m.get("type") == kind:
                    return
        raise AssertionError(f"no {kind}")

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=self._guard, args=(fn, *args), daemon=True)
        t.start()
        self._threads.append(t)

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except OSError as e:
            if not self._stop.is_set():
                self.errors.append(e)

    def _drain(self, s: socket.socket) -> None:
        s.settimeout(0.2)
        while not self._stop.is_set():
            try:
                if not s.recv(65536):
                    return
            except socket.timeout:
                continue

    def _pace(self, s: socket.socket, msg: Dict[str, Any]) -> None:
        frame = encode(msg)
        reader = threading.Thread(target=self._guard, args=(self._drain, s), daemon=True)
        reader.start()
        self._threads.append(reader)
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            s.sendall(frame)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # far behind (a stalled machine): do not burst

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=DEADLINE)
        for s in self.socks:
            s.close()


class WebDriver:
    """The few W3C WebDriver commands the dashboard test needs, spoken to a
    chromedriver child process driving headless Debian chromium."""

    def __init__(self, chromedriver: str, chromium: str, log_path: Path) -> None:
        self.port = free_port()
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={self.port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: port_listening(self.port), what="chromedriver")
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1440,1500",
                            "--hide-scrollbars",
                        ],
                    },
                }
            }
        }
        self.session = self._call("POST", "/session", caps, timeout=60)["sessionId"]

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"webdriver {method} {path}: {e.code} {e.read()[:500]!r}") from None

    def cmd(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_js(self, script: str, what: str, timeout: float = 30.0) -> Any:
        return wait_until(lambda: self.js(script), timeout=timeout, what=what)

    def click(self, css: str) -> None:
        el = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        ref = next(iter(el.values()))
        self.cmd("POST", f"/element/{ref}/click", {})

    def type_into(self, css: str, text: str) -> None:
        el = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        ref = next(iter(el.values()))
        self.cmd("POST", f"/element/{ref}/value", {"text": text})

    def screenshot(self, path: Path) -> None:
        png = base64.b64decode(self.cmd("GET", "/screenshot"))
        path.write_bytes(png)

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}", timeout=10)
        except (AssertionError, OSError):
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def browser() -> Tuple[str, str]:
    """Paths of chromium and chromedriver, or skips (in plain sight) when
    either is missing: scripts/test.sh installs both (Debian's chromium and
    chromium-driver)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        cannot_run(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(scripts/test.sh does)"
        )
    assert chromium is not None and driver is not None
    return chromium, driver


def figures(wd: WebDriver, ids: List[str]) -> Dict[str, str]:
    """The ``data-value`` of each element by id ("" when not yet set)."""
    return wd.js(
        "const out = {}; for (const id of arguments[0]) {"
        " const el = document.getElementById(id); out[id] = el ? el.dataset.value : null; }"
        " return out;",
        ids,
    )


def polls(wd: WebDriver) -> int:
    return int(wd.js("return Number(document.body.dataset.polls || 0)"))
