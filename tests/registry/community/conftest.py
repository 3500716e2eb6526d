"""Fixtures: a registry with published plugins behind a real server, and people to use it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.registry._app import open_server
from corral.registry._service import Registry

from ..conftest import _accounts, make_plugin, open_backend


@dataclass
class Site:
    """A running registry: URL, Registry, HTTP client, publisher tokens, a publish helper."""

    url: str
    registry: Registry
    http: httpx.Client
    acme: str  # publisher token of "acme" (owner of namespace acme)
    evil: str  # publisher token of "evil"
    tmp: Path

    def publish(self, plugin_id: str, version: str = "1.0.0", token: str | None = None,
                **kw: str) -> None:
        archive = make_plugin(self.tmp, plugin_id, version, **kw)
        with archive.open("rb") as fp:
            r = self.http.post("/v1/publish", files={"archive": (archive.name, fp)},
                               headers=bearer(token or self.acme))
        assert r.status_code == 201, r.text

    def person(self, name: str | None = None, password: str = "correct horse 1") -> Person:
        """Sign up and sign in a new user; return their session and a token."""
        name = name or f"u{uuid.uuid4().hex[:10]}"
        r = self.http.post("/v1/users", json={"name": name, "password": password})
        assert r.status_code == 201, r.text
        r = self.http.post("/v1/sessions", json={"name": name, "password": password})
        assert r.status_code == 201, r.text
        session = r.json()
        r = self.http.post("/v1/users/me/tokens", json={"description": "cli"},
                           headers=bearer(session["session"]))
        assert r.status_code == 201, r.text
        return Person(name, password, session["session"], session["csrf_token"],
                      r.json()["token"])


@dataclass
class Person:
    name: str
    password: str
    session: str
    csrf: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _site(backend: str, request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"community-{backend}")
    reg = open_backend(backend, tmp / "data", request)
    acme, evil = _accounts(reg)
    with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as http:
        site = Site(url, reg, http, acme, evil, tmp)
        site.publish("acme.widget", "1.0.0", description="Widgets for tests")
        site.publish("acme.widget", "1.1.0", description="Widgets for tests")
        site.publish("acme.gadget", "2.0.0", description="Gadgets for tests")
        yield site
    reg.close()


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A SQLite registry with acme.widget (1.0.0, 1.1.0) and acme.gadget 2.0.0, served."""
    yield from _site("sqlite", request, tmp_path_factory)


@pytest.fixture(scope="module")
def pg_site(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The same on PostgreSQL."""
    yield from _site("postgresql", request, tmp_path_factory)
