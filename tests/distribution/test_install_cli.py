"""The installer's verbs through the real command line (``python -m corral``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import CliResult
from helpers.install import publish, versioned
from helpers.plugins import module_name

Run = Callable[..., CliResult]


def test_install_update_rollback_history_verify_uninstall(
    tmp_path: Path, home: Path, run_cli: Run
) -> None:
    repo = tmp_path / "repo"
    src = ("--source", str(repo), "--allow-unsigned")
    publish(tmp_path, repo, "acme.lib", "1.0.0")
    publish(tmp_path, repo, "acme.app", "1.0.0", {"acme.lib": ">=1"}, code=versioned("1"))

    r = run_cli("install", "acme.app@>=1", *src, "--json")
    assert r.code == 0, r.err
    assert r.json["generation"] == 1
    assert [a["id"] for a in r.json["added"]] == ["acme.app", "acme.lib"]
    assert r.err == ""  # no progress bar when not a terminal

    listed = run_cli("list", "--json").json["plugins"]
    assert {(p["id"], p["source"]) for p in listed} == {
        ("acme.app", "installed"), ("acme.lib", "installed")}
    assert run_cli("enable", "acme.app").code == 0

    publish(tmp_path, repo, "acme.app", "1.1.0", {"acme.lib": ">=1"}, code=versioned("1.1"),
            permissions={"env": ["LANG"]})
    r = run_cli("update", "--check", *src, "--json")
    assert r.code == 0
    assert r.json["available"] == [{"id": "acme.app", "installed": "1.0.0",
                                    "available": "1.1.0", "permissions": {"env": ["LANG"]}}]
    r = run_cli("update", *src, "--json")
    assert r.code == 4
    assert r.json["applied"] is None
    assert r.json["held"][0]["permissions"] == {"env": ["LANG"]}
    r = run_cli("update", *src)
    assert r.code == 4
    assert "+env: LANG" in r.out
    assert "--accept-permissions" in r.err
    r = run_cli("update", *src, "--accept-permissions", "--json")
    assert r.code == 0
    assert r.json["applied"]["generation"] == 2
    assert run_cli("call", "acme.app", "version", "--json").json == {"result": "1.1"}
    assert run_cli("info", "acme.app", "--json").json["state"] == "enabled"

    # the generation rolled back to is checked again: unsigned needs the explicit flag
    r = run_cli("rollback", "--json")
    assert r.code == 4
    assert r.json["error"]["code"] == "signature_invalid"
    assert "cannot roll back to generation 1: acme.app 1.0.0 is not signed" in (
        r.json["error"]["message"])
    r = run_cli("rollback", "--allow-unsigned", "--json")
    assert r.code == 0
    assert r.json["action"] == "rollback to 1"
    assert run_cli("call", "acme.app", "version", "--json").json == {"result": "1"}
    r = run_cli("rollback", "--to", "2", "--allow-unsigned", "--json")
    assert r.json["generation"] == 4

    r = run_cli("history", "--json")
    gens = r.json["generations"]
    assert [g["generation"] for g in gens] == [4, 3, 2, 1]
    assert gens[1]["downgraded"] == [{"id": "acme.app", "from": "1.1.0", "to": "1.0.0"}]
    text = run_cli("history").out
    assert "rollback to 1" in text
    assert "acme.app 1.0.0->1.1.0" in text

    r = run_cli("verify", "--json")
    assert r.code == 0
    assert r.json["ok"] is True
    assert len(r.json["plugins"]) == 2
    lock = json.loads((home / "corral.lock").read_text())
    f = home / "store" / lock["plugins"]["acme.lib"]["sha256"] / f"{module_name('acme.lib')}.py"
    f.chmod(0o644)
    f.write_text("# changed\n")
    r = run_cli("verify", "--json")
    assert r.code == 4
    assert r.json["ok"] is False
    bad = [p for p in r.json["plugins"] if p["state"] != "ok"]
    assert [p["id"] for p in bad] == ["acme.lib"]
    assert run_cli("verify").code == 4

    r = run_cli("uninstall", "acme.app", "--json")
    assert r.code == 0
    assert {x["id"] for x in r.json["removed"]} == {"acme.app", "acme.lib"}
    assert run_cli("list", "--json").json["plugins"] == []


def test_install_from_lock_and_errors(tmp_path: Path, home: Path, run_cli: Run) -> None:
    repo = tmp_path / "repo"
    src = ("--source", str(repo), "--allow-unsigned")
    publish(tmp_path, repo, "acme.a", "1.0.0")
    assert run_cli("install", "acme.a", *src, "--json").code == 0
    other = tmp_path / "other"
    r = run_cli("--home", str(other), "install", "--from", str(home / "corral.lock"),
                "--allow-unsigned", "--json")
    assert r.code == 0, r.out
    mine = json.loads((home / "corral.lock").read_text())["plugins"]
    assert json.loads((other / "corral.lock").read_text())["plugins"] == mine

    r = run_cli("install", "acme.nope", *src, "--json")
    assert r.code == 1
    assert r.json["error"]["code"] == "not_found"
    r = run_cli("install", "acme.a", "--json")
    assert r.code == 2
    assert "--source" in r.json["error"]["message"]
    r = run_cli("install", "acme.a@", *src, "--json")
    assert r.code == 2
    assert r.json["error"]["code"] == "usage"
    publish(tmp_path, repo, "acme.b", "1.0.0")
    r = run_cli("install", "acme.b", "--source", str(repo), "--json")
    assert r.code == 4
    assert r.json["error"]["code"] == "signature_invalid"
    r = run_cli("uninstall", "acme.b", "--json")
    assert r.code == 1
    assert r.json["error"]["code"] == "not_found"
    r = run_cli("rollback", "--to", "9", "--json")
    assert r.code == 1
    assert r.json["error"]["code"] == "not_found"


def test_cli_update_failing_health_check_rolls_back(
    tmp_path: Path, home: Path, run_cli: Run
) -> None:
    repo = tmp_path / "repo"
    src = ("--source", str(repo), "--allow-unsigned")
    mod = module_name("acme.v")
    publish(tmp_path, repo, "acme.v", "1.0.0", code=versioned("1"))
    assert run_cli("install", "acme.v", *src, "--json").code == 0
    assert run_cli("enable", "acme.v").code == 0
    broken = "class Plugin:\n    def on_enable(self, ctx):\n        raise RuntimeError('no')\n"
    publish(tmp_path, repo, "acme.v", "2.0.0", code=versioned("2", broken),
            plugin={"entry": f"{mod}:Plugin"})
    r = run_cli("update", *src, "--json")
    assert r.code == 5, r.out
    assert "rolled back to generation 1" in r.json["error"]["message"]
    assert run_cli("call", "acme.v", "version", "--json").json == {"result": "1"}
    assert run_cli("info", "acme.v", "--json").json["state"] == "enabled"
    top = run_cli("history", "--json").json["generations"][0]
    assert top["action"].startswith("rollback to 1 (automatic:")


def test_progress_bar_draws_totals(capsys: pytest.CaptureFixture[str]) -> None:
    from corral._cli.install import _Bar

    bar = _Bar()
    bar("download acme.a 1.0.0", 512, 2048)
    bar("download acme.a 1.0.0", 2048, 2048)
    bar("install", 1, 3)
    err = capsys.readouterr().err
    assert err.count("\r") == 3
    assert "[######..................] 512B/2048B" in err
    assert "[########################] 2048B/2048B\n" in err
    assert err.endswith("1/3")
