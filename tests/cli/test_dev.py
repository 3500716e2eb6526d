"""``corral add --link`` and ``corral dev``: an author's edit-and-call loop with no re-add."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from helpers.cli import ENV_DROP, CliResult
from helpers.plugins import make_plugin, module_name

Run = Callable[..., CliResult]
PID = "acme.dev"
V2_ECHO = '\n\ndef echo(value, ctx):\n    return {"v2": value}\n'


def edit(src: Path) -> None:
    with open(src / f"{module_name(PID)}.py", "a") as f:
        f.write(V2_ECHO)


def test_add_link_runs_from_the_folder(run_cli: Run, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID)
    res = run_cli("add", "--link", str(src))
    assert res.code == 0, res.err
    assert "linked" in res.out
    assert run_cli("enable", PID).code == 0
    assert run_cli("call", PID, "echo", "--input", "1", "--json").json == {"result": 1}
    edit(src)  # no re-add: the next call runs the edited code
    assert run_cli("call", PID, "echo", "--input", "1", "--json").json == {"result": {"v2": 1}}
    [entry] = run_cli("list", "--json").json["plugins"]
    assert entry["linked"] is True
    assert entry["path"] == str(src)
    assert run_cli("info", PID, "--json").json["linked"] is True
    assert "(linked)" in run_cli("list").out
    again = run_cli("add", "--link", str(src))
    assert again.code == 0, again.err
    assert again.out.startswith("unchanged")


def test_add_again_and_upgrade(run_cli: Run, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID)
    assert run_cli("add", str(src)).out.startswith("registered")
    assert run_cli("add", str(src)).out.startswith("unchanged")
    (src / "notes.txt").write_text("changed")
    res = run_cli("add", str(src), "--json")
    assert res.code == 3
    assert "bump plugin.version" in res.json["error"]["message"]
    make_plugin(tmp_path, PID, version="1.1.0")
    assert run_cli("add", str(src)).out.startswith("upgraded acme.dev 1.1.0")


def test_add_errors_never_name_the_staging_copy(run_cli: Run, tmp_path: Path) -> None:
    src = make_plugin(tmp_path, PID, exports={"echo": "nowhere:echo"})
    res = run_cli("add", str(src), "--json")
    assert res.code == 3
    assert ".staging-" not in res.out + res.err
    assert str(src) in res.json["error"]["message"]
    text = run_cli("add", str(src))
    assert ".staging-" not in text.out + text.err
    assert str(src) in text.err


def _lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def _wait_for(lines: queue.Queue[str], prefix: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r} in {seen!r}")


def test_dev_reloads_on_change(run_cli: Run, tmp_path: Path, home: Path, workspace: Path) -> None:
    src = make_plugin(tmp_path, PID, entry=True)
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["CORRAL_HOME"] = str(home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "dev", str(src), "--debounce", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workspace, env=env,
    )
    lines, pump = _lines(proc)
    try:
        assert "acme.dev 1.0.0 enabled" in _wait_for(lines, "watching ")
        assert run_cli("call", PID, "echo", "--input", "1", "--json").json == {"result": 1}
        log = home / "data" / PID / "hooks.log"
        before = len(log.read_text().split())
        edit(src)
        assert "acme.dev 1.0.0" in _wait_for(lines, "reloaded ")
        assert log.read_text().split()[before:] == [
            f"{PID}:{h}" for h in ("on_disable", "on_unload", "on_load", "on_enable")
        ]
        assert run_cli("call", PID, "echo", "--input", "1", "--json").json == {
            "result": {"v2": 1}
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        assert proc.stdout is not None
        err = proc.stderr.read()
        pump.join(timeout=10)  # it reads stdout to its end first
        proc.stderr.close()
        proc.stdout.close()
    assert proc.returncode == 0, err
    assert ".staging-" not in err
