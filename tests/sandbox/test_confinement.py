"""The kernel confinement primitives, each judged from outside a forked child.

Every test forks, applies a primitive in the child, tries what it forbids and
reports over a pipe; the parent then checks what the child could not hide:
canary files, listeners that got nothing, processes still alive, exit signals.
Syscall numbers here are copied from the x86_64 kernel headers on purpose, not
imported from the module under test, so a wrong table there cannot hide here.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import resource
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from corral._errors import CorralError, ResourceLimitExceeded
from corral._sandbox.kernel import KernelFeatures, probe, require_strict
from corral._sandbox.landlock import (
    build_ruleset,
    handled_access_fs,
    interpreter_read_paths,
    landlock_abi,
    restrict_self,
)
from corral._sandbox.rlimits import MAX_OPEN_FILES, apply_rlimits
from corral._sandbox.seccomp import build_filter, install_filter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux kernel features")

X86_64 = os.uname().machine == "x86_64"
ROOT = os.geteuid() == 0
MIB = 1024 * 1024


def roomy_memory_mb() -> int:
    """A memory limit well above what this (forked test) process already maps.

    The pytest process grows with the tests run before (threads, libraries), and
    ``apply_rlimits`` refuses a limit below the address space already in use.
    """
    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    return max(1024, vm_kb // 1024 + 512)
CANARY = b"canary: must never change\n"

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="no Landlock")
needs_x86_64 = pytest.mark.skipif(not X86_64, reason="syscall numbers are x86_64")


# -- running code in a child ---------------------------------------------------


@dataclass
class Outcome:
    """What the parent saw of a child: its exit code (negative: signal) and report."""

    code: int
    report: Any


def in_child(fn: Callable[[], Any], timeout: float = 15.0) -> Outcome:
    """Run ``fn`` in a forked child; its JSON-able return value comes back as ``report``.

    An exception in the child is reported as ``{"raised": name, "errno": ...}``.
    The child always leaves through ``os._exit``, never back into pytest.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            try:
                payload = {"ok": fn()}
            except BaseException as exc:
                payload = {
                    "raised": type(exc).__name__,
                    "errno": getattr(exc, "errno", None),
                    "message": str(exc),
                }
            data = json.dumps(payload).encode()
            while data:
                data = data[os.write(write_fd, data) :]
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    received = b"".join(chunks)
    answer: Any = json.loads(received) if received else None
    if answer is not None and "ok" in answer:
        return Outcome(os.waitstatus_to_exitcode(status), answer["ok"])
    return Outcome(os.waitstatus_to_exitcode(status), answer)


def attempt(fn: Callable[[], object]) -> str:
    """``"ok"``, or the errno name (``"EPERM"``) or exception name that ``fn`` raised."""
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def raw(nr: int, *args: int | bytes | None) -> Callable[[], object]:
    """A raw ``syscall(nr, *args)`` that raises ``OSError`` like the ``os`` module does."""

    def call() -> int:
        cargs = [ctypes.c_long(a) if isinstance(a, int) else ctypes.c_char_p(a) for a in args]
        ret = int(libc.syscall(ctypes.c_long(nr), *cargs))
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return ret

    return call


def libc_call(name: str, *args: int | bytes | None) -> Callable[[], object]:
    """A libc wrapper call that raises ``OSError`` on ``-1``."""

    def call() -> int:
        ret = int(getattr(libc, name)(*args))
        if ret == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return ret

    return call


# -- fixtures --------------------------------------------------------------------


@dataclass
class Tree:
    """A plugin's world: a read-only code dir, a writable data dir, and a canary outside."""

    ro: Path
    rw: Path
    outside: Path
    canary: Path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    ro, rw, outside = tmp_path / "code", tmp_path / "data", tmp_path / "outside"
    for d in (ro, rw, outside):
        d.mkdir()
    (ro / "plugin.py").write_text("VALUE = 1\n")
    canary = outside / "canary.txt"
    canary.write_bytes(CANARY)
    return Tree(ro, rw, outside, canary)


@pytest.fixture
def ruleset(tree: Tree) -> Iterator[int]:
    fd = build_ruleset([*interpreter_read_paths(), tree.ro], [tree.rw])
    yield fd
    os.close(fd)


def assert_canary_intact(tree: Tree) -> None:
    assert tree.canary.read_bytes() == CANARY
    assert sorted(p.name for p in tree.outside.iterdir()) == ["canary.txt"]


# -- Landlock --------------------------------------------------------------------


def test_landlock_abi_is_reported() -> None:
    abi = landlock_abi()
    assert abi >= 0
    assert probe().landlock_abi == abi


@needs_landlock
def test_landlock_confines_files(tree: Tree, ruleset: int) -> None:
    canary, rw, ro = str(tree.canary), tree.rw, tree.ro

    def mkdir_rmdir() -> None:
        (rw / "d").mkdir()
        (rw / "d").rmdir()

    def child() -> dict[str, str]:
        restrict_self(ruleset)
        (rw / "sub").mkdir()
        result = {
            "read granted code": attempt((ro / "plugin.py").read_text),
            "list granted code": attempt(lambda: os.listdir(ro)),
            "write own code": attempt(lambda: (ro / "plugin.py").open("a")),
            "create in code dir": attempt(lambda: (ro / "evil.py").write_text("x")),
            "write data": attempt(lambda: (rw / "out.txt").write_text("hello")),
            "rename within data": attempt(lambda: os.rename(rw / "out.txt", rw / "sub/o.txt")),
            "truncate data": attempt(lambda: os.truncate(rw / "sub/o.txt", 5)),
            "scratch file": attempt(lambda: (rw / "scratch").write_bytes(b"x")),
            "unlink data": attempt(lambda: os.unlink(rw / "scratch")),
            "mkdir, rmdir data": attempt(mkdir_rmdir),
            "read canary": attempt(lambda: open(canary, "rb").read()),  # noqa: SIM115
            "write canary": attempt(lambda: open(canary, "ab")),  # noqa: SIM115
            "truncate canary": attempt(lambda: os.truncate(canary, 0)),
            "unlink canary": attempt(lambda: os.unlink(canary)),
            "list outside": attempt(lambda: os.listdir(tree.outside)),
            "create outside": attempt(lambda: (tree.outside / "new").write_text("x")),
            "read /etc/passwd": attempt(lambda: open("/etc/passwd").read()),  # noqa: SIM115
            "read /proc/1/environ": attempt(lambda: open("/proc/1/environ", "rb").read()),  # noqa: SIM115
            "symlink to canary": attempt(lambda: os.symlink(canary, rw / "link")),
            "read via symlink": attempt(lambda: open(rw / "link", "rb").read()),  # noqa: SIM115
            "write via symlink": attempt(lambda: open(rw / "link", "ab")),  # noqa: SIM115
            "hardlink canary in": attempt(lambda: os.link(canary, rw / "hard")),
            "move data out": attempt(lambda: os.rename(rw / "sub/o.txt", tree.outside / "o")),
            "move canary in": attempt(lambda: os.rename(canary, rw / "stolen")),
        }
        return result

    out = in_child(child)
    assert out.code == 0
    report = out.report
    assert report["read granted code"] == "ok"
    assert report["list granted code"] == "ok"
    assert report["write data"] == "ok"
    for key in (
        "rename within data", "truncate data", "scratch file", "unlink data",
        "mkdir, rmdir data",
    ):  # fmt: skip
        assert report[key] == "ok", key
    assert report["symlink to canary"] == "ok"  # making a link is fine; following it is not
    for key in (
        "write own code", "create in code dir", "read canary", "write canary",
        "truncate canary", "unlink canary", "list outside", "create outside",
        "read /etc/passwd", "read /proc/1/environ", "read via symlink", "write via symlink",
    ):  # fmt: skip
        assert report[key] == "EACCES", key
    for key in ("hardlink canary in", "move data out", "move canary in"):
        # Landlock refuses a link or rename across its rule layers with EXDEV
        # before the access check can say EACCES; both are refusals.
        assert report[key] in {"EACCES", "EXDEV"}, key
    assert_canary_intact(tree)
    assert (tree.rw / "sub" / "o.txt").read_text() == "hello"
    assert not (tree.rw / "hard").exists()
    assert (tree.ro / "plugin.py").read_text() == "VALUE = 1\n"
    assert sorted(p.name for p in tree.ro.iterdir()) == ["plugin.py"]


@needs_landlock
def test_landlock_data_is_not_code_nor_devices(tree: Tree, ruleset: int) -> None:
    script = tree.rw / "run.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)

    def child() -> dict[str, str]:
        restrict_self(ruleset)
        return {
            "mknod char": attempt(
                lambda: os.mknod(tree.rw / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            ),
            "mkfifo": attempt(lambda: os.mkfifo(tree.rw / "fifo")),
            # If this worked the child would become the script and report nothing.
            "exec written file": attempt(lambda: os.execv(script, [str(script)])),
        }

    out = in_child(child)
    assert out.report == {"mknod char": "EACCES", "mkfifo": "ok", "exec written file": "EACCES"}
    assert not (tree.rw / "null").exists()


@needs_landlock
def test_landlock_refuses_a_threaded_process(ruleset: int) -> None:
    def child() -> None:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            restrict_self(ruleset)
        finally:
            stop.set()
            thread.join()

    out = in_child(child)
    assert out.report["raised"] == "UnsupportedError"
    assert "single-threaded" in out.report["message"]


@needs_landlock
def test_landlock_single_file_grant(tmp_path: Path) -> None:
    granted, sibling = tmp_path / "granted.txt", tmp_path / "sibling.txt"
    log = tmp_path / "log.txt"
    for path in (granted, sibling, log):
        path.write_text(path.stem)
    fd = build_ruleset([granted, tmp_path / "does-not-exist"], [log])
    try:

        def append_log() -> None:
            with log.open("a") as f:
                f.write("+more")

        def child() -> dict[str, str]:
            restrict_self(fd)
            return {
                "granted": attempt(granted.read_text),
                "write granted": attempt(lambda: granted.open("a")),
                "sibling": attempt(sibling.read_text),
                "append writable file": attempt(append_log),
                "create beside it": attempt(lambda: (tmp_path / "new.txt").write_text("x")),
            }

        out = in_child(child)
    finally:
        os.close(fd)
    assert out.report == {
        "granted": "ok",
        "write granted": "EACCES",
        "sibling": "EACCES",
        "append writable file": "ok",
        "create beside it": "EACCES",
    }
    assert log.read_text() == "log+more"
    assert sibling.read_text() == "sibling"


def test_landlock_rights_follow_the_abi() -> None:
    assert handled_access_fs(0) == 0
    assert handled_access_fs(1) == 0x1FFF  # EXECUTE .. MAKE_SYM
    assert handled_access_fs(2) == 0x3FFF  # + REFER
    assert handled_access_fs(3) == handled_access_fs(4) == 0x7FFF  # + TRUNCATE
    assert handled_access_fs(5) == handled_access_fs(7) == 0xFFFF  # + IOCTL_DEV


def test_interpreter_paths_do_not_cover_the_workspace(tmp_path: Path) -> None:
    paths = interpreter_read_paths()
    assert sys.base_prefix in paths
    assert paths  # all() below must not pass on nothing
    assert all(os.path.exists(p) for p in paths)
    for p in paths:
        assert not tmp_path.is_relative_to(p), p
        assert p not in {"/", "/tmp", "/home", "/root", "/etc", "/proc"}


@needs_landlock
def test_landlock_ruleset_is_close_on_exec(ruleset: int) -> None:
    assert fcntl.fcntl(ruleset, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


@needs_landlock
def test_landlock_api_misuse() -> None:
    with pytest.raises(ValueError, match="port"):
        build_ruleset([], [], connect_ports=[70000])
    out = in_child(lambda: restrict_self(987654))
    assert out.report["raised"] == "UnsupportedError"
    assert "landlock_restrict_self" in out.report["message"]


@pytest.mark.skipif(landlock_abi() < 4, reason="Landlock TCP rules need ABI 4")
def test_landlock_tcp_connect_only_to_granted_port(tree: Tree) -> None:
    granted = socket.create_server(("127.0.0.1", 0))
    other = socket.create_server(("127.0.0.1", 0))
    other6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    for s in (granted, other, other6):
        s.setblocking(False)
    port = granted.getsockname()[1]
    fd = build_ruleset(interpreter_read_paths(), [tree.rw], connect_ports=[port])

    def connect(family: socket.AddressFamily, addr: tuple[str, int]) -> None:
        with socket.socket(family) as s:
            s.connect(addr)

    def bind(family: socket.AddressFamily, addr: tuple[str, int]) -> None:
        with socket.socket(family) as s:
            s.bind(addr)

    def child() -> dict[str, str]:
        restrict_self(fd)
        return {
            "granted": attempt(lambda: connect(socket.AF_INET, ("127.0.0.1", port))),
            "other v4": attempt(
                lambda: connect(socket.AF_INET, ("127.0.0.1", other.getsockname()[1]))
            ),
            "other v6": attempt(lambda: connect(socket.AF_INET6, other6.getsockname()[:2])),
            "bind v4": attempt(lambda: bind(socket.AF_INET, ("127.0.0.1", 0))),
            "bind v6": attempt(lambda: bind(socket.AF_INET6, ("::1", 0))),
        }

    try:
        out = in_child(child)
        assert out.report == {
            "granted": "ok",
            "other v4": "EACCES",
            "other v6": "EACCES",
            "bind v4": "EACCES",
            "bind v6": "EACCES",
        }
        conn, _ = granted.accept()
        conn.close()
        for listener in (other, other6):
            with pytest.raises(BlockingIOError):
                listener.accept()
    finally:
        os.close(fd)
        for s in (granted, other, other6):
            s.close()


@pytest.mark.skipif(landlock_abi() < 6, reason="Landlock scoping needs ABI 6")
def test_landlock_scopes_signals(ruleset: int) -> None:
    victim_r, victim_w = os.pipe()
    victim = os.fork()
    if victim == 0:
        try:
            os.close(victim_w)
            os.read(victim_r, 1)
        finally:
            os._exit(0)
    os.close(victim_r)

    def child() -> dict[str, str]:
        restrict_self(ruleset)
        own = os.fork()
        if own == 0:
            time.sleep(5)
            os._exit(0)
        result = {
            "kill outsider": attempt(lambda: os.kill(victim, signal.SIGTERM)),
            "probe parent (signal 0)": attempt(lambda: os.kill(os.getppid(), 0)),
            "kill own child": attempt(lambda: os.kill(own, signal.SIGKILL)),
        }
        os.waitpid(own, 0)
        return result

    try:
        out = in_child(child)
        assert out.report == {
            "kill outsider": "EPERM",
            "probe parent (signal 0)": "EPERM",
            "kill own child": "ok",
        }
        assert os.waitpid(victim, os.WNOHANG) == (0, 0), "the victim must still be alive"
    finally:
        os.close(victim_w)
        os.waitpid(victim, 0)


@pytest.mark.skipif(landlock_abi() < 6, reason="Landlock scoping needs ABI 6")
def test_landlock_scopes_abstract_unix_sockets(ruleset: int) -> None:
    name = f"\0corral-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(name)
    listener.listen()
    listener.setblocking(False)

    def connect() -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(name)

    def pair() -> None:
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"x")
            assert b.recv(1) == b"x"

    def child() -> dict[str, str]:
        restrict_self(ruleset)
        return {"abstract": attempt(connect), "socketpair": attempt(pair)}

    try:
        out = in_child(child)
        assert out.report == {"abstract": "EPERM", "socketpair": "ok"}
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


# -- seccomp ---------------------------------------------------------------------

CLONE_FS = 0x200
CLONE_NEWUSER = 0x10000000
NOBODY_PID = 0x3FFFFFFF  # above pid_max: no such process
NOWHERE = "/nonexistent-corral"
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000


def kernel_surface() -> dict[str, str]:
    """Try each denied syscall with arguments that do no harm if it is let through."""
    r, w = os.pipe()
    nofile = struct.pack("=QQ", *(v & 0xFFFFFFFFFFFFFFFF for v in resource.getrlimit(7)))

    def sock(family: int, kind: int = socket.SOCK_STREAM) -> Callable[[], object]:
        return lambda: socket.socket(family, kind).close()

    ops: dict[str, Callable[[], object]] = {
        "ptrace": raw(101, 16, NOBODY_PID, 0, 0),  # PTRACE_ATTACH
        "process_vm_readv": raw(310, NOBODY_PID, 0, 0, 0, 0, 0),
        "kcmp": raw(312, NOBODY_PID, NOBODY_PID, 0, 0, 0),
        "pidfd_getfd": raw(438, -1, -1, 0),
        "mount": libc_call("mount", b"none", b"/nonexistent-corral", b"corral-nofs", 0, None),
        "umount2": libc_call("umount2", b"/nonexistent-corral", 0),
        "pivot_root": raw(155, b"/nonexistent-a", b"/nonexistent-b"),
        "chroot": libc_call("chroot", b"/nonexistent-corral"),
        "fsopen": raw(430, b"corral-nofs", 0),
        "open_tree": raw(428, -1, b"/nonexistent-corral", 0),
        "setns": libc_call("setns", -1, 0),
        "bpf": raw(321, 0xFFFF, None, 0),
        "io_uring_setup": raw(425, 0, None),
        "io_uring_enter": raw(426, -1, 0, 0, 0, None, 0),
        "keyctl": raw(250, 0x7FFF, 0, 0, 0, 0),
        "add_key": raw(248, None, None, None, 0, 0),
        "perf_event_open": raw(298, None, 0, -1, -1, 0),
        "kexec_load": raw(246, 0, 0, None, 0xDEAD0000),
        "init_module": raw(175, None, 0, b""),
        "delete_module": raw(176, b"corral_no_such_module", 0),
        "reboot": raw(169, 0, 0, 0, None),
        "swapon": raw(167, b"/nonexistent-corral", 0),
        "acct": raw(163, b"/nonexistent-corral"),
        "userfaultfd": raw(323, 0),
        "open_by_handle_at": raw(304, -1, None, 0),
        "fanotify_init": raw(300, 0xFFFFFFFF, 0),
        "settimeofday": raw(164, None, None),
        "clock_settime": raw(227, 0x7FFF, None),
        "adjtimex": raw(159, None),
        "sethostname": raw(170, None, 100000),
        "syslog": raw(103, 0x7FFF, None, 0),
        "iopl": raw(172, 4),
        "setrlimit": raw(160, 0x7FFF, None),
        "prlimit64 set": raw(302, 0, resource.RLIMIT_NOFILE, nofile, None),
        "personality change": raw(135, 0x0040000),  # ADDR_NO_RANDOMIZE
        "clone newuser": raw(56, CLONE_NEWUSER | CLONE_FS | signal.SIGCHLD, 0, 0, 0, 0),
        "clone3": raw(435, None, 0),
        "socket inet": sock(socket.AF_INET),
        "socket inet6": sock(socket.AF_INET6),
        "socket udp": sock(socket.AF_INET, socket.SOCK_DGRAM),
        "socket raw": sock(socket.AF_INET, socket.SOCK_RAW),
        "socket packet": sock(socket.AF_PACKET, socket.SOCK_RAW),
        "socket netlink": sock(socket.AF_NETLINK, socket.SOCK_RAW),
        "socketpair inet": raw(53, socket.AF_INET, socket.SOCK_STREAM, 0, None),
        "execve": lambda: os.execv("/nonexistent-corral", ["x"]),
        "execveat": raw(322, -1, b"", None, None, 0),
        "ioctl TIOCSTI": lambda: fcntl.ioctl(r, termios.TIOCSTI, b"x"),
        "chmod": lambda: os.chmod(NOWHERE, 0o644),
        "chmod raw": raw(90, NOWHERE.encode(), 0o644),
        "fchmodat2": raw(452, AT_FDCWD, NOWHERE.encode(), 0o644, 0),
        "chown": lambda: os.chown(NOWHERE, 0, 0),
        "lchown": lambda: os.lchown(NOWHERE, 0, 0),
        "utime": lambda: os.utime(NOWHERE, (0, 0)),
        "utimes raw": raw(235, NOWHERE.encode(), None),
        "futimesat raw": raw(261, AT_FDCWD, NOWHERE.encode(), None),
        "setxattr": lambda: os.setxattr(NOWHERE, "user.corral", b"1"),
        "removexattr": lambda: os.removexattr(NOWHERE, "user.corral"),
        # Last: unfiltered, this one succeeds and changes the child's namespace.
        "unshare": libc_call("unshare", CLONE_NEWUSER),
    }
    try:
        return {name: attempt(op) for name, op in ops.items()}
    finally:
        os.close(r)
        os.close(w)


@needs_x86_64
def test_seccomp_denies_kernel_surface() -> None:
    prog = build_filter(allow_exec=False)

    def confined() -> dict[str, str]:
        install_filter(prog)
        return kernel_surface()

    control = in_child(kernel_surface).report
    out = in_child(confined)
    assert out.code == 0
    expected = dict.fromkeys(control, "EPERM") | {"clone3": "ENOSYS"}
    assert out.report == expected
    if ROOT:  # as root nothing else would have stopped these: the filter did
        same = [name for name in control if control[name] == out.report[name]]
        assert same == [], f"unfiltered gave the same answer for {same}"


def python_still_works(tmp: str) -> dict[str, str]:
    """The normal things a plugin's Python does, which the filter must let through."""
    import_name = "colorsys" if "colorsys" not in sys.modules else "sched"

    def thread() -> None:
        box: list[int] = []
        t = threading.Thread(target=lambda: box.append(1))
        t.start()
        t.join()
        assert box == [1]

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7

    def anon_mmap() -> None:
        with mmap.mmap(-1, 4 * MIB) as m:
            m[0:5] = b"hello"

    def unix_pair() -> None:
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"ping")
            assert b.recv(4) == b"ping"

    def files() -> None:
        path = os.path.join(tmp, "written.txt")
        with open(path, "w") as f:
            f.write("ok")
        with open(path) as f:
            assert f.read() == "ok"

    def fd_metadata() -> None:
        fd = os.open(os.path.join(tmp, "meta.txt"), os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.fchmod(fd, 0o640)
            os.utime(fd, (1, 1))  # futimens: utimensat with a NULL path
            assert os.fstat(fd).st_mtime == 1
        finally:
            os.close(fd)

    def fionread() -> None:
        r, w = os.pipe()
        os.write(w, b"abc")
        buf = bytearray(4)
        fcntl.ioctl(r, termios.FIONREAD, buf)
        os.close(r)
        os.close(w)

    return {
        "import": attempt(lambda: __import__(import_name)),
        "thread": attempt(thread),
        "fork": attempt(fork),
        "mmap": attempt(anon_mmap),
        "socketpair": attempt(unix_pair),
        "files": attempt(files),
        "ioctl FIONREAD": attempt(fionread),
        "fchmod and futimens": attempt(fd_metadata),
        "getrlimit": attempt(lambda: resource.getrlimit(resource.RLIMIT_NOFILE)),
        "prlimit read": attempt(lambda: resource.prlimit(0, resource.RLIMIT_AS)),
        "personality query": attempt(raw(135, 0xFFFFFFFF)),
        "clock": attempt(lambda: time.clock_gettime(time.CLOCK_MONOTONIC)),
        "sleep": attempt(lambda: time.sleep(0.001)),
        "urandom": attempt(lambda: os.urandom(16)),
    }


def test_seccomp_lets_python_run(tmp_path: Path) -> None:
    prog = build_filter(allow_exec=False)

    def child() -> dict[str, str]:
        install_filter(prog)
        return python_still_works(str(tmp_path))

    out = in_child(child)
    assert out.code == 0
    assert set(out.report.values()) == {"ok"}, out.report


def spawn_true() -> None:
    subprocess.run(["/bin/true"], check=True)


@needs_x86_64
def test_seccomp_exec_denied_unless_allowed(tmp_path: Path) -> None:
    denied = build_filter(allow_exec=False)
    allowed = build_filter(allow_exec=True)

    def no_exec() -> dict[str, str]:
        install_filter(denied)
        return {
            "execv": attempt(lambda: os.execv("/bin/true", ["true"])),
            "subprocess": attempt(spawn_true),
        }

    assert in_child(no_exec).report == {"execv": "EPERM", "subprocess": "EPERM"}

    def with_exec() -> str:
        install_filter(allowed)
        return attempt(spawn_true)  # subprocess: vfork/clone, then execve

    assert in_child(with_exec).report == "ok"

    # Allowed: a fresh Python starts under the filter, which still binds it.
    script = (
        "import errno, socket\n"
        "try:\n    socket.socket(socket.AF_INET)\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
        "else:\n    print('socket allowed')\n"
    )
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.dup2(write_fd, 1)
            install_filter(allowed)
            os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", script])
        finally:
            os._exit(99)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        printed = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert printed == b"EPERM\n"


@needs_x86_64
def test_seccomp_kills_x32_syscalls() -> None:
    prog = build_filter(allow_exec=False)

    def child() -> str:
        install_filter(prog)
        return attempt(raw(0x40000000 | 39))  # x32 getpid

    out = in_child(child)
    assert out.code == -signal.SIGSYS
    assert out.report is None


@needs_x86_64
def test_seccomp_kills_foreign_architecture() -> None:
    # i386 getpid through int 0x80: mov eax, 20; int 0x80; ret
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"

    def int80() -> int:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        return int(ctypes.CFUNCTYPE(ctypes.c_int)(address)())

    control = in_child(int80)
    if control.code != 0:
        pytest.skip("this kernel has no i386 syscall entry")
    assert control.report > 0
    prog = build_filter(allow_exec=False)

    def child() -> int:
        install_filter(prog)
        return int80()

    out = in_child(child)
    assert out.code == -signal.SIGSYS
    assert out.report is None


def test_seccomp_filter_shape() -> None:
    no_exec, with_exec = build_filter(allow_exec=False), build_filter(allow_exec=True)
    for prog in (no_exec, with_exec):
        assert len(prog) % 8 == 0
        assert 0 < len(prog) // 8 <= 4096
    assert len(no_exec) > len(with_exec)  # execve is listed only in one
    with pytest.raises(ValueError, match="BPF"):
        install_filter(b"\x00" * 12)
    with pytest.raises(ValueError, match="BPF"):
        install_filter(b"")


def run_bpf(prog: bytes, nr: int, arch: int, args: tuple[int, ...] = (0,) * 6) -> int:
    """Run a classic-BPF seccomp program on one ``struct seccomp_data``, like the kernel."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack_from("=HBBI", prog, 8 * i) for i in range(len(prog) // 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x05:  # ja
            pc += k
        elif code == 0x06:  # ret
            return int(k)
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x25: acc > k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf


@needs_x86_64
def test_seccomp_dispatch_covers_every_syscall_number() -> None:
    """Every number from 0 to 1023 gets exactly what the deny list says, no more, no less."""
    from corral._sandbox import seccomp as _seccomp

    table = _seccomp._X86_64
    audit = 0xC000003E
    allow, eperm, enosys = 0x7FFF0000, 0x00050001, 0x00050026
    for allow_exec in (False, True):
        prog = build_filter(allow_exec=allow_exec)
        denied = {table[name] for name in _seccomp._DENY if name in table}
        assert 322 in denied  # execveat (fexecve), with or without a spawn grant
        if not allow_exec:
            denied |= {59}  # execve
        for nr in range(1024):
            got = run_bpf(prog, nr, audit)
            if nr in denied:
                assert got == eperm, nr
            elif nr in {435, 319, 447}:  # clone3, memfd_create, memfd_secret
                assert got == enosys, nr
            elif nr == 135:  # personality(0): PER_LINUX
                assert got == allow
            else:  # argument checks all pass on zero arguments, except AF_UNIX is 1
                assert got == (eperm if nr in {41, 53} else allow), nr
        assert run_bpf(prog, 41, audit, (1, 1, 0, 0, 0, 0)) == allow  # socket(AF_UNIX)
        assert run_bpf(prog, 16, audit, (0, 0x5412, 0, 0, 0, 0)) == eperm  # TIOCSTI
        assert run_bpf(prog, 16, audit, (0, 0x1_0000_5412, 0, 0, 0, 0)) == eperm  # high bits
        assert run_bpf(prog, 56, audit, (CLONE_NEWUSER, 0, 0, 0, 0, 0)) == eperm
        assert run_bpf(prog, 302, audit, (0, 7, 1 << 32, 0, 0, 0)) == eperm  # high half
        assert run_bpf(prog, 280, audit, (AT_FDCWD & 0xFFFFFFFF, 8, 0, 0, 0, 0)) == eperm
        assert run_bpf(prog, 39, 0x40000003) == 0x80000000  # i386: kill
        assert run_bpf(prog, 0x40000000 | 39, audit) == 0x80000000  # x32: kill


def test_seccomp_aarch64_filter_dispatch() -> None:
    """The aarch64 table, checked by emulation: numbers from asm-generic/unistd.h."""
    from corral._sandbox.seccomp import _assemble

    audit = 0xC00000B7
    allow, eperm, enosys = 0x7FFF0000, 0x00050001, 0x00050026
    denied = {
        "ptrace": 117, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "unshare": 97, "setns": 268, "bpf": 280, "keyctl": 219, "perf_event_open": 241,
        "process_vm_readv": 270, "userfaultfd": 282, "setrlimit": 164, "fchmodat": 53,
        "fchownat": 54, "setxattr": 5, "io_uring_setup": 425, "fsopen": 430,
    }  # fmt: skip
    allowed = {"read": 63, "write": 64, "openat": 56, "mmap": 222, "futex": 98, "getpid": 172}
    for allow_exec in (False, True):
        prog = _assemble("aarch64", allow_exec=allow_exec)
        for name, nr in denied.items():
            assert run_bpf(prog, nr, audit) == eperm, name
        for name, nr in allowed.items():
            assert run_bpf(prog, nr, audit) == allow, name
        assert run_bpf(prog, 435, audit) == enosys  # clone3
        assert run_bpf(prog, 198, audit, (2, 1, 0, 0, 0, 0)) == eperm  # socket(AF_INET)
        assert run_bpf(prog, 198, audit, (1, 1, 0, 0, 0, 0)) == allow  # socket(AF_UNIX)
        assert run_bpf(prog, 220, audit, (CLONE_NEWUSER, 0, 0, 0, 0, 0)) == eperm
        assert run_bpf(prog, 220, audit, (0x11, 0, 0, 0, 0, 0)) == allow  # fork-like clone
        assert run_bpf(prog, 221, audit) == (allow if allow_exec else eperm)  # execve
        assert run_bpf(prog, 20, 0x40000028) == 0x80000000  # 32-bit ARM: kill
        assert run_bpf(prog, 0x40000000 | 172, audit) == allow  # no x32 on aarch64


# -- rlimits ---------------------------------------------------------------------


def test_rlimit_memory_raises_memory_error() -> None:
    def vsz_mb() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * mmap.PAGESIZE // MIB

    def child() -> dict[str, str]:
        apply_rlimits(vsz_mb() + 128, None, None, None)
        return {
            "small": attempt(lambda: bytearray(16 * MIB)),
            "bomb": attempt(lambda: bytearray(1024 * MIB)),
            "after": attempt(lambda: bytearray(16 * MIB)),
        }

    out = in_child(child)
    assert out.report == {"small": "ok", "bomb": "MemoryError", "after": "ok"}


def test_rlimit_memory_counts_use_not_thread_arenas() -> None:
    """Threads' malloc arenas (64 MiB of address space each) must not eat the budget."""

    def vsz_mb() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * mmap.PAGESIZE // MIB

    def child() -> str:
        apply_rlimits(vsz_mb() + 160, None, None, None)
        threading.stack_size(256 * 1024)
        ready = threading.Barrier(3)
        done = threading.Event()

        def work() -> None:
            held = [bytearray(200_000) for _ in range(50)]  # 10 MiB by malloc, not pymalloc
            ready.wait()
            done.wait()
            del held

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        ready.wait()
        try:
            return attempt(lambda: bytearray(100 * MIB))  # 20 + 100 MiB in use < 160
        finally:
            done.set()
            for t in threads:
                t.join()

    assert in_child(child).report == "ok"


def test_rlimit_memory_below_current_use_is_refused() -> None:
    out = in_child(lambda: apply_rlimits(1, None, None, None))
    assert out.report["raised"] == ResourceLimitExceeded.__name__
    assert "memory-mb" in out.report["message"]


def test_rlimit_cpu_kills_with_sigxcpu() -> None:
    def child() -> None:
        apply_rlimits(None, 1, None, None)
        while True:
            pass

    # One second of CPU can take longer on a busy machine; a timeout would be SIGKILL.
    out = in_child(child, timeout=30)
    assert out.code == -signal.SIGXCPU


def test_rlimit_disk_caps_file_size(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"

    def child() -> str:
        apply_rlimits(None, None, None, 1)
        with open(target, "wb") as f:
            return attempt(lambda: f.write(b"\0" * (2 * MIB)))

    out = in_child(child)
    assert out.report == "EFBIG"
    assert target.stat().st_size == MIB


def test_rlimit_fixed_limits() -> None:
    def child() -> dict[str, Any]:
        apply_rlimits(None, None, None, None)
        opened: list[int] = []
        err = "none"
        try:
            for _ in range(2 * MAX_OPEN_FILES):
                opened.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            err = errno.errorcode[exc.errno or 0]
        highest = max(opened)
        for fd in opened:
            os.close(fd)
        return {
            "core": resource.getrlimit(resource.RLIMIT_CORE),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK),
            "open error": err,
            "highest fd": highest,
        }

    report = in_child(child).report
    assert report["core"] == [0, 0]
    assert report["nofile"] == [MAX_OPEN_FILES, MAX_OPEN_FILES]
    assert report["memlock"] == [0, 0]
    assert report["open error"] == "EMFILE"
    assert report["highest fd"] < MAX_OPEN_FILES


@pytest.mark.skipif(not ROOT, reason="needs root to become a throwaway uid")
def test_rlimit_processes_stop_a_fork_bomb() -> None:
    def child() -> dict[str, Any]:
        # RLIMIT_NPROC does not bind the init namespace's root, so become nobody.
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        apply_rlimits(None, None, 4, None)
        hold_r, hold_w = os.pipe()
        pids: list[int] = []
        err = "none"
        try:
            for _ in range(20):
                pid = os.fork()
                if pid == 0:
                    os.close(hold_w)
                    select.select([hold_r], [], [], 20)
                    os._exit(0)
                pids.append(pid)
        except OSError as exc:
            err = errno.errorcode[exc.errno or 0]
        finally:
            os.close(hold_w)
            for pid in pids:
                os.waitpid(pid, 0)
        return {"forked": len(pids), "error": err}

    report = in_child(child).report
    assert report["error"] == "EAGAIN"
    assert report["forked"] <= 3


def test_rlimits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="cpu-seconds"):
        apply_rlimits(None, 0, None, None)
    with pytest.raises(ValueError, match="memory-mb"):
        apply_rlimits(-5, None, None, None)


@needs_x86_64
def test_rlimits_cannot_be_raised_under_the_filter() -> None:
    prog = build_filter(allow_exec=False)

    def child() -> dict[str, Any]:
        apply_rlimits(None, 2, None, None)
        install_filter(prog)
        # resource.setrlimit turns EPERM into ValueError("not allowed to raise ...").
        return {
            "cpu": resource.getrlimit(resource.RLIMIT_CPU),
            "raise soft": attempt(lambda: resource.setrlimit(resource.RLIMIT_CPU, (3, 3))),
            "raise hard": attempt(
                lambda: resource.setrlimit(resource.RLIMIT_CPU, (3, resource.RLIM_INFINITY))
            ),
            "prlimit raise": attempt(
                lambda: resource.prlimit(0, resource.RLIMIT_NOFILE, (4096, 4096))
            ),
            "raw prlimit64 raise": attempt(
                raw(302, 0, resource.RLIMIT_CPU, struct.pack("=QQ", 3, 3), None)
            ),
            "prlimit read": attempt(lambda: resource.prlimit(0, resource.RLIMIT_NOFILE)),
            "cpu after": resource.getrlimit(resource.RLIMIT_CPU),
        }

    report = in_child(child).report
    assert report == {
        "cpu": [2, 3],
        "raise soft": "ValueError",
        "raise hard": "ValueError",
        "prlimit raise": "EPERM",
        "raw prlimit64 raise": "EPERM",
        "prlimit read": "ok",
        "cpu after": [2, 3],
    }


# -- everything at once ------------------------------------------------------------


@needs_landlock
@needs_x86_64
def test_full_confinement_keeps_python_working(tree: Tree, ruleset: int) -> None:
    prog = build_filter(allow_exec=False)
    rw = str(tree.rw)

    def chmod_via_o_path(path: str) -> None:
        fd = os.open(path, os.O_PATH)  # Landlock does not check O_PATH opens
        try:
            raw(452, fd, b"", 0o4777, AT_EMPTY_PATH)()  # fchmodat2
        finally:
            os.close(fd)

    def child() -> dict[str, Any]:
        apply_rlimits(roomy_memory_mb(), 5, None, 10)
        restrict_self(ruleset)
        install_filter(prog)
        denied = {
            "open canary": attempt(lambda: open(tree.canary, "ab")),  # noqa: SIM115
            "inet": attempt(lambda: socket.socket(socket.AF_INET)),
            "chmod canary": attempt(lambda: os.chmod(tree.canary, 0o4777)),
            "utime canary": attempt(lambda: os.utime(tree.canary, (0, 0))),
            "xattr canary": attempt(lambda: os.setxattr(tree.canary, "user.x", b"1")),
            "chmod via O_PATH": attempt(lambda: chmod_via_o_path(str(tree.canary))),
        }
        return {"works": python_still_works(rw), "denied": denied}

    before = os.stat(tree.canary)
    out = in_child(child)
    assert out.code == 0
    assert out.report["denied"] == {
        "open canary": "EACCES",
        "inet": "EPERM",
        "chmod canary": "EPERM",
        "utime canary": "EPERM",
        "xattr canary": "EPERM",
        "chmod via O_PATH": "EPERM",
    }
    works = out.report["works"]
    assert set(works.values()) == {"ok"}, works
    after = os.stat(tree.canary)
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert (tree.rw / "written.txt").read_text() == "ok"
    assert_canary_intact(tree)


@needs_landlock
@needs_x86_64
@pytest.mark.skipif(not probe().user_ns, reason="no user namespaces")
def test_confinement_inside_fresh_namespaces(tree: Tree, ruleset: int) -> None:
    """The strict order: new user, network, mount and IPC namespaces, then the primitives."""
    prog = build_filter(allow_exec=False)
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | 0x40000000 | 0x00020000 | 0x08000000  # + NET, NS, IPC

    def child() -> dict[str, str]:
        libc_call("unshare", flags)()
        for path, data in (
            ("/proc/self/setgroups", "deny"),
            ("/proc/self/uid_map", f"0 {uid} 1"),
            ("/proc/self/gid_map", f"0 {gid} 1"),
        ):
            with open(path, "w") as f:
                f.write(data)
        apply_rlimits(roomy_memory_mb(), 5, 16, 10)
        restrict_self(ruleset)
        install_filter(prog)
        return {
            "uid in namespace": "ok" if os.getuid() == 0 else str(os.getuid()),
            "write data": attempt(lambda: (tree.rw / "ns.txt").write_text("ns")),
            "read canary": attempt(tree.canary.read_bytes),
            # In its own mount namespace, so harmless even if it were let through.
            "mount (root in its namespace)": attempt(
                libc_call("mount", b"none", str(tree.rw).encode(), b"tmpfs", 0, None)
            ),
            "unshare again": attempt(libc_call("unshare", CLONE_NEWUSER)),
            "inet": attempt(lambda: socket.socket(socket.AF_INET)),
            "thread": python_still_works(str(tree.rw))["thread"],
        }

    out = in_child(child)
    assert out.report == {
        "uid in namespace": "ok",
        "write data": "ok",
        "read canary": "EACCES",
        "mount (root in its namespace)": "EPERM",
        "unshare again": "EPERM",
        "inet": "EPERM",
        "thread": "ok",
    }
    assert (tree.rw / "ns.txt").read_text() == "ns"
    assert_canary_intact(tree)


# -- the kernel probe --------------------------------------------------------------


def _process_identity() -> dict[str, str]:
    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    ns = {
        name: os.readlink(f"/proc/self/ns/{name}") for name in ("user", "pid", "net", "mnt", "ipc")
    }
    return {
        "NoNewPrivs": status["NoNewPrivs"].strip(),
        "Seccomp": status["Seccomp"].strip(),
        **ns,
    }


def test_probe_is_cached_and_leaves_the_caller_alone() -> None:
    from corral._sandbox import kernel as _kernel

    before = _process_identity()
    _kernel._cached.clear()
    features = probe()
    assert probe() is features
    assert _process_identity() == before
    assert features.landlock_abi == landlock_abi()


def test_probe_reports_this_kernel() -> None:
    features = probe()
    rows = features.describe()
    assert [row.name for row in rows] == [
        "landlock", "seccomp-bpf", "user namespaces", "pid namespaces",
        "network namespaces", "mount namespaces", "ipc namespaces",
    ]  # fmt: skip
    assert features.missing_for_strict() == [row.name for row in rows if not row.available]
    if features.missing_for_strict():
        with pytest.raises(CorralError, match="strict isolation cannot run"):
            require_strict()
    else:
        assert require_strict() is features


def test_missing_features_are_named() -> None:
    bare = KernelFeatures(
        machine="riscv64",
        landlock_abi=0,
        seccomp_filter=False,
        user_ns=True,
        pid_ns=True,
        net_ns=False,
        mount_ns=True,
        ipc_ns=True,
    )
    assert bare.missing_for_strict() == ["landlock", "seccomp-bpf", "network namespaces"]
    details = {row.name: row.detail for row in bare.describe()}
    assert "riscv64" in details["seccomp-bpf"]
    assert "5.13" in details["landlock"]
