"""``corral daemon status|stop`` and the verbs that stop an idle daemon, with real processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from helpers.cli import CliResult
from helpers.plugins import make_plugin

Run = Callable[..., CliResult]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/cmdline").read_bytes() != b""


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _strict_call(run_cli: Run, workspace: Path, pid: str = "acme.forked") -> dict[str, object]:
    """Add, enable and call a strict plugin: the home's daemon runs after; its status."""
    make_plugin(workspace / "p", pid, isolation="strict")
    assert run_cli("add", str(workspace / "p" / "src" / pid)).code == 0
    assert run_cli("enable", pid).code == 0
    r = run_cli("call", pid, "echo", "--input", "1", "--json")
    assert r.code == 0, r.err
    status = run_cli("daemon", "status", "--json").json
    assert len(status["daemons"]) == 1, status
    found: dict[str, object] = status["daemons"][0]
    return found


def test_status_and_stop(run_cli: Run, workspace: Path, home: Path) -> None:
    d = _strict_call(run_cli, workspace)
    pid = d["pid"]
    assert isinstance(pid, int)
    assert _alive(pid)
    assert d["socket"] == str(next((home / "run").glob("forkserver-*.sock")))
    assert d["clients"] == 0
    assert isinstance(d["idle_left"], float)
    assert 0 < d["idle_left"] <= d["idle_timeout"]
    text = run_cli("daemon", "status").out
    assert str(pid) in text
    assert "IDLE LEFT" in text
    r = run_cli("daemon", "stop")
    assert r.code == 0
    assert f"stopped fork-server daemon {pid}" in r.out
    assert _gone(pid)
    assert run_cli("daemon", "status", "--json").json == {"daemons": []}
    assert list((home / "run").glob("forkserver-*")) == []  # socket and status file gone
    assert run_cli("call", "acme.forked", "echo", "--input", "2", "--json").json == {
        "result": 2}  # a new one starts on demand


def test_removing_the_last_plugin_stops_it(run_cli: Run, workspace: Path) -> None:
    d = _strict_call(run_cli, workspace)
    make_plugin(workspace / "q", "acme.other")
    assert run_cli("add", str(workspace / "q" / "src" / "acme.other")).code == 0
    assert run_cli("remove", "acme.forked").code == 0
    assert _alive(int(str(d["pid"])))  # a plugin is left: the daemon may serve it
    assert run_cli("remove", "acme.other").code == 0
    assert _gone(int(str(d["pid"])))


def test_gc_stops_it(run_cli: Run, workspace: Path) -> None:
    d = _strict_call(run_cli, workspace)
    assert run_cli("gc").code == 0
    assert _gone(int(str(d["pid"])))
