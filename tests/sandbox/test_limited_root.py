"""A ``limited`` worker of a root host cannot touch its pids cgroup, and still works.

Real kernel: the host runs as root here (as these tests do), the worker is a real
limited worker, and each escape is tried from inside and judged from outside.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral._sandbox.cgroups import detect, mount_points
from corral._sandbox.landlock import landlock_abi, paths_outside
from corral._sandbox.seccomp import SUPPORTED_MACHINES, build_limited_filter
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor

HIERARCHY, WHY = detect()

needs_root_cgroup = pytest.mark.skipif(
    HIERARCHY is None or os.getuid() != 0 or landlock_abi() < 1,
    reason=f"needs root, Landlock and a pids cgroup ({WHY or 'landlock/root'})",
)

SOURCE = r"""
import ctypes
import errno
import os
import subprocess
import threading

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUSER = 0x00020000, 0x02000000, 0x10000000


def _err(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def my_cgroup(inp, ctx):
    for line in open("/proc/self/cgroup").read().splitlines():
        num, ctrls, path = line.split(":", 2)
        if inp["version"] == 2 and num == "0" or inp["version"] == 1 and "pids" in ctrls.split(","):
            return path
    return None


def write(inp, ctx):
    out = {}
    for path, data in inp:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, data.encode())
            finally:
                os.close(fd)
            out[path] = "ok"
        except OSError as exc:
            out[path] = _err(exc)
    return out


def mkdir(inp, ctx):
    try:
        os.mkdir(inp)
        return "ok"
    except OSError as exc:
        return _err(exc)


def remount(inp, ctx):
    # a new user, mount and cgroup namespace give CAP_SYS_ADMIN there: mount the pids
    # hierarchy again and write pids.max through it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        steps = []
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP) != 0:
            steps.append("unshare:" + errno.errorcode.get(ctypes.get_errno(), "?"))
        else:
            steps.append("unshare:ok")
            target = inp["target"]
            os.makedirs(target, exist_ok=True)
            for fstype, opts in (("cgroup", b"pids"), ("cgroup2", None)):
                ret = libc.mount(b"none", target.encode(), fstype.encode(), 0, opts)
                steps.append(f"mount_{fstype}:" +
                             ("ok" if ret == 0 else errno.errorcode.get(ctypes.get_errno(), "?")))
        os.write(w, " ".join(steps).encode())
        os._exit(0)
    os.close(w)
    got = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    return got


def clone3(inp, ctx):
    libc = ctypes.CDLL(None, use_errno=True)
    ret = libc.syscall(435, None, 0)
    return [ret, errno.errorcode.get(ctypes.get_errno(), "?")]


def everyday(inp, ctx):
    # threads, fork, subprocess (glibc falls back from clone3) and the plugin's own files
    seen = []
    t = threading.Thread(target=seen.append, args=(1,))
    t.start()
    t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(4)
    _, status = os.waitpid(pid, 0)
    done = subprocess.run(["sh", "-c", "echo hi; exit 6"], capture_output=True)
    with open(os.path.join(os.path.dirname(__file__), "plug.py")) as f:
        source = f.read()
    for d in (ctx.data_dir, ctx.tmp_dir, ctx.cache_dir):
        (d / "note.txt").write_text("written")
    with open(os.path.join(inp["outside"], "elsewhere.txt"), "w") as f:
        f.write("limited still writes where the host may")
    return {"thread": seen, "fork": os.waitstatus_to_exitcode(status),
            "sh": [done.returncode, done.stdout.decode()], "own_source": "def everyday" in source,
            "uid": os.getuid(),
            "reads_cgroupfs": bool(open("/proc/self/cgroup").read())}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    pkg = tmp_path / "code" / "rooty"
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
        plugin_id=plugin_id, isolation="limited", plugin_dir=root / "code", **dirs, **kw
    )


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor()
    yield s
    s.close()


def cgroup_dir(sup: Supervisor, spec: SandboxSpec) -> Path:
    assert HIERARCHY is not None
    rel = sup.call(spec, "rooty.plug:my_cgroup", {"version": HIERARCHY.version})
    assert isinstance(rel, str)
    # the host's view of the same cgroup: the hierarchy's mount point plus the path
    mount = HIERARCHY.base[: len(HIERARCHY.base) - len(_own_rel())] or HIERARCHY.base
    path = Path(os.path.normpath(f"{mount}/{rel}"))
    worker = sup.worker_pid(spec.plugin_id)
    assert str(worker) in (path / "cgroup.procs").read_text().split()
    return path


def _own_rel() -> str:
    assert HIERARCHY is not None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        num, ctrls, path = line.split(":", 2)
        if (HIERARCHY.version == 2 and num == "0") or (
            HIERARCHY.version == 1 and "pids" in ctrls.split(",")
        ):
            return "" if path == "/" else path
    raise AssertionError("no pids cgroup line")


@needs_root_cgroup
def test_a_limited_worker_cannot_lift_its_limit_or_leave_its_cgroup(
    sup: Supervisor, root: Path
) -> None:
    spec = make_spec(root, "root.escape", max_processes=6)
    cg = cgroup_dir(sup, spec)
    assert HIERARCHY is not None
    targets = [
        (str(cg / "pids.max"), "max"),
        (str(cg / "cgroup.procs"), "0"),
        (str(cg.parent / "cgroup.procs"), "0"),
        (os.path.join(HIERARCHY.base, "cgroup.procs"), "0"),
        (os.path.join(mount_points()[0], "cgroup.procs"), "0"),
    ]
    got = sup.call(spec, "rooty.plug:write", targets)
    assert set(got.values()) == {"EACCES"}, got
    assert sup.call(spec, "rooty.plug:mkdir", str(cg / "nested")) == "EACCES"
    # Judged from outside: the limit and the membership are as the host set them.
    assert (cg / "pids.max").read_text().strip() == "6"
    worker = sup.worker_pid(spec.plugin_id)
    assert str(worker) in (cg / "cgroup.procs").read_text().split()
    assert not (cg / "nested").exists()


@needs_root_cgroup
def test_no_second_view_of_the_cgroups_by_mounting(sup: Supervisor, root: Path) -> None:
    spec = make_spec(root, "root.mount")
    target = str(root / "plugins" / "root.mount" / "tmp" / "cg")
    got = sup.call(spec, "rooty.plug:remount", {"target": target})
    steps = dict(step.split(":", 1) for step in got.split())
    if steps["unshare"] == "ok":  # the kernel lets it make namespaces: Landlock refuses the mount
        assert steps["mount_cgroup"] == "EPERM"
        assert steps["mount_cgroup2"] == "EPERM"
    assert not os.path.ismount(target)


@pytest.mark.skipif(os.uname().machine not in SUPPORTED_MACHINES, reason="no seccomp table")
def test_clone3_is_refused_in_limited_and_everyday_work_goes_on(
    sup: Supervisor, root: Path, tmp_path: Path
) -> None:
    spec = make_spec(root, "root.everyday", spawn=("sh",))
    assert sup.call(spec, "rooty.plug:clone3", None) == [-1, "ENOSYS"]
    outside = tmp_path / "outside"
    outside.mkdir()
    got = sup.call(spec, "rooty.plug:everyday", {"outside": str(outside)})
    assert got == {
        "thread": [1],
        "fork": 4,
        "sh": [6, "hi\n"],
        "own_source": True,
        "uid": os.getuid(),
        "reads_cgroupfs": True,
    }
    for name in ("data", "tmp", "cache"):
        assert (root / "plugins" / "root.everyday" / name / "note.txt").read_text() == "written"
    assert (outside / "elsewhere.txt").read_text().startswith("limited still writes")


def test_paths_outside_covers_all_but_the_excluded(tmp_path: Path) -> None:
    for d in ("a/b/keep", "a/b/cut/deep", "a/other", "z"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "a" / "file").write_text("x")
    (tmp_path / "a" / "b" / "link").symlink_to(tmp_path / "a" / "b" / "cut")
    got = paths_outside([str(tmp_path / "a" / "b" / "cut")], str(tmp_path))
    rel = sorted(os.path.relpath(p, tmp_path) for p in got)
    assert rel == ["a/b/keep", "a/file", "a/other", "z"]  # no cut, no link into it
    assert paths_outside([str(tmp_path)], str(tmp_path)) == []
    assert paths_outside([], str(tmp_path)) == [str(tmp_path / "a"), str(tmp_path / "z")]


def test_the_cgroup_mounts_are_all_excluded() -> None:
    points = mount_points()
    if HIERARCHY is not None:
        assert any(HIERARCHY.base.startswith(p) for p in points)
    granted = paths_outside(points)
    for path in granted:
        for point in points:
            assert path != point
            assert not path.startswith(point + "/")
            assert not point.startswith(path + "/")  # nothing granted above a cgroup mount
    assert "/tmp" in granted or not os.path.isdir("/tmp")


@pytest.mark.skipif(os.uname().machine not in SUPPORTED_MACHINES, reason="no seccomp table")
def test_limited_filter_is_tiny() -> None:
    prog = build_limited_filter()
    assert len(prog) % 8 == 0
    assert 3 <= len(prog) // 8 <= 6


def test_doctor_rows_say_which_protections_are_active() -> None:
    from corral._sandbox.kernel import KernelFeatures, probe, protections

    rows = {row.name: row for row in protections()}
    assert set(rows) == {"orphan reaping", "limited cgroup guard"}
    features = probe()
    assert rows["orphan reaping"].available == (not features.missing_for_strict())
    full = features.pids_cgroup and features.landlock_abi > 0 and features.seccomp_filter
    assert rows["limited cgroup guard"].available == full
    bare = KernelFeatures(
        machine="x86_64",
        landlock_abi=0,
        seccomp_filter=True,
        user_ns=True,
        pid_ns=True,
        net_ns=True,
        mount_ns=True,
        ipc_ns=True,
        pids_cgroup=True,
        real_root=True,
    )
    guard = {row.name: row for row in protections(bare)}["limited cgroup guard"]
    assert not guard.available
    assert guard.detail.startswith("partial")
    assert "clone3" in guard.detail
