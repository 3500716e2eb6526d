"""Fixtures for the TUF tests: a TUF-initialised registry on loopback and a tampering proxy.

The proxy is a real HTTP server (``http.server`` in a thread) in front of the
real registry: it relays every request, except the paths a test overrides
(served from bytes), delays, or turns into an endless stream.
"""

from __future__ import annotations

import contextlib
import http.server
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from corral.registry._app import open_server
from corral.registry._service import Registry
from corral.registry._tuf import TufRepository

from .conftest import _accounts, make_plugin


@dataclass
class TufApi:
    """A running TUF registry: URL, Registry, repository, offline key folder, tokens."""

    url: str
    registry: Registry
    repo: TufRepository
    offline: Path
    data: Path
    http: httpx.Client
    token: str
    tmp: Path

    def publish(self, plugin_id: str, version: str = "1.0.0", **kw: bytes) -> dict[str, object]:
        archive = make_plugin(self.tmp, plugin_id, version, **kw)  # type: ignore[arg-type]
        with archive.open("rb") as fp:
            r = self.http.post("/v1/publish",
                               files={"archive": (archive.name, fp, "application/zip")},
                               headers={"Authorization": f"Bearer {self.token}"})
        assert r.status_code == 201, r.text
        doc: dict[str, object] = r.json()
        return doc


@pytest.fixture(name="tuf_api")
def tuf_api_fixture(tmp_path: Path) -> Iterator[TufApi]:
    """A fresh SQLite registry, TUF-initialised (16 bins), served over HTTP."""
    data = tmp_path / "data"
    reg = Registry.open(data)
    token, _ = _accounts(reg)
    offline = tmp_path / "offline"
    repo = TufRepository.initialise(reg, data, offline, bins=16)
    with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield TufApi(url, reg, repo, offline, data, http, token, tmp_path)
    reg.close()


@dataclass
class Proxy:
    """What the tampering proxy does; tests change these fields between requests."""

    upstream: str
    url: str = ""
    overrides: dict[str, bytes] = field(default_factory=dict)
    endless: set[str] = field(default_factory=set)
    delay: float = 0.0
    sent: int = 0
    requests: list[str] = field(default_factory=list)


def _handler(proxy: Proxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            proxy.requests.append(self.path)
            if proxy.delay:
                time.sleep(proxy.delay)
            if any(self.path.startswith(p) for p in proxy.endless):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                block = b"\0" * 65536
                try:
                    while proxy.sent < 512 * 1024 * 1024:
                        self.wfile.write(block)
                        proxy.sent += len(block)
                except OSError:
                    pass
                return
            if self.path in proxy.overrides:
                status, body = 200, proxy.overrides[self.path]
            else:
                try:
                    r = httpx.get(proxy.upstream + self.path, timeout=30)
                    status, body = r.status_code, r.content
                except httpx.HTTPError:  # the registry went away (test teardown)
                    status, body = 502, b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

    return Handler


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on purpose (endless data, timeouts)


@pytest.fixture(name="proxy")
def proxy_fixture(tuf_api: TufApi) -> Iterator[Proxy]:
    """A tampering proxy in front of ``tuf_api`` (relays everything until told otherwise)."""
    p = Proxy(tuf_api.url)
    server = _Server(("127.0.0.1", 0), _handler(p))
    p.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield p
    finally:
        server.shutdown()
        server.server_close()
