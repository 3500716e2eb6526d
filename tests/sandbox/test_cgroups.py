"""``max-processes`` through the pids cgroup, judged from outside: real kernel, no mocks."""

from __future__ import annotations

import glob
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral._errors import PluginError
from corral._sandbox.cgroups import detect
from corral._sandbox.kernel import KernelFeatures, probe
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor

HIERARCHY, WHY = detect()
ROOT = os.getuid() == 0

needs_pids_cgroup = pytest.mark.skipif(HIERARCHY is None, reason=f"no pids cgroup: {WHY}")
LEVELS = ["limited", "strict"]

SOURCE = r"""
import errno
import os
import time


def fork_many(inp, ctx):
    pids = []
    error = None
    for _ in range(inp["n"]):
        try:
            pid = os.fork()
        except OSError as exc:
            error = errno.errorcode.get(exc.errno, str(exc.errno))
            break
        if pid == 0:
            try:
                time.sleep(inp["sleep"])
            finally:
                os._exit(0)
        pids.append(pid)
    if inp.get("wait"):
        for pid in pids:
            os.waitpid(pid, 0)
    return {"forked": len(pids), "error": error}


def fork_and_raise(inp, ctx):
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)


def noop(inp, ctx):
    return os.getpid()
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    pkg = tmp_path / "code" / "forky"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plug.py").write_text(SOURCE)
    return tmp_path


def make_spec(root: Path, plugin_id: str, isolation: str, **kw: Any) -> SandboxSpec:
    dirs = {}
    for name in ("data", "tmp", "cache"):
        d = root / "plugins" / plugin_id / name
        d.mkdir(parents=True, exist_ok=True)
        dirs[f"{name}_dir"] = d
    return SandboxSpec(
        plugin_id=plugin_id,
        isolation=isolation,  # type: ignore[arg-type]
        plugin_dir=root / "code",
        **dirs,
        **kw,
    )


def ours() -> list[str]:
    """The cgroup directories this test process's supervisors own."""
    assert HIERARCHY is not None
    return sorted(glob.glob(os.path.join(HIERARCHY.base, f"corral-{os.getpid()}-*")))


def cgroup_of(pid: int) -> str:
    """The worker cgroup holding ``pid``, found from outside by its cgroup.procs."""
    for parent in ours():
        for child in sorted(Path(parent).iterdir()):
            if child.is_dir() and str(pid) in (child / "cgroup.procs").read_text().split():
                return str(child)
    raise AssertionError(f"{pid} is in no corral cgroup")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for tid in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}") else []:
            try:
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                out.append(k)
                todo.append(k)
    return out


def gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in pids):
            return True
        time.sleep(0.01)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def events_max(path: str) -> int:
    """How often the kernel refused a fork in the cgroup at ``path`` (pids.events)."""
    for line in Path(path, "pids.events").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "max":
            return int(value)
    return 0


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor()
    yield s
    s.close()


@needs_pids_cgroup
@pytest.mark.skipif(not ROOT, reason="the gap is root's: RLIMIT_NPROC does not bind it")
@pytest.mark.parametrize("isolation", LEVELS)
def test_a_fork_bomb_stops_at_max_processes(code: Path, sup: Supervisor, isolation: str) -> None:
    spec = make_spec(code, f"bomb-{isolation}", isolation, max_processes=4, timeout_ms=10_000)
    got = sup.call(spec, "forky.plug:fork_many", {"n": 50, "sleep": 30})
    assert got["error"] == "EAGAIN"
    assert got["forked"] <= 3  # the worker itself is the fourth
    worker = sup.worker_pid(spec.plugin_id)
    assert worker is not None
    cgroup = cgroup_of(worker)
    # Counted from outside, while the children still sleep.
    assert int(Path(cgroup, "pids.current").read_text()) <= 4
    assert Path(cgroup, "pids.max").read_text().strip() == "4"
    assert events_max(cgroup) >= 1  # it was the cgroup that said no
    tree = descendants(worker)
    assert len(tree) == got["forked"]
    assert 1 + len(tree) <= 4
    # The host goes on, and so does another plugin.
    other = make_spec(code, f"other-{isolation}", isolation)
    assert isinstance(sup.call(other, "forky.plug:noop", None), int)
    sup.stop(spec.plugin_id)
    assert gone([worker, *tree])
    assert not os.path.exists(cgroup)
    sup.close()
    assert ours() == []


@needs_pids_cgroup
@pytest.mark.parametrize("isolation", LEVELS)
def test_a_bomb_that_raises_is_a_plugin_error_and_leaves_nothing(
    code: Path, sup: Supervisor, isolation: str
) -> None:
    spec = make_spec(code, f"raiser-{isolation}", isolation, max_processes=4)
    with pytest.raises(PluginError):
        sup.call(spec, "forky.plug:fork_and_raise", None)
    worker = sup.worker_pid(spec.plugin_id)
    assert worker is not None
    tree = descendants(worker)
    assert 1 + len(tree) <= 4
    # The worker is still usable, and still killable.
    assert sup.call(spec, "forky.plug:noop", None) is not None
    sup.stop(spec.plugin_id)
    assert gone([worker, *tree])
    sup.close()
    assert ours() == []


@needs_pids_cgroup
@pytest.mark.parametrize("isolation", LEVELS)
def test_under_the_limit_forking_works(code: Path, sup: Supervisor, isolation: str) -> None:
    spec = make_spec(code, f"fine-{isolation}", isolation, max_processes=4)
    for _ in range(3):  # the same worker, again and again: exited children free their slots
        got = sup.call(spec, "forky.plug:fork_many", {"n": 3, "sleep": 0, "wait": True})
        assert got == {"forked": 3, "error": None}
    worker = sup.worker_pid(spec.plugin_id)
    assert worker is not None
    assert Path(cgroup_of(worker), "pids.max").read_text().strip() == "4"


@needs_pids_cgroup
def test_every_worker_has_its_own_cgroup_and_all_go_on_close(code: Path) -> None:
    sup = Supervisor()
    try:
        paths = set()
        for isolation in LEVELS:
            for n in range(2):
                spec = make_spec(code, f"p{n}-{isolation}", isolation, max_processes=5 + n)
                worker = sup.call(spec, "forky.plug:noop", None)
                host_pid = sup.worker_pid(spec.plugin_id)
                assert host_pid is not None
                assert isinstance(worker, int)
                path = cgroup_of(host_pid)
                assert Path(path, "pids.max").read_text().strip() == str(5 + n)
                if HIERARCHY is not None and HIERARCHY.version == 1:  # v2 cannot rename
                    assert Path(path).name.startswith(spec.plugin_id + "-")
                paths.add(path)
        assert len(paths) == 4
        assert len(ours()) == 1
    finally:
        sup.close()
    assert ours() == []


@needs_pids_cgroup
def test_a_killed_forkserver_leaves_no_cgroups(code: Path) -> None:
    sup = Supervisor()
    try:
        spec = make_spec(code, "orphaned", "strict", max_processes=4)
        sup.call(spec, "forky.plug:fork_many", {"n": 2, "sleep": 30})
        worker = sup.worker_pid(spec.plugin_id)
        assert worker is not None
        tree = descendants(worker)
        server = sup._forkserver.pid
        assert server is not None
        os.kill(server, signal.SIGKILL)
    finally:
        sup.close()
    assert gone([worker, *tree])
    assert ours() == []


def test_probe_sees_the_pids_cgroup() -> None:
    features = probe()
    assert features.pids_cgroup == (HIERARCHY is not None)
    names = [row.name for row in features.describe()]
    assert ("pids cgroup" in names) == (HIERARCHY is None)
    if HIERARCHY is not None:
        assert HIERARCHY.base in features.pids_cgroup_detail
        assert "pids cgroup" not in features.missing_for_strict()


def test_only_root_needs_the_pids_cgroup_for_strict() -> None:
    full = {
        "machine": "x86_64",
        "landlock_abi": 6,
        "seccomp_filter": True,
        "user_ns": True,
        "pid_ns": True,
        "net_ns": True,
        "mount_ns": True,
        "ipc_ns": True,
    }
    user = KernelFeatures(**full, pids_cgroup=False, real_root=False)  # type: ignore[arg-type]
    assert user.missing_for_strict() == []
    assert "RLIMIT_NPROC" in {r.name: r.detail for r in user.describe()}["pids cgroup"]
    root = KernelFeatures(**full, pids_cgroup=False, real_root=True)  # type: ignore[arg-type]
    assert root.missing_for_strict() == ["pids cgroup"]
    assert "does not bind" in {r.name: r.detail for r in root.describe()}["pids cgroup"]
    ok = KernelFeatures(**full, pids_cgroup=True, real_root=True)  # type: ignore[arg-type]
    assert ok.missing_for_strict() == []
