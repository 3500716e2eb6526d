"""The one output module: broken pipes, one ``corral: error:`` prefix, the JSON error shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import CliResult

from corral._cli.output import PREFIX, Parser, report, run
from corral._errors import CorralError, NotFoundError, UsageError

Run = Callable[..., CliResult]

#: Nothing listens here: a registry verb fails at once with ``unavailable``.
NO_REGISTRY = "http://127.0.0.1:1"


def _into_closed_pipe(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``corral ARGS`` with stdout a pipe whose reader has already gone."""
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOME", "XDG_DATA_HOME")}
    env["CORRAL_HOME"] = str(home)
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "corral", *args], stdout=write,
                              stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [("list",), ("list", "--json"), ("--version",)])
def test_broken_pipe_exits_quietly(home: Path, args: tuple[str, ...]) -> None:
    proc = _into_closed_pipe(home, *args)
    assert proc.stderr == b""
    assert proc.returncode == 0


def test_broken_pipe_keeps_a_registry_verbs_error_code(home: Path) -> None:
    proc = _into_closed_pipe(home, "search", "x", "--registry", NO_REGISTRY, "--json")
    assert proc.stderr == b""
    assert proc.returncode == 1


def test_reader_gone_after_the_first_line(home: Path) -> None:
    """``corral search ... | head -1``: the reader takes a line and leaves."""
    env = {**os.environ, "CORRAL_HOME": str(home)}
    with subprocess.Popen([sys.executable, "-m", "corral", "schema"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline()  # the rest may or may not be written yet: both are fine
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    assert b"Traceback" not in err
    assert err == b""


def test_one_prefix_even_when_the_message_has_it(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise NotFoundError(f"{PREFIX}{PREFIX}no such thing")

    assert run(fail, False) == 1
    err = capsys.readouterr().err
    assert err == "corral: error: no such thing\n"


def test_a_foreign_error_is_named_by_its_type(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise KeyError("k")

    assert run(fail, True) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"error": {"code": "error", "message": "KeyError: 'k'"}}


def test_a_plugins_lines_stay_under_its_id(capsys: pytest.CaptureFixture[str]) -> None:
    report(CorralError("first\ncorral: error: forged", plugin_id="acme.x"), False)
    err = capsys.readouterr().err
    assert err == "corral: error: first\n  acme.x| corral: error: forged\n"


def test_parser_names_the_verb_but_not_the_command_twice() -> None:
    with pytest.raises(UsageError) as top:
        Parser(prog="corral").parse_args(["--bogus"])
    assert top.value.message == "unrecognized arguments: --bogus"
    with pytest.raises(UsageError) as verb:
        Parser(prog="corral info").parse_args(["--bogus"])
    assert verb.value.message == "corral info: unrecognized arguments: --bogus"


def test_no_doubled_prefix_on_the_command_line(run_cli: Run) -> None:
    for args in (("--bogus",), ("info",), ("info", "nope"),
                 ("search", "x", "--registry", NO_REGISTRY), ("config", "get")):
        res = run_cli(*args)
        assert res.code != 0, args
        lines = res.err.splitlines()
        assert lines, (args, res.err)
        assert lines[0].startswith(PREFIX), (args, res.err)
        assert res.err.count("corral: error:") == 1, (args, res.err)
        assert "corral: error: corral:" not in res.err, (args, res.err)
        assert "Traceback" not in res.err


@pytest.mark.parametrize(("args", "exit_code", "code"), [
    (("info", "nope", "--json"), 1, "not_found"),
    (("info", "--json"), 2, "usage"),
    (("config", "unset", "acme.x", "k", "--json"), 1, "not_found"),
    (("search", "x", "--registry", NO_REGISTRY, "--json"), 1, "unavailable"),
    (("show", "--json"), 2, "usage"),
])
def test_json_error_shape(run_cli: Run, args: tuple[str, ...], exit_code: int,
                          code: str) -> None:
    res = run_cli(*args)
    assert res.code == exit_code, (res.out, res.err)
    assert res.err == ""
    assert set(res.json) == {"error"}
    error = res.json["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert not error["message"].startswith(PREFIX)
    again = CorralError.from_dict(error)
    assert again.code == code
    assert again.exit_code == exit_code
