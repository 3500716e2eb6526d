"""Micro-plugins served by a real host, at each isolation level, and their verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.plugins import micro_plugin

from corral import Host
from corral._cli.main import main
from corral._errors import NotFoundError, PluginError
from corral._services.micro.compose import Composition

CODE = '''
def semver(value, ctx):
    parts = str(value).split(".")
    ok = len(parts) == 3 and all(p.isdigit() for p in parts)
    return {"valid": ok, "reasons": [] if ok else ["not semver"]}

def upper(value, ctx):
    return str(value).upper() + ":" + ctx.plugin_id

def liar(value, ctx):
    return 42
'''

def make(root: Path, pid: str, isolation: str) -> Path:
    return micro_plugin(root, pid, CODE, isolation, (("semver", "validator"),
                                                     ("upper", "formatter"),
                                                     ("liar", "formatter")))

@pytest.mark.parametrize("isolation", ["none", "limited"])
def test_host_feeds_manager(tmp_path: Path, isolation: str) -> None:
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(make(tmp_path, "acme.m", isolation))
        host.enable("acme.m")
        mgr = host.micro
        assert mgr.execute("acme.m.semver", "1.2.3") == {"valid": True, "reasons": []}
        assert mgr.execute("acme.m.upper", "x") == "X:acme.m"
        assert mgr.get("acme.m.upper").mode == ("inline" if isolation == "none" else "invoke")
        with pytest.raises(PluginError, match=r"acme\.m\.liar"):
            mgr.execute("acme.m.liar", 1)
        assert Composition(["acme.m.upper", "acme.m.upper"], mgr).run("a") == "A:ACME.M:acme.m"
        host.disable("acme.m")
        with pytest.raises(NotFoundError):
            mgr.execute("acme.m.upper", "x")
        host.enable("acme.m")
        assert host.micro.execute("acme.m.upper", "y") == "Y:acme.m"


def run(home: Path, *argv: str) -> int:
    """Run the real command line in this process, raising nothing: errors are exit codes."""
    return main(["--home", str(home), "--workspace", str(home), *argv])


def test_micro_verbs(tmp_path: Path, capsys: Any) -> None:
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(make(tmp_path, "acme.m", "none"))
        host.enable("acme.m")
    home = tmp_path / "home"
    assert run(home, "micro", "list", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in doc["micro"]] == ["acme.m.liar", "acme.m.semver", "acme.m.upper"]
    assert run(home, "micro", "list") == 0
    assert "acme.m.upper" in capsys.readouterr().out
    assert run(home, "micro", "run", "acme.m.upper", "--input", '"x"') == 0
    assert capsys.readouterr().out.strip() == "X:acme.m"
    assert run(home, "chain", "acme.m.upper,acme.m.upper", "--input", '"x"', "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"result": "X:ACME.M:acme.m"}
    assert run(home, "micro", "run", "acme.m.upper", "--input", "{x", "--json") == 2
    assert "not valid JSON" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert run(home, "chain", "acme.m.upper,acme.m.nope", "--json") == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"
    assert run(home, "rollout", "start", "r1", "--stable", "acme.m.upper", "--canary",
               "acme.m.liar", "--steps", "10,50,100", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rollouts"][0]["percent"] == 10
    assert run(home, "rollout", "status") == 0
    assert "r1: acme.m.upper -> acme.m.liar  running at 10%" in capsys.readouterr().out
    assert run(home, "rollout", "abort", "r1", "--reason", "no") == 0
    assert "aborted at 0%" in capsys.readouterr().out
    assert run(home, "rollout", "start", "r2", "--stable", "acme.m.upper", "--canary",
               "acme.m.liar", "--steps", "10,500", "--json") == 2
    assert "steps[1]" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert run(home, "rollout", "start", "r3", "--stable", "acme.m.upper", "--canary",
               "acme.m.zz", "--json") == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"


PIPELINE_TOML = '''
[[pipeline]]
id = "acme.m.shout-if-valid"
description = "upper-case a version only when it is semver"
steps = [
    { micro = "acme.m.upper", if-valid = "acme.m.semver", on-error = "default", default = "nope" },
]
'''


def test_manifest_pipeline_runs_through_host_and_cli(tmp_path: Path, capsys: Any) -> None:
    plugin = make(tmp_path, "acme.m", "none")
    toml = plugin / "corral.toml"
    toml.write_text(toml.read_text() + PIPELINE_TOML)
    home = tmp_path / "home"
    with Host(home=home, workspace=tmp_path) as host:
        host.register(plugin)
        host.enable("acme.m")
        assert host.run_pipeline("acme.m.shout-if-valid", "1.2.3") == "1.2.3:acme.m"
        assert host.run_pipeline("acme.m.shout-if-valid", "v1") == "v1"  # validator said no
        with pytest.raises(NotFoundError, match="no enabled plugin declares"):
            host.run_pipeline("acme.m.nope", "x")
    assert run(home, "micro", "run", "acme.m.shout-if-valid", "--input", '"1.2.3"', "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"result": "1.2.3:acme.m"}


def test_manifest_pipeline_errors_name_the_key(tmp_path: Path) -> None:
    from corral import ManifestError, parse_manifest

    base = (make(tmp_path, "acme.m", "none") / "corral.toml").read_text()
    bad = base + PIPELINE_TOML.replace('on-error = "default", default = "nope"',
                                       'on-error = "ignore"')
    with pytest.raises(ManifestError, match=r"pipeline\[0\]\.steps\[0\]\.on-error: must be one"):
        parse_manifest(bad)
    dup = base + PIPELINE_TOML.replace("acme.m.shout-if-valid", "acme.m.upper")
    with pytest.raises(ManifestError, match=r"duplicate id 'acme\.m\.upper'"):
        parse_manifest(dup)
    round_trip = parse_manifest(base + PIPELINE_TOML)
    assert parse_manifest(base + PIPELINE_TOML).to_dict() == round_trip.to_dict()
    assert round_trip.pipelines[0].to_dict()["steps"][0]["if-valid"] == "acme.m.semver"
