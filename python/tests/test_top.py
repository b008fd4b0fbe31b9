"""``ringcast top`` in a pseudo-terminal against a live server: its screen
shows the server's figures, and it leaves the terminal as it found it on
``q``, Ctrl-C and SIGTERM."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from helpers import DEADLINE, wait_until
from http_support import HttpServer, PacedLoad

#: CSI sequences (cursor moves, clears, modes) and the few two-byte escapes.
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[=>78]")
ENTER_ALT, LEAVE_ALT = b"\x1b[?1049h", b"\x1b[?1049l"
HIDE_CURSOR, SHOW_CURSOR = b"\x1b[?25l", b"\x1b[?25h"


class Top:
    """``ringcast top`` on the child side of a pty of 120x40."""

    def __init__(self, binary: Path, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes ringcast top
            os.execv(str(binary), [str(binary), "top", *args])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)
        self.out = b""
        self.status: Optional[int] = None

    def read(self, timeout: float = 0.2) -> None:
        while True:
            r, _, _ = select.select([self.fd], [], [], timeout)
            if not r:
                return
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed its side
                return
            if not data:
                return
            self.out += data
            timeout = 0.05

    def text(self) -> str:
        return ANSI.sub(b"\n", self.out).decode("utf-8", "replace")

    def screens_with(self, needle: str, timeout: float = DEADLINE) -> str:
        def seen() -> Optional[str]:
            self.read()
            t = self.text()
            return t if needle in t else None

        return wait_until(seen, timeout=timeout, what=f"{needle!r} on top's screen")

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, timeout: float = DEADLINE) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.read(0.05)
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"top did not exit; screen:\n{self.text()[-2000:]}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def http_server(ringcast_bin: Path, tmp_path: Path) -> Iterator[HttpServer]:
    srv = HttpServer(ringcast_bin, tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


def assert_left_clean(out: bytes) -> None:
    """The alternate screen was entered and left, and the cursor shown
    again, in that order, with nothing drawn after."""
    assert ENTER_ALT in out and HIDE_CURSOR in out
    leave = out.rfind(LEAVE_ALT)
    assert leave > out.rfind(ENTER_ALT), "still on the alternate screen"
    assert out.rfind(SHOW_CURSOR) > out.rfind(HIDE_CURSOR), "cursor left hidden"
    assert ANSI.sub(b"", out[leave:]).strip() == b"", out[leave:]


def figure(text: str, label: str) -> List[str]:
    """Every value drawn after ``label`` (one per refresh)."""
    return re.findall(re.escape(label) + r" ([0-9][0-9,.]*)", text)


def test_top_shows_the_servers_figures_and_quits_on_q(
    ringcast_bin: Path, http_server: HttpServer
) -> None:
    load = PacedLoad(http_server.port, pingers=2, subscribers=1, rate=40.0)
    top = Top(ringcast_bin, "--http-addr", http_server.http_addr, "--interval", "0.5")
    try:
        wait_until(
            lambda: http_server.stats()["connected_clients"] == load.connections,
            what="the load's connections",
        )
        # Wait for a screen with rates (two samples) and this many clients.
        text = top.screens_with(f"clients {load.connections} ")
        text = top.screens_with("msgs in/s ")
        wait_until(
            lambda: (top.read(), [v for v in figure(top.text(), "msgs in/s") if v != "…"])[1],
            what="a rate on top's screen",
        )
        # Every load connection is listed (the table has room for them).
        ports = [f"127.0.0.1:{s.getsockname()[1]} " for s in load.socks]
        wait_until(
            lambda: (top.read(), all(p in top.text()[-6000:] for p in ports))[1],
            what="the load's connections in top's table",
        )
        text = top.text()
        stats = http_server.stats()
        top.send(b"q")
        code = top.wait()
    finally:
        load.stop()
        top.close()
    assert code == 0, top.text()[-2000:]
    assert_left_clean(top.out)
    assert figure(text, "clients")[-1] == str(stats["connected_clients"])
    assert f"ringcast top · http://{http_server.http_addr}" in text
    assert stats["io_backend"] in text
    assert f"{load.connections} open, top by rate" in text
    # 2 pingers and a publisher at 40/s: about 120 requests a second.
    rates = [float(v.replace(",", "")) for v in figure(text, "msgs in/s") if v != "…"]
    assert 60 < rates[-1] < 180, rates


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_top_restores_the_terminal_on_ctrl_c_and_sigterm(
    ringcast_bin: Path, http_server: HttpServer, how: str
) -> None:
    top = Top(ringcast_bin, "--http-addr", http_server.http_addr)
    try:
        top.screens_with("clients 0 ")
        if how == "ctrl-c":
            top.send(b"\x03")
        else:
            os.kill(top.pid, signal.SIGTERM)
        code = top.wait()
    finally:
        top.close()
    assert code == 0, top.text()[-2000:]
    assert_left_clean(top.out)


def test_top_says_when_the_server_cannot_be_reached(ringcast_bin: Path) -> None:
    from helpers import free_port

    addr = f"127.0.0.1:{free_port()}"
    top = Top(ringcast_bin, "--http-addr", addr)
    try:
        top.screens_with(f"! cannot reach http://{addr}")
        top.send(b"q")
        assert top.wait() == 0
    finally:
        top.close()
    assert_left_clean(top.out)
