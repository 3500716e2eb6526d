"""A marketplace to look at: the sample catalogue, a plugin with two versions, a hostile one.

``site`` is a real registry behind a real uvicorn server on 127.0.0.1.  The
hostile plugin's name, description, author and README carry what an attacker
would put there: script elements, event handlers, ``javascript:`` links,
style injection and bidi overrides, each of which would set ``window.__pwned``
if it ever ran.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral._disk.archive import pack_directory
from corral.registry._app import open_server
from corral.registry._seed import seed
from corral.registry._service import Registry

SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "catalogue.tsv"

HOSTILE_ID = "evil.hostile"
HOSTILE_NAME = ('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
                "Evil\u202egnp.exe")
HOSTILE_DESCRIPTION = ('<b onmouseover="window.__pwned=3">hi</b> '
                       '<a href="javascript:window.__pwned=4">x</a> '
                       "<style>body{display:none}</style>")
HOSTILE_README = textwrap.dedent("""\
    # Totally safe <script>window.__pwned=5</script>

    <img src=x onerror="window.__pwned=6">
    <a href="javascript:window.__pwned=7" style="position:fixed;inset:0">click</a>
    <div style="background:url(javascript:window.__pwned=8)">styled</div>

    [markdown link](javascript:window.__pwned=9) and [data](data:text/html,<script>x</script>)
    and ![pic](javascript:window.__pwned=10) and <iframe src="https://example.org"></iframe>

    Bidi: \u202etxt.exe\u202c and <svg onload="window.__pwned=11"></svg>

    [good link](https://example.org/docs)
    """)


def build_plugin(root: Path, plugin_id: str, version: str, *, name: str, description: str,
                 permissions: str = "", readme: str | None = None, extra: str = "",
                 tables: str = "", author: str = "Test Author") -> Path:
    """Write and pack a valid plugin; return its ``.corral`` archive."""
    src = root / f"src-{uuid.uuid4().hex[:8]}"
    src.mkdir(parents=True)
    toml_name = name.replace("\\", "\\\\").replace('"', '\\"')
    toml_desc = description.replace("\\", "\\\\").replace('"', '\\"')
    toml_author = author.replace('"', '\\"')
    (src / "corral.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "{toml_name}"\nversion = "{version}"\n'
        f'description = "{toml_desc}"\nlicense = "MIT"\n'
        f'authors = [{{ name = "{toml_author}" }}]\ncategory = "testing"\n'
        f'tags = ["demo", "web"]\n{extra}\n[permissions]\n{permissions}\n'
        f'[exports]\nhello = "hello_mod:hello"\n{tables}')
    (src / "hello_mod.py").write_text("def hello(input, ctx):\n    return {'hi': input}\n")
    if readme is not None:
        (src / "README.md").write_text(readme)
    out = root / f"{plugin_id}-{version}-{uuid.uuid4().hex[:6]}.corral"
    pack_directory(src, out)
    shutil.rmtree(src)
    return out


@dataclass
class Site:
    """A running marketplace: its URL, registry, an HTTP client and a publisher token."""

    url: str
    registry: Registry
    http: httpx.Client
    token: str


def _publish(http: httpx.Client, token: str, archive: Path) -> None:
    with archive.open("rb") as fp:
        answer = http.post("/v1/publish", files={"archive": (archive.name, fp, "application/zip")},
                           headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code in (200, 201), answer.text


def populate(reg: Registry, http: httpx.Client, tmp: Path) -> str:
    """Publishers, the two-version ``acme.webby`` and the hostile plugin; the acme token."""
    reg.create_publisher("acme", display_name="Acme Tools")
    reg.create_namespace("acme", "acme")
    reg.verify_publisher("acme")
    reg.create_publisher("evil")
    reg.create_namespace("evil", "evil")
    token = reg.create_token("acme", scopes=("publish", "yank"), expires_in=dt.timedelta(days=1))
    evil = reg.create_token("evil", scopes=("publish",), expires_in=dt.timedelta(days=1))
    _publish(http, token, build_plugin(
        tmp, "acme.webby", "1.0.0", name="Webby", description="Fetches pages for you",
        permissions='fs-read = ["{workspace}"]\n',
        readme="# Webby\n\nFetches **pages**.\n\n```\ncorral call acme.webby hello\n```\n"))
    _publish(http, token, build_plugin(
        tmp, "acme.helper", "1.0.0", name="Helper", description="Helps webby",
        extra='requires-corral = ">=0.1"\n'))
    _publish(http, token, build_plugin(
        tmp, "acme.webby", "2.0.0", name="Webby", description="Fetches pages for you",
        permissions=('fs-read = ["{workspace}"]\nnet-connect = ["example.org:443"]\n'
                     'spawn = ["git"]\n'),
        readme="# Webby 2\n\nNow with **git**.\n",
        tables='\n[dependencies]\n"acme.helper" = ">=1.0"\n'))
    _publish(http, evil, build_plugin(
        tmp, HOSTILE_ID, "1.0.0", name=HOSTILE_NAME, description=HOSTILE_DESCRIPTION,
        readme=HOSTILE_README, author='<i onclick="window.__pwned=12">Mallory</i>'))
    reg.set_yanked("acme.webby", "1.0.0", reg.authenticate(token), yanked=True,
                   reason="<script>window.__pwned=13</script> broken")
    return token


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The sample catalogue and the plugins above, served over HTTP."""
    tmp = tmp_path_factory.mktemp("market")
    reg = Registry.open(tmp / "data")
    seed(reg, SAMPLE)
    with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as http:
        token = populate(reg, http, tmp)
        yield Site(url, reg, http, token)
    reg.close()


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's headless Chromium driven by Selenium, with a fresh profile."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$CORRAL_SCREENSHOTS`` or a folder of this run's temp dir."""
    env = os.environ.get("CORRAL_SCREENSHOTS")
    folder = Path(env) if env else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
