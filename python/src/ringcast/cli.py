"""``python -m ringcast demo|interactive|performance``: the seed's three client modes.

- ``demo`` (the default) walks through ping, echo, broadcast, stats, a
  custom message and a plain-text message, printing each request and its
  answer. The stock server has no handler for the custom type, so its
  answer is ``unknown_type``: the demo says under it that this is expected
  and how an application registers a handler.
- ``interactive`` reads the seed's commands (``/ping``, ``/echo <text>``,
  ``/broadcast <text>``, ``/stats``, ``/custom <type> [json]``, ``/help``,
  ``/exit``) and plain text from standard input, one per line; broadcasts
  from other clients are printed as they arrive. It reconnects by itself.
- ``performance`` measures blocking round trips and pipelined asyncio echos.

``--compress zstd|deflate`` (every mode) asks the server for per-frame
compression with ``hello``; the connection stays uncompressed when the
server refuses.

The exit status is 1 when the connection or a request fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import perf, protocol
from ._version import __version__
from .backoff import ReconnectPolicy
from .client import Client
from .errors import CodecUnavailable, ConnectionClosed, RingcastError, ServerError
from .protocol import Message

LABEL_W = 14

#: The custom type the demo sends. The stock server has no handler for it,
#: so its answer is an ``unknown_type`` error: the demo says that this is
#: expected, and how an application adds a handler.
CUSTOM_TYPE = "custom_type"

#: What the demo prints under the ``unknown_type`` answer to
#: :data:`CUSTOM_TYPE`, so that a new user does not take it for a failure
#: (the same words as the Rust client's demo).
CUSTOM_TYPE_NOTE = (
    f"expected: the stock server has no handler for {CUSTOM_TYPE}, so it answers unknown_type.",
    "An application that embeds the server answers it by registering one:",
    f'Server::builder().handler("{CUSTOM_TYPE}", ...) (README.md, "Embedding the server").',
)

HELP = """\
commands:
  /ping                   ping the server, print the round trip
  /echo <text>            have the server echo <text>
  /broadcast <text>       send <text> to every other client
  /stats                  print the server's statistics
  /custom <type> [json]   send a message of any type, with a JSON object of fields
  /help                   this list
  /exit                   leave (so does end of input)
  anything else           sent as a plain text message"""


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _quoted(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def describe_answer(m: Message, rtt: float) -> List[str]:
    """Lines that describe an answer frame, for people."""
    kind = m.get("type")
    if kind == "pong":
        return [f"pong in {_fmt_ms(rtt)} (client_id {m.get('client_id', '?')})"]
    if kind == "echo_response":
        return [
            f"{_quoted(m.get('content'))} (echoed by {m.get('echoed_by', '?')}, {_fmt_ms(rtt)})"
        ]
    if kind == "broadcast_sent":
        n = m.get("recipients", 0)
        return [f"sent to {n} other client{'' if n == 1 else 's'} ({_fmt_ms(rtt)})"]
    if kind == "server_stats":
        rows = [(k, v) for k, v in m.items() if k not in ("type", "id")]
        return [f"{k:<27}{json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in rows]
    if kind == "message_ack":
        return [f"ack at {m.get('timestamp', '?')} ({_fmt_ms(rtt)})"]
    if kind == "auth_ok":
        return ["authenticated"]
    if kind == "error":
        return [f"error {m.get('code', '?')}: {m.get('message', '')}"]
    return [json.dumps(m, ensure_ascii=False)]


def describe_pushed(m: Message) -> str:
    """One line for an unsolicited frame."""
    if m.get("type") == "broadcast_message":
        content = m.get("content")
        shown = content if isinstance(content, str) else _quoted(content)
        return f"[broadcast from {m.get('from', '?')}] {shown}"
    if m.get("type") == "error":
        return f"[server] error {m.get('code', '?')}: {m.get('message', '')}"
    return f"[pushed] {json.dumps(m, ensure_ascii=False)}"


class _Printer:
    """Prints lines whole, from the main thread and the receiving thread."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self._lock = threading.Lock()
        #: Set while input() shows this prompt on a terminal.
        self.prompt: Optional[str] = None

    def line(self, text: str, err: bool = False) -> None:
        with self._lock:
            stream = sys.stderr if err else sys.stdout
            stream.write(text + "\n")
            stream.flush()

    def pushed(self, m: Message) -> None:
        text = json.dumps(m, ensure_ascii=False) if self.json_mode else describe_pushed(m)
        prompt = self.prompt
        if prompt is None:
            self.line(text)
            return
        # A frame arrived while the user types: print it above the input
        # line, then redraw the prompt and what was typed so far.
        typed = ""
        readline = sys.modules.get("readline")
        if readline is not None:
            typed = readline.get_line_buffer()
        with self._lock:
            sys.stdout.write(f"\r\x1b[K{text}\n{prompt}{typed}")
            sys.stdout.flush()


def exchange(
    client: Client,
    out: _Printer,
    label: str,
    shown: str,
    message: Message,
) -> Message:
    """Sends one request, prints it and its answer; returns the answer."""
    if not out.json_mode:
        out.line(f"{label:<{LABEL_W}}→ {shown}")
    fields = {k: v for k, v in message.items() if k != "type"}
    start = time.perf_counter()
    answer = client.request(str(message["type"]), fields, check=False)
    rtt = time.perf_counter() - start
    if out.json_mode:
        out.line(json.dumps(answer, ensure_ascii=False))
    else:
        for i, text in enumerate(describe_answer(answer, rtt)):
            out.line(" " * LABEL_W + (f"  {text}" if i else f"← {text}"))
    return answer


def _connect(args: argparse.Namespace, out: _Printer, reconnect: bool) -> Client:
    return Client(
        args.host,
        args.port,
        timeout=args.timeout,
        auth_token=args.token,
        message_callback=out.pushed,
        reconnect=ReconnectPolicy() if reconnect else None,
        compression=args.compress,
    )


def _describe_hello(client: Client) -> Optional[str]:
    """One line on the negotiation, when compression was asked for."""
    if client.compression_offer is None:
        return None
    info = client.server_info
    if info is None:
        return "compression: none (the server does not know hello)"
    chosen = client.compression or "none (refused by the server)"
    return (
        f"compression: {chosen}; server {info.get('server', '?')}, "
        f"threshold {info.get('compression_threshold', '?')} bytes, "
        f"features {','.join(map(str, info.get('features') or []))}"
    )


def demo(args: argparse.Namespace) -> int:
    """The seed's demo: every request type once."""
    out = _Printer(args.json)
    with _connect(args, out, reconnect=False) as client:
        if not args.json:
            local = client.local_address
            where = f"{local[0]}:{local[1]}" if local else "?"
            out.line(
                f"ringcast python client demo: connected to {args.host}:{args.port} from {where}"
            )
            hello = _describe_hello(client)
            if hello is not None:
                out.line(hello)
            out.line("")
        steps: List[Tuple[str, str, Message]] = [
            ("ping", f"ping ({client.client_info})", protocol.ping_message(client.client_info)),
            ("echo", _quoted("Hello, ringcast!"), protocol.echo_message("Hello, ringcast!")),
            (
                "broadcast",
                _quoted("Hello, everyone!"),
                protocol.broadcast_message("Hello, everyone!"),
            ),
            ("stats", "get_stats", protocol.stats_message()),
            (
                "custom",
                f'{CUSTOM_TYPE} {{"data":"value"}}',
                protocol.custom_message(CUSTOM_TYPE, {"data": "value"}),
            ),
            (
                "message",
                _quoted("Just a plain message"),
                protocol.text_message("Just a plain message"),
            ),
        ]
        for label, shown, message in steps:
            answer = exchange(client, out, label, shown, message)
            if (
                not args.json
                and message["type"] == CUSTOM_TYPE
                and answer.get("type") == "error"
                and answer.get("code") == "unknown_type"
            ):
                # The expected answer, not a failure: say so, and how an
                # application handles the type.
                for text in CUSTOM_TYPE_NOTE:
                    out.line(" " * LABEL_W + f"  {text}")
        if not args.json:
            out.line("")
            out.line("demo complete")
    return 0


class Command(NamedTuple):
    """One parsed input line. ``kind`` is ``ping``, ``echo``, ``broadcast``,
    ``stats``, ``custom``, ``text``, ``help``, ``exit``, ``empty`` or
    ``bad``; ``arg`` is the text (for ``bad``: what to tell the user, for
    ``custom``: the type); ``fields`` are a custom message's fields."""

    kind: str
    arg: str = ""
    fields: Optional[Dict[str, Any]] = None


def parse_command(line: str) -> Command:
    """Parses one line of interactive input (the commands of ``HELP``)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return Command("empty")
    if not line.startswith("/"):
        return Command("text", line)
    parts = line[1:].split(None, 1)
    cmd = parts[0] if parts else ""
    arg = parts[1].strip() if len(parts) > 1 else ""
    if cmd in ("ping", "stats"):
        return Command(cmd)
    if cmd in ("echo", "broadcast"):
        return Command(cmd, arg) if arg else Command("bad", f"usage: /{cmd} <text>")
    if cmd in ("help", "?"):
        return Command("help")
    if cmd in ("exit", "quit"):
        return Command("exit")
    if cmd == "custom":
        tparts = arg.split(None, 1)
        if not tparts:
            return Command("bad", "usage: /custom <type> [json object]")
        fields: Dict[str, Any] = {}
        if len(tparts) > 1:
            try:
                value = json.loads(tparts[1])
            except ValueError as e:
                return Command("bad", f"custom fields are not valid JSON: {e}")
            if not isinstance(value, dict):
                return Command("bad", "custom fields must be a JSON object")
            fields = value
        return Command("custom", tparts[0], fields)
    return Command("bad", f"unknown command /{cmd} (/help lists them)")


def _execute(client: Client, out: _Printer, cmd: Command) -> bool:
    """Runs one command; returns False to stop."""
    kind, arg = cmd.kind, cmd.arg
    if kind == "empty":
        return True
    if kind == "exit":
        return False
    if kind == "help":
        out.line(HELP)
        return True
    if kind == "bad":
        out.line(arg, err=True)
        return True
    try:
        if kind == "ping":
            exchange(client, out, "ping", "ping", protocol.ping_message(client.client_info))
        elif kind == "echo":
            exchange(client, out, "echo", _quoted(arg), protocol.echo_message(arg))
        elif kind == "broadcast":
            exchange(client, out, "broadcast", _quoted(arg), protocol.broadcast_message(arg))
        elif kind == "stats":
            exchange(client, out, "stats", "get_stats", protocol.stats_message())
        elif kind == "custom":
            fields = cmd.fields or {}
            shown = f"{arg} {json.dumps(fields, separators=(',', ':'))}"
            exchange(client, out, "custom", shown, protocol.custom_message(arg, fields))
        elif kind == "text":
            exchange(client, out, "message", _quoted(arg), protocol.text_message(arg))
    except (RingcastError, ValueError) as e:
        out.line(f"error: {e}", err=True)
    return True


def interactive(args: argparse.Namespace) -> int:
    """The seed's interactive mode, reading standard input."""
    out = _Printer(args.json)
    tty = sys.stdin.isatty()
    with _connect(args, out, reconnect=True) as client:
        if tty:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            out.line(
                f"connected to {args.host}:{args.port}; /help lists the commands, /exit leaves"
            )
            hello = _describe_hello(client)
            if hello is not None:
                out.line(hello)
            prompt = "ringcast> "
            while True:
                out.prompt = prompt
                try:
                    line = input(prompt)
                except EOFError:
                    break
                except KeyboardInterrupt:
                    out.line("")
                    continue
                finally:
                    out.prompt = None
                if not _execute(client, out, parse_command(line)):
                    break
        else:
            for line in sys.stdin:
                if not _execute(client, out, parse_command(line)):
                    break
    return 0


def performance(args: argparse.Namespace) -> int:
    """Blocking round trips, pipelined asyncio echos, then the seed API's
    streamed echos."""
    kwargs: Dict[str, Any] = {
        "timeout": args.timeout,
        "auth_token": args.token,
        "compression": args.compress,
    }
    kind = args.content
    results = [
        perf.blocking_round_trips(
            args.host, args.port, max(1, args.count // 5), args.size, content_kind=kind, **kwargs
        ),
        perf.pipelined_echo(
            args.host, args.port, args.count, args.size, args.window, content_kind=kind, **kwargs
        ),
        perf.seed_client_stream(
            args.host,
            args.port,
            args.count,
            args.size,
            auth_token=args.token,
            compression=args.compress,
            content_kind=kind,
        ),
    ]
    if args.json:
        for r in results:
            row: Dict[str, Any] = {
                "name": r.name,
                "count": r.count,
                "seconds": r.seconds,
                "msgs_per_sec": r.rate,
                "p50_ms": r.percentile(50) * 1e3 if r.latencies else None,
                "p99_ms": r.percentile(99) * 1e3 if r.latencies else None,
                "compression": r.compression,
                "wire_bytes_per_msg": r.wire_bytes_per_msg,
            }
            print(json.dumps(row))
    else:
        print(f"ringcast python client performance against {args.host}:{args.port}")
        print(
            f"({args.size}-byte {kind} echo content, compression {args.compress or 'off'}; "
            "seed's claim for small messages: 95,000+ msg/s)"
        )
        for r in results:
            print(perf.describe(r))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ringcast",
        description="ringcast Python client: the seed's demo, interactive and performance modes.",
    )
    p.add_argument(
        "mode",
        nargs="?",
        default="demo",
        choices=("demo", "interactive", "performance"),
        help="what to do (default: demo)",
    )
    p.add_argument("--host", default="localhost", help="server host (default: localhost)")
    p.add_argument("--port", type=int, default=9999, help="server port (default: 9999)")
    p.add_argument("--token", default=None, help="auth token, sent first on every connection")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds for the connection and each answer"
    )
    p.add_argument("--json", action="store_true", help="print raw frames, one JSON object a line")
    p.add_argument("--count", type=int, default=10_000, help="performance: pipelined echos")
    p.add_argument("--size", type=int, default=64, help="performance: bytes of echo content")
    p.add_argument("--window", type=int, default=64, help="performance: echos in flight")
    p.add_argument(
        "--content",
        default="text",
        choices=perf.CONTENT_KINDS,
        help="performance: echo content, repeated text or telemetry-like JSON (default: text)",
    )
    p.add_argument(
        "--compress",
        default=None,
        choices=("zstd", "deflate"),
        help="ask the server for per-frame compression with this codec (zstd needs zstandard)",
    )
    p.add_argument("--version", action="version", version=f"ringcast {__version__}")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    modes = {"demo": demo, "interactive": interactive, "performance": performance}
    try:
        return modes[args.mode](args)
    except CodecUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ServerError as e:
        print(f"error: server answered {e}", file=sys.stderr)
    except ConnectionClosed as e:
        print(f"error: {e}", file=sys.stderr)
    except (RingcastError, OSError) as e:
        print(f"error: cannot talk to {args.host}:{args.port}: {e}", file=sys.stderr)
    return 1
