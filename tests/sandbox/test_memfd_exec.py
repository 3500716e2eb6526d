"""No execution beyond the spawn grant: with ``spawn = ["git"]`` a strict plugin runs git and
nothing else, whether from a memfd, a descriptor, an unnamed file or a copied binary."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor
from corral._sandbox.workerinit import init_for
from corral._services.sandboxed import sandbox_problem

pytestmark = [
    pytest.mark.skipif(
        sandbox_problem("strict") is not None,
        reason=f"no strict sandbox: {sandbox_problem('strict')}",
    ),
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed"),
]

#: Each attempt runs in a child (``subprocess``), so a success replaces no worker; the
#: result says ``ran`` (with the exit code and output) or names the errno that stopped it.
SOURCE = r'''
import ctypes
import errno
import json
import os
import subprocess
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
NR = {"x86_64": {"memfd_create": 319, "execveat": 322, "memfd_secret": 447},
      "aarch64": {"memfd_create": 279, "execveat": 281, "memfd_secret": 447}}[os.uname().machine]
AT_EMPTY_PATH = 0x1000


def outcome(fn):
    try:
        return fn()
    except OSError as exc:
        return {"errno": errno.errorcode.get(exc.errno, str(exc.errno))}


def run(argv, **kw):
    def go():
        done = subprocess.run(argv, input=b"", capture_output=True, check=False, **kw)
        return {"ran": done.returncode, "out": done.stdout.decode(errors="replace")[:60],
                "err": done.stderr.decode(errors="replace")[-400:]}
    return outcome(go)


def raw(name, *args):
    def go():
        ret = _syscall(ctypes.c_long(NR[name]), *args)
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return {"fd": int(ret)}
    return outcome(go)


def in_child(attempt):
    """Run an exec ``attempt`` in a fork: if it succeeds, it replaces the child, not us."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(os.open("/dev/null", os.O_RDWR), 1)
        os.write(w, json.dumps(attempt()).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    return json.loads(said) if said else {"ran": os.waitstatus_to_exitcode(status)}


def elf():
    with open("/bin/true", "rb") as f:
        return f.read()


def fill(fd):
    os.write(fd, elf())
    os.fchmod(fd, 0o755)
    return fd


def attempts(inp, ctx):
    tmp = ctx.tmp_dir
    out = {}
    out["git"] = run(["git", "--version"])
    out["memfd_create"] = outcome(lambda: {"fd": os.memfd_create("x", 0)})
    out["memfd_create raw"] = raw("memfd_create", b"x", ctypes.c_uint(0))
    out["memfd_secret raw"] = raw("memfd_secret", ctypes.c_uint(0))
    def memfd_exec():
        fd = fill(os.memfd_create("payload", 0))
        return run([f"/proc/self/fd/{fd}"], pass_fds=(fd,))
    out["memfd exec"] = outcome(memfd_exec)
    def memfd_fexecve():
        fd = fill(os.memfd_create("payload", 0))
        return in_child(lambda: outcome(lambda: os.execve(fd, ["true"], {})))
    out["memfd fexecve"] = outcome(memfd_fexecve)
    # execveat(fd, "", AT_EMPTY_PATH) on git itself: granted as a path, refused as a descriptor.
    if inp["granted"]:
        git = os.open(inp["git"], os.O_RDONLY)
        argv = (ctypes.c_char_p * 2)(b"git", None)
        envp = (ctypes.c_char_p * 1)(None)
        out["execveat git fd"] = in_child(
            lambda: raw("execveat", git, b"", argv, envp, AT_EMPTY_PATH))
        out["fexecve git fd"] = in_child(
            lambda: outcome(lambda: os.execve(git, ["git", "--version"], {})))
    # O_TMPFILE in the writable tmp dir, executed through /proc/self/fd.
    def tmpfile():
        fd = fill(os.open(tmp, os.O_TMPFILE | os.O_RDWR, 0o700))
        return run([f"/proc/self/fd/{fd}"], pass_fds=(fd,))
    out["O_TMPFILE via /proc/self/fd"] = outcome(tmpfile)
    # A copy of a system binary in the writable tmp dir, by path and unlinked via /proc.
    def copied():
        path = os.path.join(tmp, "true-copy")
        fd = fill(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o755))
        os.close(fd)
        return run([path])
    out["copied binary"] = outcome(copied)
    def unlinked():
        path = os.path.join(tmp, "true-unlinked")
        fd = fill(os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o755))
        os.unlink(path)
        return run([f"/proc/self/fd/{fd}"], pass_fds=(fd,))
    out["unlinked via /proc/self/fd"] = outcome(unlinked)
    def dev_shm():
        fd = fill(os.open("/dev/shm/corral-exec-probe", os.O_CREAT | os.O_RDWR, 0o755))
        return run([f"/proc/self/fd/{fd}"], pass_fds=(fd,))
    out["/dev/shm file"] = outcome(dev_shm)
    out["unlisted /bin/true"] = run(["/bin/true"])
    # The loader is executable (git needs it): run directly, it maps any file it can read.
    def loader_payload():
        payload = os.path.join(tmp, "payload")
        with open(sys.executable, "rb") as src, open(payload, "wb") as dst:
            dst.write(src.read())
        return run([inp["loader"], payload, "-c", "print('escaped')"])
    out["loader runs a written payload"] = outcome(loader_payload)
    out["python itself (/proc/self/exe)"] = run(["/proc/self/exe", "-c", "pass"])
    return out


def callback(inp, ctx):
    """ctypes callbacks (libffi closures) still work without memfd."""
    cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    def order(a, b):
        x = ctypes.cast(a, ctypes.POINTER(ctypes.c_int)).contents.value
        y = ctypes.cast(b, ctypes.POINTER(ctypes.c_int)).contents.value
        return (x > y) - (x < y)
    arr = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
    _libc.qsort(arr, 5, ctypes.sizeof(ctypes.c_int), cmp(order))
    return list(arr)
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("memfd")
    (root / "code" / "exec_probe").mkdir(parents=True)
    (root / "code" / "exec_probe" / "__init__.py").write_text(SOURCE)
    return root


@pytest.fixture(scope="module")
def sup() -> Iterator[Supervisor]:
    s = Supervisor()
    yield s
    s.close()


def spec_for(root: Path, plugin_id: str, spawn: tuple[str, ...]) -> SandboxSpec:
    base = root / "plugins" / plugin_id
    for name in ("data", "tmp", "cache"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return SandboxSpec(
        plugin_id=plugin_id, isolation="strict", plugin_dir=root / "code", timeout_ms=30_000,
        data_dir=base / "data", tmp_dir=base / "tmp", cache_dir=base / "cache", spawn=spawn,
        write_paths=(Path("/dev/null"),),  # as the host grants every plugin (git opens it)
    )


@pytest.fixture(scope="module")
def with_git(sup: Supervisor, root: Path) -> dict[str, Any]:
    git = shutil.which("git")
    assert git is not None
    spec = spec_for(root, "exec.git", ("git",))
    loaders = [p for p in init_for(spec).exec_paths if "/ld-" in p]
    assert loaders, "git has no ELF loader to test with"
    got: dict[str, Any] = sup.call(
        spec, "exec_probe:attempts", {"git": git, "granted": True, "loader": loaders[0]}
    )
    return got


def test_granted_git_still_runs(with_git: dict[str, Any]) -> None:
    """Positive control: the grant works, so the refusals below are not a broken sandbox."""
    assert with_git["git"]["ran"] == 0
    assert with_git["git"]["out"].startswith("git version")


def test_memfds_cannot_be_created(with_git: dict[str, Any]) -> None:
    for name in ("memfd_create", "memfd_create raw", "memfd_secret raw", "memfd exec",
                 "memfd fexecve"):
        assert with_git[name] == {"errno": "ENOSYS"}, name


def test_descriptors_cannot_be_executed(with_git: dict[str, Any]) -> None:
    # Even git, granted by path, cannot be run from a descriptor (fexecve's two routes).
    assert with_git["execveat git fd"] == {"errno": "EPERM"}
    assert with_git["fexecve git fd"] == {"errno": "EPERM"}


@pytest.mark.parametrize(
    "attempt",
    [
        "O_TMPFILE via /proc/self/fd",
        "copied binary",
        "unlinked via /proc/self/fd",
        "unlisted /bin/true",
        "python itself (/proc/self/exe)",
    ],
)
def test_unlisted_files_are_refused_by_landlock(with_git: dict[str, Any], attempt: str) -> None:
    assert with_git[attempt] == {"errno": "EACCES"}, with_git[attempt]


def test_the_loader_cannot_map_what_the_plugin_wrote(with_git: dict[str, Any]) -> None:
    """Writable directories are mounted noexec: ``ld.so ./payload`` cannot map it."""
    got = with_git["loader runs a written payload"]
    assert got["ran"] == 127, got
    assert "failed to map segment" in got["err"]
    assert "escaped" not in got["out"]


def test_dev_shm_is_neither_writable_nor_executable(with_git: dict[str, Any]) -> None:
    assert with_git["/dev/shm file"] in ({"errno": "EACCES"}, {"errno": "ENOENT"})


def test_ffi_callbacks_need_no_memfd(sup: Supervisor, root: Path) -> None:
    for spawn in ((), ("git",)):
        spec = spec_for(root, f"exec.ffi{len(spawn)}", spawn)
        assert sup.call(spec, "exec_probe:callback", None) == [1, 2, 3, 4, 5]


def test_without_a_grant_nothing_runs(sup: Supervisor, root: Path) -> None:
    git = shutil.which("git")
    got = sup.call(
        spec_for(root, "exec.none", ()), "exec_probe:attempts",
        {"git": git, "granted": False, "loader": "/nonexistent"},
    )
    assert got["git"] == {"errno": "EPERM"}
    assert got["memfd_create"] == {"errno": "ENOSYS"}
