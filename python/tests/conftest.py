"""Fixtures: the real ringcast server binary on a free loopback port.

The binary is ``$RINGCAST_BIN`` when set, else ``<repo>/target/release/ringcast``
(built with ``cargo build --release --bin ringcast`` when missing).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest
from helpers import REPO, RingcastServer, SilentServer, free_port


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A skipped test is written to $RINGCAST_SKIP_LOG (scripts/test.sh lists
    that file at the end of the run): a test that could not run must never
    read as a pass."""
    log = os.environ.get("RINGCAST_SKIP_LOG")
    if log and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"python {report.nodeid}: {reason}\n")


def _binary() -> Path:
    env = os.environ.get("RINGCAST_BIN")
    if env:
        path = Path(env)
        if not path.is_file():
            pytest.exit(f"RINGCAST_BIN={env} is not a file", returncode=2)
        return path
    path = REPO / "target" / "release" / "ringcast"
    if not path.is_file():
        subprocess.run(["cargo", "build", "--release", "--bin", "ringcast"], cwd=REPO, check=True)
    return path


@pytest.fixture(scope="session")
def ringcast_bin() -> Path:
    return _binary()


@pytest.fixture
def server(ringcast_bin: Path, tmp_path: Path) -> Iterator[RingcastServer]:
    """A fresh server (2 shards) on a free 127.0.0.1 port, stopped at teardown."""
    srv = RingcastServer(ringcast_bin, free_port(), tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def auth_server(ringcast_bin: Path, tmp_path: Path) -> Iterator[RingcastServer]:
    """A server started with ``--auth-token s3cret``."""
    srv = RingcastServer(
        ringcast_bin, free_port(), tmp_path / "server.log", ["--auth-token", "s3cret"]
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A listener that accepts connections and never answers."""
    srv = SilentServer()
    yield srv
    srv.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening."""
    return free_port()


def pytest_report_header() -> List[str]:
    return [f"ringcast binary: {os.environ.get('RINGCAST_BIN') or 'target/release/ringcast'}"]
