"""``python -m ringcast demo|interactive|performance`` as a user runs it."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest
from helpers import DEADLINE, RingcastServer

import ringcast
from ringcast.cli import Command, parse_command


def ringcast_cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "ringcast", *args]


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ringcast_cli(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def addr(server: RingcastServer) -> List[str]:
    return ["--host", server.host, "--port", str(server.port)]


def test_demo_exits_0_and_prints_every_answer(server: RingcastServer) -> None:
    r = run_cli("demo", *addr(server))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "pong in" in out and "client_id 127.0.0.1:" in out
    assert '"Hello, ringcast!" (echoed by ringcast' in out
    assert "sent to 0 other clients" in out
    assert "connected_clients" in out and "uptime_seconds" in out
    assert "ack at" in out
    assert out.rstrip().endswith("demo complete")


def test_demo_explains_the_custom_types_unknown_type(server: RingcastServer) -> None:
    """The stock server has no handler for the demo's custom type: its
    ``unknown_type`` answer is printed as an ordinary answer, followed by
    why it is expected and how an application registers a handler, so the
    showcase does not end on what looks like a failure."""
    r = run_cli("demo", *addr(server))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    answer = next(i for i, line in enumerate(lines) if "← error unknown_type" in line)
    assert lines[answer - 1].startswith("custom") and "custom_type" in lines[answer - 1]
    note = [line.strip() for line in lines[answer + 1 : answer + 4]]
    assert note == [
        "expected: the stock server has no handler for custom_type, so it answers unknown_type.",
        "An application that embeds the server answers it by registering one:",
        'Server::builder().handler("custom_type", ...) (README.md, "Embedding the server").',
    ]
    # Indented under the answer, like its other lines; then the last step.
    assert all(line.startswith(" " * 16) for line in lines[answer + 1 : answer + 4])
    assert lines[answer + 4].startswith("message")
    # --json prints the frames alone, without the explanation.
    r = run_cli("demo", "--json", *addr(server))
    assert r.returncode == 0, r.stderr
    assert "expected:" not in r.stdout


def test_demo_is_the_default_mode_and_json_prints_frames(server: RingcastServer) -> None:
    r = run_cli("--json", *addr(server))
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in r.stdout.splitlines()]
    assert [f["type"] for f in frames] == [
        "pong",
        "echo_response",
        "broadcast_sent",
        "server_stats",
        "error",
        "message_ack",
    ]


def test_demo_without_a_server_exits_1(closed_port: int) -> None:
    r = run_cli("demo", "--host", "127.0.0.1", "--port", str(closed_port), "--timeout", "2")
    assert r.returncode == 1
    assert "error" in r.stderr and str(closed_port) in r.stderr


def test_interactive_commands_through_stdin(server: RingcastServer) -> None:
    script = "\n".join(
        [
            "/ping",
            "/echo hi there",
            "/broadcast yo",
            "/stats",
            '/custom order {"qty": 3}',
            "/custom order [1]",
            "hello plain text",
            "/echo",
            "/nope",
            "/help",
            "",
            "/exit",
            "/ping",  # after /exit: never sent
        ]
    )
    r = run_cli("interactive", *addr(server), stdin=script + "\n")
    assert r.returncode == 0, r.stderr
    out, err = r.stdout, r.stderr
    assert out.count("pong in") == 1
    assert '"hi there" (echoed by ringcast' in out
    assert "sent to 0 other clients" in out
    assert "total_messages" in out
    assert 'order {"qty":3}' in out and "error unknown_type" in out
    assert '"hello plain text"' in out and "ack at" in out
    assert "/broadcast <text>" in out  # the help text
    assert "custom fields must be a JSON object" in err
    assert "usage: /echo <text>" in err
    assert "unknown command /nope" in err
    with ringcast.Client(server.host, server.port) as c:
        by_type = c.get_stats()["messages_by_type"]
    assert (by_type["ping"], by_type["echo"], by_type["message"], by_type["custom"]) == (1, 1, 1, 1)


def test_interactive_prints_broadcasts_from_others(server: RingcastServer) -> None:
    proc = subprocess.Popen(
        ringcast_cli("interactive", *addr(server)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: "queue.Queue[str]" = queue.Queue()
    assert proc.stdout is not None and proc.stdin is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()

    def wait_line(fragment: str) -> str:
        while True:
            line = lines.get(timeout=DEADLINE)
            if fragment in line:
                return line

    try:
        proc.stdin.write("/ping\n")
        proc.stdin.flush()
        wait_line("pong in")  # connected and answering
        with ringcast.Client(server.host, server.port) as other:
            assert other.broadcast("hello from outside") == 1
            line = wait_line("hello from outside")
            assert line.startswith("[broadcast from 127.0.0.1:")
        proc.stdin.write("/exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_performance_mode(server: RingcastServer) -> None:
    r = run_cli("performance", *addr(server), "--count", "500", "--window", "16")
    assert r.returncode == 0, r.stderr
    assert "blocking echo round trips:" in r.stdout
    assert "asyncio pipelined echo (window 16):" in r.stdout
    assert "TCPClient (seed API) streamed echo:" in r.stdout
    assert r.stdout.count("msgs/s") == 3
    r = run_cli("performance", *addr(server), "--count", "200", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [row["count"] for row in rows] == [40, 200, 200]
    assert all(row["msgs_per_sec"] > 0 for row in rows)
    assert rows[0]["p50_ms"] > 0 and rows[2]["p50_ms"] is None


def test_performance_mode_with_auth(auth_server: RingcastServer) -> None:
    r = run_cli("performance", *addr(auth_server), "--count", "100", "--token", "s3cret")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("msgs/s") == 3


def test_version_flag() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and ringcast.__version__ in r.stdout


@pytest.mark.parametrize(
    "line,expected",
    [
        ("/ping", Command("ping")),
        ("/echo  hi there ", Command("echo", "hi there")),
        ("/echo", Command("bad", "usage: /echo <text>")),
        ("/broadcast yo", Command("broadcast", "yo")),
        ("/stats", Command("stats")),
        ("/exit", Command("exit")),
        ("/quit", Command("exit")),
        ("/help", Command("help")),
        ("   ", Command("empty")),
        ("hello world\r\n", Command("text", "hello world")),
        ("/custom t", Command("custom", "t", {})),
        ('/custom order {"qty": 3}', Command("custom", "order", {"qty": 3})),
    ],
)
def test_parse_command(line: str, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize("line", ["/custom t [1]", "/custom t {", "/custom", "/nope", "/"])
def test_parse_command_rejects(line: str) -> None:
    assert parse_command(line).kind == "bad"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ringcast-py"
    if not script.exists():
        pytest.skip("test_console_script_is_installed: no ringcast-py beside this interpreter")
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"ringcast {ringcast.__version__}"
