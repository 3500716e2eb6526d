"""The ``top`` and ``metrics`` verbs: per-plugin figures live in the terminal, or for Prometheus.

Both read the home's host database, where every host flushes its calls and usage
about once a second, so plugins running in another process show up too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._cli.output import dump, table
from corral._disk.layout import DB_NAME, default_home
from corral._errors import MissingExtra, UsageError
from corral._model.exposition import CONTENT_TYPE, render
from corral._model.text import neutralise
from corral._runtime.database import HostDatabase
from corral._runtime.stats import (
    SORT_KEYS,
    WINDOW_SECONDS,
    host_families,
    plugin_rows,
    queued_events,
    sort_rows,
)
from corral._services.cache.stats import hit_rates

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder

__all__ = ["add_verbs", "cmd_metrics", "cmd_top", "serve_metrics"]

#: Keys that change the sort while ``top`` runs live.
_KEYS = {"c": "cpu", "m": "mem", "n": "calls", "p": "p95", "e": "errors"}


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("CORRAL_HOME") or default_home()).expanduser()


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[HostDatabase]:
    home = _home(args)
    home.mkdir(parents=True, exist_ok=True)
    db = HostDatabase(home / DB_NAME)
    try:
        yield db
    finally:
        db.close()


def _snapshot(db: HostDatabase, home: Path, sort: str, window: float) -> dict[str, Any]:
    now = time.time()
    rates = hit_rates(home)
    rows = plugin_rows(db, window=window, now=now, queued=queued_events(home),
                       cache_rate=rates.get)
    return {"at": now, "window_seconds": window, "sort": sort, "plugins": sort_rows(rows, sort)}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return "-"  # pragma: no cover


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _cells(row: dict[str, Any]) -> list[str]:
    """One row of the table; ``~`` marks approximate CPU and memory figures."""
    approx = "~" if row["approximate"] else ""
    mem = _size(row["mem_bytes"])
    if row["mem_limit_bytes"]:
        mem += f" / {_size(row['mem_limit_bytes'])}"
    rate = row["cache_hit_rate"]
    return [
        row["plugin"],
        _num(row["calls_per_s"], "{:.2f}"),
        _num(row["p50_ms"], "{:.2f}"),
        _num(row["p95_ms"], "{:.2f}"),
        str(row["errors"]),
        _num(row["cpu_percent"]) + (approx if row["cpu_percent"] is not None else ""),
        mem + (approx if row["mem_bytes"] is not None else ""),
        "-" if row["queued"] is None else str(row["queued"]),
        "-" if rate is None else f"{rate * 100:.0f}%",
    ]


_HEADERS = ["plugin", "calls/s", "p50 ms", "p95 ms", "errors", "cpu %", "memory / limit",
            "queued", "cache hit"]


def cmd_top(args: argparse.Namespace) -> int:
    if args.sort not in SORT_KEYS:  # pragma: no cover - argparse checks the choices
        raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}")
    if args.window <= 0 or args.interval <= 0:
        raise UsageError("--window and --interval must be positive seconds")
    home = _home(args)
    with _database(args) as db:
        if args.json or args.once:
            snap = _snapshot(db, home, args.sort, args.window)
            if args.json:
                dump(snap)
            elif not snap["plugins"]:
                print("no plugins registered or seen in this home")
            else:
                print(table([_cells(r) for r in snap["plugins"]], _HEADERS))
            return 0
        _live(db, home, args)
    return 0


def _live(db: HostDatabase, home: Path, args: argparse.Namespace) -> None:
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text
    except ImportError as exc:
        raise MissingExtra.of("rich", "monitor", needed_by="corral top") from exc

    sort = args.sort

    def render() -> Table:
        snap = _snapshot(db, home, sort, args.window)
        title = neutralise(f"corral top: {home}  (sort: {sort}; keys c m n p e, q quits; "
                           "~ approximate)", one_line=True)
        t = Table(title=Text(title), expand=True)
        for h in _HEADERS:
            t.add_column(h, justify="left" if h == "plugin" else "right", no_wrap=True)
        for row in snap["plugins"]:  # plain text: no markup, nothing unsafe for the terminal
            t.add_row(*(Text(neutralise(c, one_line=True)) for c in _cells(row)))
        return t

    # rich writes its own escape sequences: to the real stdout, past the neutralising stream.
    console = Console(file=getattr(sys.stdout, "raw", sys.stdout))
    with _keys() as read_key, Live(render(), console=console, auto_refresh=False) as live:
        while True:
            deadline = time.monotonic() + args.interval
            while time.monotonic() < deadline:
                key = read_key(max(0.0, deadline - time.monotonic()))
                if key == "q":
                    return
                if key in _KEYS:
                    sort = _KEYS[key]
                    break
            live.update(render(), refresh=True)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """``read(timeout) -> key or None``: single keys from a terminal (never from a pipe)."""
    import select

    if not sys.stdin.isatty():
        yield time.sleep  # returns None: no key
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode("ascii", "replace").lower() if ready else None

    try:
        yield read
    except KeyboardInterrupt:
        return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _families(db: HostDatabase, max_plugins: int) -> str:
    return render(host_families(db, max_plugins=max_plugins))


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--serve needs HOST:PORT (like 127.0.0.1:9464), got {text!r}",
                         serve=text)
    return host.strip("[]"), int(port)


def serve_metrics(db: HostDatabase, address: tuple[str, int], max_plugins: int,
                  ready: Any = None) -> None:
    """Serve ``GET /metrics`` on ``address`` until interrupted; ``ready(port)`` is told the
    port it listens on (``0`` picks a free one).
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                body = _families(db, max_plugins).encode()
            except Exception as exc:  # the database is busy: the scrape fails, the server stays
                self.send_error(503, f"metrics unavailable: {type(exc).__name__}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(address, Handler)
    try:
        port = server.server_address[1]
        if ready is not None:
            ready(port)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        server.server_close()


def cmd_metrics(args: argparse.Namespace) -> int:
    if args.max_plugins < 1:
        raise UsageError("--max-plugins must be at least 1", max_plugins=args.max_plugins)
    address = _address(args.serve) if args.serve else None
    with _database(args) as db:
        if address is None:
            if args.json:
                dump({"families": [
                    {"name": f.name, "type": f.type, "help": f.help,
                     "samples": [{"name": f.name + s, "labels": labels, "value": v}
                                 for s, labels, v in f.samples]}
                    for f in host_families(db, max_plugins=args.max_plugins)
                ]})
            else:
                sys.stdout.write(_families(db, args.max_plugins))
            return 0

        def ready(port: int) -> None:
            where = f"http://{address[0]}:{port}/metrics"
            if args.json:
                dump({"serving": where})
            else:
                print(f"serving Prometheus metrics on {where}", flush=True)
            sys.stdout.flush()

        serve_metrics(db, address, args.max_plugins, ready)
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``top`` and ``metrics``."""
    sp = verb("top", cmd_top, "live per-plugin calls, latency, errors, CPU and memory")
    sp.add_argument("--sort", choices=sorted(SORT_KEYS), default="cpu",
                    help="order rows by this figure, highest first (keys c m n p e while live)")
    sp.add_argument("--once", action="store_true", help="print one table and exit")
    sp.add_argument("--window", type=float, default=WINDOW_SECONDS,
                    help="seconds that rates, percentiles and CPU %% are taken over")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    sp = verb("metrics", cmd_metrics, "print the home's plugin metrics in Prometheus format")
    sp.add_argument("--serve", metavar="HOST:PORT",
                    help="serve them on http://HOST:PORT/metrics until interrupted")
    sp.add_argument("--max-plugins", type=int, default=50,
                    help="plugin label values kept; the rest are summed as plugin=\"other\"")
