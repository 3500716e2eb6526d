"""Fixtures: real registries behind real uvicorn servers, on SQLite and PostgreSQL.

``api`` is parametrised over both databases; the PostgreSQL variant starts a
throwaway cluster (initdb + pg_ctl, unix socket in a temp dir) once per
session and skips only when the PostgreSQL binaries are not installed.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral._disk.archive import pack_directory
from corral.registry._app import open_server
from corral.registry._seed import seed
from corral.registry._service import Registry

#: Real package names and summaries: the whole catalogue when ``CORRAL_CATALOGUE`` names
#: it (CI does), else the sample shipped in examples/ (every plugin family the tests ask for).
CATALOGUE = Path(os.environ.get("CORRAL_CATALOGUE")
                 or Path(__file__).resolve().parents[2] / "examples" / "catalogue.tsv")


def make_plugin(root: Path, plugin_id: str, version: str = "1.0.0", *,
                description: str = "A test plugin", extra: str = "",
                payload: bytes = b"") -> Path:
    """Write and pack a small valid plugin; return the ``.corral`` archive."""
    src = root / f"src-{uuid.uuid4().hex[:8]}"
    src.mkdir(parents=True)
    (src / "corral.toml").write_text(textwrap.dedent(f"""\
        [plugin]
        id = "{plugin_id}"
        name = "{plugin_id.rsplit('.', maxsplit=1)[-1].title()}"
        version = "{version}"
        description = "{description}"
        license = "MIT"
        authors = [{{ name = "Test Author" }}]
        category = "testing"
        tags = ["demo", "test"]

        [permissions]
        fs-read = ["{{workspace}}"]

        [exports]
        hello = "hello_mod:hello"
        {extra}
        """))
    (src / "hello_mod.py").write_text("def hello(input, ctx):\n    return {'hi': input}\n")
    if payload:
        (src / "payload.bin").write_bytes(payload)
    out = root / f"{plugin_id}-{version}-{uuid.uuid4().hex[:6]}.corral"
    pack_directory(src, out)
    shutil.rmtree(src)
    return out


@dataclass
class Api:
    """A running registry: its URL, the Registry object, an HTTP client and tokens."""

    url: str
    registry: Registry
    http: httpx.Client
    token: str  # publisher "acme": owner of namespace "acme"
    other_token: str  # publisher "evil": owner of namespace "evil"
    data: Path
    backend: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def publish(self, archive: Path, token: str | None = None) -> httpx.Response:
        with archive.open("rb") as fp:
            return self.http.post(
                "/v1/publish", files={"archive": (archive.name, fp, "application/zip")},
                headers=self.auth(token),
            )


def _accounts(reg: Registry) -> tuple[str, str]:
    reg.create_publisher("acme", email="dev@acme.test")
    reg.create_namespace("acme", "acme")
    reg.create_publisher("evil")
    reg.create_namespace("evil", "evil")
    token = reg.create_token("acme", scopes=("publish", "yank"),
                             expires_in=dt.timedelta(days=1))
    other = reg.create_token("evil", scopes=("publish", "yank"))
    return token, other


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a unix socket; yields a SQLAlchemy URL."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    runas: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        runas = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*runas, str(bindir / "initdb"), "-D", str(data), "-U", "corral",
                    "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-c listen_addresses='' -k {sock} -c fsync=off -c max_connections=200"
    subprocess.run([*runas, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts,
                    "-l", str(root / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://corral@/postgres?host={sock}"
    finally:
        subprocess.run([*runas, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _fresh_pg_db(base_url: str) -> str:
    import sqlalchemy as sa

    name = f"reg_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return base_url.replace("/postgres?", f"/{name}?")


def open_backend(backend: str, tmp: Path, request: pytest.FixtureRequest,
                 **kw: int) -> Registry:
    """A fresh registry on ``backend`` with its data under ``tmp``."""
    if backend == "postgresql":
        base = request.getfixturevalue("pg_url")
        return Registry.open(tmp, _fresh_pg_db(base), **kw)
    return Registry.open(tmp, **kw)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A fresh registry with two publishers, served over HTTP."""
    tmp = tmp_path_factory.mktemp(f"reg-{request.param}")
    reg = open_backend(request.param, tmp / "data", request, max_upload_bytes=2 * 1024 * 1024)
    token, other = _accounts(reg)
    with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield Api(url, reg, http, token, other, tmp / "data", request.param)
    reg.close()


@pytest.fixture(scope="session")
def catalogue_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The catalogue (see ``CATALOGUE``) seeded into SQLite and served."""
    if not CATALOGUE.is_file():
        pytest.skip(f"{CATALOGUE} is not available")
    tmp = tmp_path_factory.mktemp("catalogue")
    reg = Registry.open(tmp)
    seed(reg, CATALOGUE)
    with open_server(reg) as url:
        yield url
    reg.close()
