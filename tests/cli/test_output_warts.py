"""Day-one output warts of the command line, one test each (each fails without its fix)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import ENV_DROP, CliResult
from helpers.install import publish
from helpers.plugins import make_plugin
from registry.conftest import make_plugin as make_archive

from corral._distribution.install.update import available_updates
from corral._model.manifest import parse_manifest
from corral._model.release import Release
from corral.registry import client_main
from corral.registry._app import open_server
from corral.registry._service import Registry

Run = Callable[..., CliResult]

LONG = "A plugin whose description goes on and on well past fifty characters, ending HERE"


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A served registry holding acme.warts 1.0.0 (long summary); its URL and a yank token."""
    tmp = tmp_path_factory.mktemp("warts")
    reg = Registry.open(tmp / "data")
    reg.create_publisher("acme")
    reg.create_namespace("acme", "acme")
    token = reg.create_token("acme", scopes=("publish", "yank"))
    archive = make_archive(tmp, "acme.warts", "1.0.0", description=LONG)
    with open_server(reg) as url:
        from corral.registry.client import RegistryClient

        with RegistryClient(url, token) as client:
            client.publish(archive)
        yield url, token, tmp
    reg.close()


def test_yank_and_unyank_print_one_line(registry_url: tuple[str, str, Path],
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url, token, _ = registry_url
    monkeypatch.setenv("CORRAL_TOKEN", token)
    assert client_main("yank", ["acme.warts", "1.0.0", "--reason", "oops",
                                "--registry", url]) == 0
    assert capsys.readouterr().out == "yanked acme.warts 1.0.0 (oops)\n"
    assert client_main("unyank", ["acme.warts", "1.0.0", "--registry", url]) == 0
    assert capsys.readouterr().out == "unyanked acme.warts 1.0.0\n"
    assert client_main("yank", ["acme.warts", "1.0.0", "--json", "--registry", url]) == 0
    assert json.loads(capsys.readouterr().out)["yanked"] is True  # --json keeps the document
    assert client_main("unyank", ["acme.warts", "1.0.0", "--registry", url]) == 0


def test_download_dest_with_slash_is_a_folder(registry_url: tuple[str, str, Path],
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, _, _ = registry_url
    dest = tmp_path / "into"
    assert client_main("download", ["acme.warts", "--dest", f"{dest}/", "--registry", url]) == 0
    assert dest.is_dir()
    assert Path(capsys.readouterr().out.strip()) == dest / "acme.warts-1.0.0.corral"
    assert client_main("download", ["acme.warts", "--dest", str(dest), "--registry", url]) == 0
    assert Path(capsys.readouterr().out.strip()).parent == dest  # an existing folder: into it


def test_search_fits_the_terminal(registry_url: tuple[str, str, Path],
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url, _, _ = registry_url
    monkeypatch.setenv("COLUMNS", "200")
    assert client_main("search", ["warts", "--registry", url]) == 0
    assert LONG in capsys.readouterr().out  # a wide terminal shows it all
    monkeypatch.setenv("COLUMNS", "72")
    assert client_main("search", ["warts", "--registry", url]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith("…")
    assert len(line) <= 72


def test_search_and_publish_take_source_too(registry_url: tuple[str, str, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    url, _, _ = registry_url
    assert client_main("search", ["warts", "--json", "--source", url]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == "acme.warts"


def test_list_fits_the_terminal(tmp_path: Path, run_cli: Run, workspace: Path) -> None:
    make_plugin(workspace / "plugins", "acme.long", plugin={"description": LONG})
    r = run_cli("add", str(workspace / "plugins" / "src" / "acme.long"))
    assert r.code == 0, r.err

    def listing(columns: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
        env.update(CORRAL_HOME=str(tmp_path / "home"), COLUMNS=columns)
        return subprocess.run([sys.executable, "-m", "corral", "list"], capture_output=True,
                              text=True, cwd=workspace, env=env, check=True, timeout=60).stdout

    assert LONG in listing("200")
    row = next(x for x in listing("90").splitlines() if x.startswith("acme.long"))
    assert row.endswith("…")
    assert len(row) <= 90


def test_global_options_after_the_verb(tmp_path: Path, run_cli: Run, workspace: Path) -> None:
    other = tmp_path / "other-home"
    make_plugin(workspace / "p", "acme.there")
    assert run_cli("add", str(workspace / "p" / "src" / "acme.there"), "--home",
                   str(other)).code == 0
    r = run_cli("list", "--json", "--home", str(other))
    assert r.code == 0, r.err
    assert [p["id"] for p in r.json["plugins"]] == ["acme.there"]
    assert run_cli("list", "--json").json["plugins"] == []  # it went to --home, not $CORRAL_HOME


def test_info_rounds_milliseconds(tmp_path: Path, run_cli: Run, workspace: Path) -> None:
    make_plugin(workspace / "p", "acme.timed")
    run_cli("add", str(workspace / "p" / "src" / "acme.timed"))
    run_cli("enable", "acme.timed")
    assert run_cli("call", "acme.timed", "echo", "--input", "1").code == 0
    out = run_cli("info", "acme.timed").out
    line = next(x for x in out.splitlines() if "wall ms" in x)
    assert not re.search(r"\d\.\d{2,}", line), line


def test_install_and_update_take_registry_too(tmp_path: Path, run_cli: Run) -> None:
    repo = tmp_path / "repo"
    publish(tmp_path, repo, "acme.spelt", "1.0.0")
    r = run_cli("install", "acme.spelt", "--registry", str(repo), "--allow-unsigned", "--json")
    assert r.code == 0, r.err
    assert "--registry" not in run_cli("install", "--help").out  # one spelling documented


def test_update_check_ignores_permission_reasons(tmp_path: Path, run_cli: Run) -> None:
    repo = tmp_path / "repo"
    src = ("--source", str(repo), "--allow-unsigned")
    perms = {"env": ["HOME"], "reasons": {"env": "to greet you by name"}}
    publish(tmp_path, repo, "acme.why", "1.0.0", permissions=perms)
    assert run_cli("install", "acme.why", *src, "--json").code == 0
    publish(tmp_path, repo, "acme.why", "1.1.0", permissions=perms)
    check = run_cli("update", "--check", *src, "--json").json
    assert [a["permissions"] for a in check["available"]] == [{}]
    applied = run_cli("update", *src, "--json")
    assert applied.code == 0, applied.err
    assert [a["permissions"] for a in applied.json["available"]] == [{}]


def test_update_check_reports_a_weaker_isolation_as_update_does(tmp_path: Path,
                                                                run_cli: Run) -> None:
    repo = tmp_path / "repo"
    src = ("--source", str(repo), "--allow-unsigned")
    publish(tmp_path, repo, "acme.weak", "1.0.0", isolation="limited")
    assert run_cli("install", "acme.weak", *src, "--json").code == 0
    publish(tmp_path, repo, "acme.weak", "1.1.0", isolation="none")
    check = run_cli("update", "--check", *src, "--json").json
    assert [a["permissions"] for a in check["available"]] == [{"isolation": ["limited -> none"]}]
    held = run_cli("update", *src, "--json")
    assert held.code == 4, held.err
    assert [a["permissions"] for a in held.json["available"]] == [
        {"isolation": ["limited -> none"]}]


def test_update_check_of_a_registry_release_ignores_reasons() -> None:
    """A registry hands the raw ``[permissions]`` table, ``reasons`` and all, to ``--check``."""
    toml = """[plugin]\nid = "acme.why"\nname = "Why"\nversion = "1.0.0"\n
[permissions]\nenv = ["HOME"]\nreasons = { env = "to greet you by name" }\n"""
    installed = parse_manifest(toml)
    raw = {"env": ["HOME"], "reasons": {"env": "to greet you by name"}}
    release = Release("acme.why", "1.1.0", sha256="b" * 64, permissions=raw)
    old = {"acme.why": {"version": "1.0.0", "sha256": "a" * 64}}
    rows = available_updates({"acme.why": release}, old, {"acme.why": installed})
    assert rows[0]["permissions"] == {}  # what `update` (from the manifests) says too
    wider = Release("acme.why", "1.2.0", sha256="c" * 64,
                    permissions={**raw, "env": ["HOME", "USER"]})
    rows = available_updates({"acme.why": wider}, old, {"acme.why": installed})
    assert rows[0]["permissions"] == {"env": ["USER"]}
    # the installed manifest has no [sandbox]: strict; a release that says none is weaker
    weaker = Release("acme.why", "1.3.0", sha256="d" * 64, permissions=raw, isolation="none")
    rows = available_updates({"acme.why": weaker}, old, {"acme.why": installed})
    assert rows[0]["permissions"] == {"isolation": ["strict -> none"]}

