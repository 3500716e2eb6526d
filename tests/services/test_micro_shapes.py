"""Micro-plugin shapes as the seed has them: a validator may return ``bool``; shapes are
checked at ``add``/``validate``; chaining some micros checks only those."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import CliResult
from helpers.plugins import micro_plugin

from corral import Host
from corral._errors import InvalidPluginError
from corral._services.micro.compose import Composition, validate_chain
from corral._services.micro.manager import MicroManager

BOOL_CODE = '''
def semver(value, ctx) -> bool:
    return str(value).count(".") == 2

def upper(value, ctx) -> str:
    return str(value).upper()
'''

#: ``Text`` is ``str`` to the interpreter, which source alone cannot tell: refused only on load.
ALIAS_CODE = '''
Text = str

def semver(value, ctx) -> Text:
    return "yes"

def upper(value, ctx) -> str:
    return str(value).upper()
'''




def test_a_validator_returning_bool_gives_a_verdict() -> None:
    with MicroManager() as mgr:
        def even(n: int) -> bool:
            return n % 2 == 0

        info = mgr.register(even, id="t.even", type="validator")
        assert info.output == "verdict"
        assert mgr.execute("t.even", 2) == {"valid": True, "reasons": []}
        assert mgr.execute("t.even", 3) == {"valid": False, "reasons": []}
        mgr.register(lambda n: n * 10, id="t.times", type="utility")
        pipeline = {"id": "p", "steps": [{"micro": "t.times", "if-valid": "t.even"}]}
        from corral._model.pipeline import pipeline_from_dict

        comp = Composition(pipeline_from_dict(pipeline), mgr)
        assert comp.run(2) == 20
        assert comp.run(3) == 3


def test_a_validator_declared_to_return_str_is_still_refused() -> None:
    with MicroManager() as mgr:
        def says(n: int) -> str:
            return "ok"

        with pytest.raises(InvalidPluginError, match="must return a verdict"):
            mgr.register(says, id="t.says", type="validator")


@pytest.mark.parametrize("isolation", ["none", "limited"])
def test_a_plugin_with_a_bool_validator_serves_all_its_micros(
    tmp_path: Path, isolation: str
) -> None:
    if isolation == "limited":
        from corral._services.sandboxed import sandbox_problem

        if sandbox_problem("limited"):
            pytest.skip("needs a sandbox")
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(micro_plugin(tmp_path, "acme.b", BOOL_CODE, isolation))
        host.enable("acme.b")
        assert Composition(["acme.b.upper"], host.micro).run("x") == "X"
        assert host.micro.execute("acme.b.semver", "1.2.3") == {"valid": True, "reasons": []}
        assert host.micro.execute("acme.b.semver", "1.2") == {"valid": False, "reasons": []}


def test_add_refuses_a_validator_annotated_with_a_wrong_shape(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    src = micro_plugin(tmp_path, "acme.w", BOOL_CODE.replace("-> bool", "-> str"))
    res = run_cli("add", str(src), "--json")
    assert res.code == 3, res.err
    error = res.json["error"]
    assert error["micro"] == "acme.w.semver"
    assert error["key"] == "micro[0].handler"
    assert "must return a verdict" in error["message"]
    res = run_cli("validate", str(src), "--json")
    assert res.code == 3
    assert any(i["rule"] == "CORRAL-E003" and "acme.w.semver" in i["message"]
               for i in res.json["errors"]), json.dumps(res.json)


def test_add_and_validate_accept_a_bool_validator(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    src = micro_plugin(tmp_path, "acme.ok", BOOL_CODE)
    res = run_cli("validate", str(src), "--json")
    assert not [i for i in res.json["errors"] if i["rule"] == "CORRAL-E003"], res.json
    assert run_cli("add", str(src)).code == 0


def test_chaining_some_micros_checks_only_those(tmp_path: Path) -> None:
    with Host(home=tmp_path / "home", workspace=tmp_path) as host:
        host.register(micro_plugin(tmp_path, "acme.a", ALIAS_CODE))  # passes the static check
        host.enable("acme.a")
        mgr = host.micro
        assert Composition(["acme.a.upper"], mgr).run("x") == "X"
        assert validate_chain(["acme.a.upper"], mgr) == "str"
        with pytest.raises(InvalidPluginError, match=r"acme\.a\.semver.*must return a verdict"):
            Composition(["acme.a.semver"], mgr)
        with pytest.raises(InvalidPluginError, match="must return a verdict"):
            mgr.execute("acme.a.semver", "1")
        host.disable("acme.a")
        assert mgr.refusal("acme.a.semver") is None
