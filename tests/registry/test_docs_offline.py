"""``/docs`` and ``/redoc`` work offline: every URL they load is the registry's own."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.registry._app import create_app, open_server
from corral.registry._docs_ui import ASSETS
from corral.registry._service import Registry

#: src="..." / href="..." attributes, and the quoted URLs the pages' scripts are given
_ATTR = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.I)
_SCRIPT_URL = re.compile(r"""\b(?:url|oauth2RedirectUrl|spec-url)["']?\s*[:=]\s*["']([^"']*)["']""")

_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png",
          ".json": "application/json"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    reg = Registry.open(tmp_path_factory.mktemp("docs") / "data")
    with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client
    reg.close()


def _urls(html: str) -> list[str]:
    return [*_ATTR.findall(html), *_SCRIPT_URL.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_loads_only_same_origin_urls(http: httpx.Client, page: str) -> None:
    r = http.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html, html  # no CDN, no Google fonts
    assert "https://" not in html, html
    urls = _urls(html)
    assert any(u.endswith(".js") for u in urls), urls
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        got = http.get(url)
        assert got.status_code == 200, url
        expected = _TYPES.get(Path(url).suffix, "text/html")
        assert got.headers["content-type"].startswith(expected), (url, got.headers)
        assert got.content, url


def test_assets_are_the_vendored_files_and_nothing_else(http: httpx.Client) -> None:
    for name, (path, _media) in ASSETS.items():
        got = http.get(f"/static/{name}")
        assert got.status_code == 200
        assert got.content == path.read_bytes()
        assert (path.parent / "LICENSE").is_file()  # shipped with its licence
    for bad in ("/static/swagger-ui/LICENSE", "/static/../_app.py", "/static/%2e%2e/_app.py",
                "/static/redoc/redoc.standalone.js.map"):
        r = http.get(bad)
        assert r.status_code == 404, bad
        assert r.json()["error"]["code"] == "not_found"


def test_pages_follow_the_root_path(tmp_path: Path) -> None:
    """Behind a proxy serving the registry under a prefix, the pages point under it."""
    reg = Registry.open(tmp_path / "data")

    async def get(path: str) -> str:
        transport = httpx.ASGITransport(app=create_app(reg), root_path="/reg")
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as c:
            return (await c.get(path)).text

    try:
        docs, redoc = asyncio.run(get("/docs")), asyncio.run(get("/redoc"))
    finally:
        reg.close()
    assert '"/reg/static/swagger-ui/swagger-ui-bundle.js"' in docs
    assert "'/reg/openapi.json'" in docs
    assert '"/reg/static/redoc/redoc.standalone.js"' in redoc
