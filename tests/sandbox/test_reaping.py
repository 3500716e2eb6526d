"""A strict worker (PID 1 of its namespace) reaps orphans promptly, judged from the host's /proc.

Real kernel, real processes: the plugin spawns ``/bin/sh`` that double-forks, and
the test looks at the worker's children from outside, without another call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(
    sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict"))
)

SOURCE = r"""
import os
import subprocess
import time


def orphan(inp, ctx):
    # sh leaves its background job behind: it is re-parented to the worker (PID 1)
    done = ctx.spawn.run(["sh", "-c", inp["script"]])
    return done.returncode


def own_then_orphans(inp, ctx):
    # the plugin's own child exits while orphans come and go: its status is its own
    own = subprocess.Popen(["sh", "-c", "exit 7"])
    orphans = ctx.spawn.run(["sh", "-c", "for i in 1 2 3 4 5; do sleep 0 & done; exit 3"])
    time.sleep(0.2)  # SIGCHLDs for the orphans (and for own) arrive meanwhile
    forked = os.fork()
    if forked == 0:
        os._exit(5)
    time.sleep(0.1)
    _, status = os.waitpid(forked, 0)
    return {"own": own.wait(), "spawned": orphans.returncode,
            "forked": os.waitstatus_to_exitcode(status)}


def many(inp, ctx):
    codes = []
    for i in range(inp):
        codes.append(subprocess.run(["sh", "-c", f"sleep 0 & exit {i % 5}"]).returncode)
    return codes
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    pkg = tmp_path / "code" / "reapy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plug.py").write_text(SOURCE)
    return tmp_path


def make_spec(root: Path, plugin_id: str, **kw: Any) -> SandboxSpec:
    dirs: dict[str, Any] = {}
    for name in ("data", "tmp", "cache"):
        d = root / "plugins" / plugin_id / name
        d.mkdir(parents=True, exist_ok=True)
        dirs[f"{name}_dir"] = d
    return SandboxSpec(
        plugin_id=plugin_id,
        isolation="strict",
        plugin_dir=root / "code",
        spawn=("sh", "sleep"),
        write_paths=(Path("/dev/null"),),  # as spec_for grants it
        **dirs,
        **kw,
    )


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor()
    yield s
    s.close()


def children(pid: int) -> dict[int, str]:
    """The children of ``pid`` (host pids) and their states, from the host's /proc."""
    out: dict[int, str] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            try:
                stat = Path(f"/proc/{kid}/stat").read_text()
            except OSError:
                continue
            out[kid] = stat.rpartition(")")[2].split()[0]
    return out


def zombies(pid: int) -> list[int]:
    return [k for k, state in children(pid).items() if state == "Z"]


def settle(pid: int, timeout: float = 3.0) -> dict[int, str]:
    """Wait until ``pid`` has no child left (dead or alive); return what is still there."""
    deadline = time.monotonic() + timeout
    left = children(pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = children(pid)
    return left


def test_orphan_of_a_double_fork_is_reaped_without_another_call(
    sup: Supervisor, root: Path
) -> None:
    spec = make_spec(root, "reap.double-fork")
    # The orphan outlives the call on purpose: only a reaper between calls can take it.
    script = "sleep 1 >/dev/null 2>&1 & exit"
    assert sup.call(spec, "reapy.plug:orphan", {"script": script}) == 0
    worker = sup.worker_pid(spec.plugin_id)
    assert worker is not None
    # the sleep, adopted by the worker (alive: sleeping, or running on a busy machine)
    assert set(children(worker).values()) <= {"S", "R", "D"}
    assert len(children(worker)) == 1
    assert settle(worker, 5.0) == {}  # it exited, and was reaped while the worker sat idle
    assert zombies(worker) == []


def test_the_brief_case_sleep_0(sup: Supervisor, root: Path) -> None:
    spec = make_spec(root, "reap.sleep0")
    for _ in range(5):
        assert sup.call(spec, "reapy.plug:orphan", {"script": "sleep 0 >/dev/null & exit"}) == 0
        worker = sup.worker_pid(spec.plugin_id)
        assert worker is not None
        assert settle(worker, 2.0) == {}


def test_the_plugins_own_exit_statuses_are_not_stolen(sup: Supervisor, root: Path) -> None:
    spec = make_spec(root, "reap.own")
    for _ in range(3):
        got = sup.call(spec, "reapy.plug:own_then_orphans", None)
        assert got == {"own": 7, "spawned": 3, "forked": 5}
    worker = sup.worker_pid(spec.plugin_id)
    assert worker is not None
    assert settle(worker) == {}


def test_many_spawns_keep_their_codes_and_leave_nothing(sup: Supervisor, root: Path) -> None:
    spec = make_spec(root, "reap.many", max_processes=8)
    assert sup.call(spec, "reapy.plug:many", 40) == [i % 5 for i in range(40)]
    worker = sup.worker_pid(spec.plugin_id)
    assert worker is not None
    assert settle(worker) == {}
