"""``corral add`` imports a plugin where it would run and refuses one that cannot be imported.

Never in the host process: a plugin whose import would leave a mark here
proves that it ran elsewhere.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import CliResult

from corral import Host, InvalidPluginError
from corral._services.sandboxed import sandbox_problem

GOOD = "def go(value, ctx):\n    return value\n"
BROKEN = "raise ImportError('the frobnicator is missing')\n\n\n" + GOOD


def make(root: Path, plugin_id: str, isolation: str, code: str) -> Path:
    module = plugin_id.replace(".", "_")
    d = root / plugin_id
    (d / module).mkdir(parents=True)
    (d / module / "__init__.py").write_text(code)
    (d / "corral.toml").write_text(textwrap.dedent(f"""
        [plugin]
        id = "{plugin_id}"
        name = "Probe"
        version = "1.0.0"

        [sandbox]
        isolation = "{isolation}"

        [exports]
        go = "{module}:go"
    """))
    return d


def isolations() -> list[str]:
    return ["none"] + [i for i in ("limited", "strict") if sandbox_problem(i) is None]


@pytest.mark.parametrize("isolation", isolations()[1:] or [
    pytest.param("limited", marks=pytest.mark.skip(reason="this machine cannot sandbox"))])
def test_add_refuses_a_plugin_that_cannot_be_imported(
    tmp_path: Path, run_cli: Callable[..., CliResult], isolation: str
) -> None:
    assert run_cli("add", str(make(tmp_path, "acme.good", isolation, GOOD))).code == 0
    broken = make(tmp_path, "acme.broken", isolation, BROKEN)

    r = run_cli("add", str(broken), "--json")
    assert r.code == 3, r
    error = r.json["error"]
    assert error["code"] == "invalid"
    assert error["module"] == "acme_broken"
    assert "acme_broken" in error["message"]
    assert "ImportError: the frobnicator is missing" in error["message"]
    assert "the frobnicator is missing" in error["traceback"]

    plain = run_cli("add", str(broken))
    assert plain.code == 3
    assert "acme_broken" in plain.err
    assert "the frobnicator is missing" in plain.err

    ids = [p["id"] for p in run_cli("list", "--json").json["plugins"]]
    assert ids == ["acme.good"]  # nothing new, and no copy left behind
    assert not (tmp_path / "home" / "plugins" / "acme.broken").exists()


def test_add_runs_no_code_of_an_unsandboxed_plugin(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    marker = tmp_path / "ran.txt"
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n" + BROKEN
    assert run_cli("add", str(make(tmp_path, "acme.open", "none", code))).code == 0
    assert not marker.exists()  # its code first runs when it is enabled, as before


def test_a_good_plugin_still_adds_and_runs(
    tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    level = isolations()[-1]
    assert run_cli("add", str(make(tmp_path, "acme.fine", level, GOOD))).code == 0
    assert run_cli("enable", "acme.fine").code == 0
    r = run_cli("call", "acme.fine", "go", "--input", "[1, 2]", "--json")
    assert r.code == 0, r
    assert r.json == {"result": [1, 2]}


def test_register_probes_sandboxed_plugins_but_not_in_process(
    tmp_path: Path, host: Host
) -> None:
    none = make(tmp_path, "acme.lazy", "none", BROKEN)
    host.register(none)  # by default an isolation-none plugin is not imported here at all
    assert "acme_lazy" not in sys.modules
    with pytest.raises(InvalidPluginError, match="the frobnicator is missing"):
        host.register(make(tmp_path, "acme.eager", "none", BROKEN), probe=True)
    assert "acme_eager" not in sys.modules
    assert [i.id for i in host.list()] == ["acme.lazy"]

    level = isolations()[-1]
    if level == "none":
        pytest.skip("this machine cannot sandbox a plugin")
    with pytest.raises(InvalidPluginError, match="acme_boxed") as info:
        host.register(make(tmp_path, "acme.boxed", level, BROKEN))
    assert info.value.details["module"] == "acme_boxed"
    assert "acme_boxed" not in sys.modules
    assert [i.id for i in host.list()] == ["acme.lazy"]
