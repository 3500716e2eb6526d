"""The Python client and the CLI entry points against real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.net import free_port

from corral._errors import CorralError, NotFoundError, PermissionDenied, UsageError
from corral.registry import client_main, registry_main
from corral.registry._app import open_server
from corral.registry._seed import seed
from corral.registry._service import Registry
from corral.registry.client import RegistryClient

from .conftest import CATALOGUE, Api, make_plugin


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("client")
    reg = Registry.open(tmp / "data")
    reg.create_publisher("acme")
    reg.create_namespace("acme", "acme")
    reg.create_publisher("evil")
    token = reg.create_token("acme", scopes=("publish", "yank"))
    other = reg.create_token("evil")
    with open_server(reg) as url, httpx.Client(base_url=url) as http:
        yield Api(url, reg, http, token, other, tmp / "data", "sqlite")
    reg.close()


def test_client_round_trip(sqlite_api: Api, tmp_path: Path) -> None:
    archive = make_plugin(tmp_path, "acme.client-demo", "0.1.0")
    with RegistryClient(sqlite_api.url, sqlite_api.token) as reg:
        published = reg.publish(archive)
        assert published["version"] == "0.1.0"
        shown = reg.show("acme.client-demo")
        assert shown["versions"][0]["sha256"] == published["sha256"]
        path = reg.download("acme.client-demo", tmp_path)
        assert path.read_bytes() == archive.read_bytes()
        assert path.name == "acme.client-demo-0.1.0.corral"
        assert reg.search("client demo")["results"][0]["id"] == "acme.client-demo"
        assert reg.yank("acme.client-demo", "0.1.0", "oops")["yanked"] is True
        assert reg.resolve("acme.client-demo", "==0.1.0")["yanked"] is True
        assert reg.unyank("acme.client-demo", "0.1.0")["yanked"] is False
        assert reg.publish(archive)["sha256"] == published["sha256"]  # a retry: 200
        with pytest.raises(UsageError):  # 409: same version, other bytes
            reg.publish(make_plugin(tmp_path, "acme.client-demo", "0.1.0", description="x"))
        with pytest.raises(NotFoundError):
            reg.show("acme.nothing-here")
    with RegistryClient(sqlite_api.url, sqlite_api.other_token) as reg, \
            pytest.raises(PermissionDenied):
        reg.publish(make_plugin(tmp_path, "acme.client-demo", "0.2.0"))
    with RegistryClient("http://127.0.0.1:9") as reg, pytest.raises(CorralError, match="reach"):
        reg.search("x")


def test_client_main_verbs(sqlite_api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_plugin(tmp_path, "acme.cli-demo", "1.0.0")
    reg = ["--registry", sqlite_api.url]
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    assert client_main("publish", [str(archive), "--json", *reg]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "usage"
    monkeypatch.setenv("CORRAL_TOKEN", sqlite_api.token)
    assert client_main("publish", [str(archive), "--json", *reg]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "acme.cli-demo"
    assert client_main("publish", [str(archive), "--json", *reg]) == 0  # a retry: same bytes
    assert json.loads(capsys.readouterr().out)["created"] is False
    other = make_plugin(tmp_path, "acme.cli-demo", "1.0.0", description="other bytes")
    assert client_main("publish", [str(other), "--json", *reg]) == 2  # duplicate
    capsys.readouterr()
    monkeypatch.setenv("CORRAL_TOKEN", sqlite_api.other_token)
    bad = make_plugin(tmp_path, "acme.cli-demo", "2.0.0")
    assert client_main("publish", [str(bad), "--json", *reg]) == 4
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "permission_denied"
    hostile = tmp_path / "hostile.corral"
    hostile.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setenv("CORRAL_TOKEN", sqlite_api.token)
    assert client_main("publish", [str(hostile), "--json", *reg]) == 3
    capsys.readouterr()
    monkeypatch.setenv("CORRAL_REGISTRY", sqlite_api.url)
    assert client_main("search", ["cli", "demo", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"][0]["id"] == "acme.cli-demo"
    assert client_main("search", ["cli"]) == 0
    assert "acme.cli-demo" in capsys.readouterr().out
    assert client_main("show", ["acme.cli-demo"]) == 0
    assert "1.0.0" in capsys.readouterr().out
    assert client_main("download", ["acme.cli-demo", "--dest", str(tmp_path)]) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()
    assert client_main("yank", ["acme.cli-demo", "1.0.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["yanked"] is True
    assert client_main("show", ["acme.nope", "--json"]) == 1
    assert client_main("search", ["--page", "0", "--json"]) == 2


def test_registry_main_admin_and_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(tmp_path / "reg")]
    assert registry_main(["admin", "create-publisher", "acme", "--json", *data]) == 0
    assert registry_main(["admin", "create-namespace", "acme", "--owner", "acme", *data]) == 0
    assert registry_main(["admin", "verify-publisher", "acme", *data]) == 0
    assert registry_main(["admin", "create-publisher", "bob", *data]) == 0
    assert registry_main(["admin", "add-member", "acme", "bob", *data]) == 0
    capsys.readouterr()
    assert registry_main(["admin", "create-token", "acme", "--scope", "publish", "--scope",
                          "yank", "--expires-days", "1", "--json", *data]) == 0
    token = json.loads(capsys.readouterr().out)["token"]
    assert token.startswith("crl_")
    assert registry_main(["admin", "revoke-token", token, *data]) == 0
    capsys.readouterr()
    assert registry_main(["admin", "create-namespace", "acme", "--owner", "acme", "--json",
                          *data]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "usage"
    assert registry_main(["admin", "create-token", "nobody", *data]) == 1
    assert registry_main(["bogus"]) == 2
    if CATALOGUE.is_file():
        assert registry_main(["seed", "--catalogue", str(CATALOGUE), "--limit", "100",
                              "--json", *data]) == 0
        assert json.loads(capsys.readouterr().out)["added"] == 100
    assert registry_main(["seed", "--catalogue", str(tmp_path / "none.tsv"), *data]) == 1
    with Registry.open(tmp_path / "reg") as reg:
        assert reg.authenticate  # the database is usable afterwards


def test_serve_command_in_a_subprocess(tmp_path: Path) -> None:
    data = tmp_path / "served"
    with Registry.open(data) as reg:
        if CATALOGUE.is_file():
            seed(reg, CATALOGUE, limit=300)
    port = free_port()
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from corral.registry import registry_main; "
         "sys.exit(registry_main(sys.argv[1:]))", "serve", "--data", str(data),
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        doc = httpx.get(f"http://127.0.0.1:{port}/v1/search", params={"q": "a"}).json()
        assert "results" in doc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
