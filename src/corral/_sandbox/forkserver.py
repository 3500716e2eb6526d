"""The fork server: one long-lived process that forks every worker, and its client.

The host (:class:`ZygoteClient`) starts it once, lazily (``python -I -c ...``),
with one end of a ``SOCK_SEQPACKET`` socketpair.  It imports the worker runtime
up front, then answers :class:`~._rpc.Spawn` and :class:`~._rpc.Reap` requests,
one packet each.  Filters are built here, in the parent, once per worker (the
Landlock ruleset) or once per kind (the seccomp program), and only applied in
the child.

Workers are forked ahead of time: for each isolation level in use the zygote
keeps one *spare*, already forked, in its namespaces, session and capability-
less state (a strict spare keeps those of its own user namespace until its
assignment says which directories to mount ``noexec``), waiting on a private
socket.  A Spawn hands the spare its :class:`~._rpc.Assign` (with the RPC
socket and the ruleset via SCM_RIGHTS), answers the host, and only then forks
the next spare.

A ``strict`` spare is forked twice: the first child unshares the user, PID,
network, mount and IPC namespaces, maps its uid/gid, forks PID 1 of the new PID
namespace and exits.  The zygote is a child subreaper, so it adopts that PID 1
and is its parent: it alone reaps workers, so it can kill them without racing
pid reuse, and it kills whatever else it adopts (what a limited worker left
behind).  Workers die with the zygote (``PR_SET_PDEATHSIG``); when the host goes
away (EOF on the control socket) the zygote kills and reaps every worker and
exits.  It never leaves a zombie or an orphan.

A one-shot process (the CLI) may share a warm *fork-server daemon* per home
instead (:func:`daemon_main`, ``<home>/run/forkserver-<key>.sock``): per
connection it forks a private fork server that serves that connection exactly
as above, without paying the interpreter start and imports (one is kept on
standby, its cgroups made and a strict spare forked).  The daemon is exec'd
cleanly, never forked from the host; it serves only its own uid (SO_PEERCRED),
reaps its fork servers and what cgroups a killed one left, and exits after
``CORRAL_FORKSERVER_IDLE`` seconds (600) without a client.  ``<key>`` changes
with the install (:func:`daemon_key`), and a client falls back to a private
fork server whenever the daemon cannot serve it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, final

import msgspec

from corral._disk.files import exclusive
from corral._errors import UnavailableError
from corral._sandbox import cgroups as _cgroups
from corral._sandbox import namespaces as _namespaces
from corral._sandbox import worker as _worker
from corral._sandbox.rpc import (
    Assign,
    Reap,
    Reaped,
    Spawn,
    Spawned,
    WorkerInit,
    ZygoteReply,
    ZygoteRequest,
)

__all__ = ["ZygoteClient", "daemon_key", "daemon_main", "main"]

_MAX_PACKET: Final = 1 << 20
_SRC_DIR: Final = str(Path(__file__).resolve().parents[2])
_ZYGOTE_TIMEOUT: Final = 10.0
_SWEEP_SECONDS: Final = 1.0
_SWEEP_ROUNDS: Final = 100
#: Exit status of a spare that could not join its pids cgroup.
_EXIT_SPARE: Final = 71
#: How long a client waits for a daemon it started to listen.
_DAEMON_START_SECONDS: Final = 2.0
#: Default idle time before the fork-server daemon exits (``CORRAL_FORKSERVER_IDLE``).
_DAEMON_IDLE_SECONDS: Final = 600.0
#: First packet a daemon's fork server sends: its pid and the daemon's.
_HELLO: Final = b"corral-forkserver"
_LOCK_NAME: Final = "forkserver.lock"
#: Longest socket path bound or connected directly (``sun_path`` holds 108 bytes).
_MAX_SUN_PATH: Final = 100
_ENV: Final = {"LC_ALL": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}

_decoder: Final = msgspec.msgpack.Decoder(ZygoteRequest)
_encoder: Final = msgspec.msgpack.Encoder()


def _preload() -> None:
    """Import what a worker may need after it can no longer read the file system."""
    from corral._sandbox import landlock as _landlock
    from corral._sandbox import rlimits as _rlimits
    from corral._sandbox import seccomp as _seccomp

    del _landlock, _rlimits, _seccomp
    import asyncio.base_events
    import asyncio.unix_events  # noqa: F401
    import encodings.idna  # noqa: F401
    import json  # noqa: F401
    import selectors  # noqa: F401


def _interpreter_paths() -> list[str]:
    if _Warm.read_paths is None:  # computed once per process (a daemon's children inherit it)
        from corral._sandbox.landlock import interpreter_read_paths

        paths = set(interpreter_read_paths())
        paths.update(p for p in sys.path if p and os.path.isdir(p))
        _Warm.read_paths = sorted(paths)
    return list(_Warm.read_paths)


@final
class _Warm:
    """What a fork server computes once; the daemon does it before it forks any."""

    read_paths: list[str] | None = None
    seccomp: dict[bool, bytes] = {}  # noqa: RUF012 - one process, one cache


@final
class _Spare:
    """A forked worker process waiting for its assignment on ``sock``."""

    __slots__ = ("cgroup", "pid", "sock")

    def __init__(self, pid: int, sock: socket.socket, cgroup: str | None) -> None:
        self.pid: Final = pid
        self.sock: Final = sock
        #: The pids cgroup it joined before waiting, without a limit until it is assigned.
        self.cgroup: Final = cgroup


class _Zygote:
    def __init__(
        self,
        ctrl: socket.socket,
        cgroups: _cgroups.WorkerCgroups | None = None,
        cgroup_error: str | None = None,
    ) -> None:
        self.ctrl = ctrl
        self.children: set[int] = set()
        #: Each worker's pids cgroup (``max-processes``), when the kernel offers one.
        self.cgroups: Final = cgroups
        #: Why the pids cgroups the kernel offers could not be set up (refuses every spawn).
        self.cgroup_error: Final = cgroup_error
        self.worker_cgroup: dict[int, str] = {}
        self.spares: dict[str, _Spare] = {}
        self.wanted: set[str] = set()
        self.read_paths: Final = _interpreter_paths()
        self.seccomp: dict[bool, bytes] = {}
        self.limited_seccomp: bytes | None = None

    # -- requests ---------------------------------------------------------------

    def serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.ctrl], [], [], _SWEEP_SECONDS)
            if not ready:
                self._sweep()
                continue
            data, fds, _flags, _addr = socket.recv_fds(self.ctrl, _MAX_PACKET, 4)
            if not data:
                for fd in fds:
                    os.close(fd)
                return
            try:
                req = _decoder.decode(data)
            except msgspec.MsgspecError as exc:
                for fd in fds:
                    os.close(fd)
                self._reply(Spawned(error=f"bad request: {exc}"))
                continue
            if isinstance(req, Spawn):
                try:
                    reply = self._spawn(req.init, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
                self._reply(reply)
                self._replenish()
            else:
                for fd in fds:
                    os.close(fd)
                self._reply(self._reap(req))
            self._sweep()

    def _reply(self, msg: msgspec.Struct) -> None:
        self.ctrl.sendall(_encoder.encode(msg))

    def _seccomp(self, allow_exec: bool) -> bytes:
        prog = self.seccomp.get(allow_exec) or _Warm.seccomp.get(allow_exec)
        if prog is None:
            from corral._sandbox.seccomp import build_filter

            prog = build_filter(allow_exec=allow_exec)
        self.seccomp[allow_exec] = prog
        return prog

    def _limited_prog(self) -> bytes | None:
        if self.limited_seccomp is None:
            self.limited_seccomp = _limited_seccomp() or b""
        return self.limited_seccomp or None

    def _spawn(self, init: WorkerInit, fds: list[int]) -> Spawned:
        if len(fds) != 1:
            return Spawned(error=f"expected one descriptor, got {len(fds)}")
        ruleset_fd: int | None = None
        prog: bytes | None = None
        try:
            if init.isolation == "strict":
                from corral._sandbox.landlock import build_ruleset

                prog = self._seccomp(init.allow_exec)
                reads = [init.plugin_dir, *self.read_paths, *init.read_paths]
                writes = [init.data_dir, init.tmp_dir, init.cache_dir, *init.write_paths]
                ruleset_fd = build_ruleset(reads, writes, exec_paths=init.exec_paths)
            else:
                prog = self._limited_prog()
                ruleset_fd = _limited_ruleset()
            self.wanted.add(init.isolation)
            passed = [fds[0]] if ruleset_fd is None else [fds[0], ruleset_fd]
            assignment = _encoder.encode(Assign(init=init, seccomp=prog))
            if self.cgroup_error is not None:
                return Spawned(error=self.cgroup_error)
            why = "no worker process could be started"
            for _attempt in range(2):
                spare = self.spares.pop(init.isolation, None) or self._fork_spare(init.isolation)
                cgroup: str | None = None
                try:
                    if spare.cgroup is not None:  # before it is assigned, so before plugin code
                        try:
                            cgroup = _cgroups.WorkerCgroups.assign(
                                spare.cgroup, spare.pid, init.plugin_id, init.max_processes
                            )
                        except OSError as exc:
                            why = f"cannot limit the worker with its pids cgroup: {exc}"
                            self._discard(spare)
                            continue
                    socket.send_fds(spare.sock, [assignment], passed)
                except OSError:
                    self._discard(spare, cgroup)  # it died while waiting: take a fresh one
                    continue
                finally:
                    spare.sock.close()
                if cgroup is not None:
                    self.worker_cgroup[spare.pid] = cgroup
                return Spawned(pid=spare.pid)
            return Spawned(error=why)
        except Exception as exc:
            return Spawned(error=f"{type(exc).__name__}: {exc}")
        finally:
            if ruleset_fd is not None:
                os.close(ruleset_fd)

    def _replenish(self) -> None:
        """Keep one spare process per isolation level in use, forked ahead of time."""
        for kind in sorted(self.wanted):
            if kind not in self.spares:
                try:
                    self.spares[kind] = self._fork_spare(kind)
                except Exception:  # the next spawn forks on demand and reports the error
                    return

    def _discard(self, spare: _Spare, cgroup: str | None = None) -> None:
        _kill(spare.pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
        self.children.discard(spare.pid)
        cgroup = cgroup or spare.cgroup
        if cgroup is not None:
            _cgroups.WorkerCgroups.remove(cgroup, self._sweep)

    def _in_child(self) -> None:
        """First thing in any forked child: drop the zygote's Python-level descriptors."""
        self.ctrl.close()
        for spare in self.spares.values():
            spare.sock.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _fork_spare(self, kind: str) -> _Spare:
        cgroup: str | None = None
        procs_fd: int | None = None
        if self.cgroups is not None:
            cgroup, procs_fd = self.cgroups.create()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if kind == "strict":
                pid = self._fork_strict(ours, theirs, procs_fd)
            else:
                pid = os.fork()
                if pid == 0:
                    try:
                        ours.close()
                        self._in_child()
                        if procs_fd is not None:
                            _cgroups.join(procs_fd)
                    except BaseException:
                        os._exit(_EXIT_SPARE)
                    _worker.spare(theirs.detach())
        except BaseException:
            if cgroup is not None:
                _cgroups.WorkerCgroups.remove(cgroup)
            raise
        finally:
            theirs.close()
            if procs_fd is not None:
                os.close(procs_fd)
        self.children.add(pid)
        return _Spare(pid, ours, cgroup)

    def _fork_strict(
        self, ours: socket.socket, theirs: socket.socket, procs_fd: int | None = None
    ) -> int:
        r, w = os.pipe()
        uid, gid = os.geteuid(), os.getegid()
        pid = os.fork()
        if pid == 0:  # the intermediate child: unshare, fork PID 1, exit
            msg = b"error: fork failed"
            try:
                ours.close()
                self._in_child()
                os.close(r)
                _namespaces.unshare(_namespaces.STRICT_NAMESPACES)
                _namespaces.write_id_maps(uid, gid)
                init_pid = os.fork()
                if init_pid == 0:
                    try:
                        os.close(w)
                        if procs_fd is not None:  # it pays for the move, not the zygote
                            _cgroups.join(procs_fd)
                    except BaseException:
                        os._exit(_EXIT_SPARE)
                    _worker.spare(theirs.detach(), own_namespaces=True)
                msg = b"pid %d" % init_pid
            except BaseException as exc:
                msg = f"error: namespaces: {exc}".encode()
            finally:
                try:
                    os.write(w, msg)
                finally:
                    os._exit(0)
        os.close(w)
        try:
            msg = os.read(r, 512)
        finally:
            os.close(r)
            os.waitpid(pid, 0)
        if not msg.startswith(b"pid "):
            ours.close()
            raise OSError(msg.decode("utf-8", "replace") or "the namespace child died")
        return int(msg[4:])

    def _reap(self, req: Reap) -> Reaped:
        pid = req.pid
        if pid not in self.children:
            return Reaped(
                pid=pid,
                exit_code=None,
                signal=None,
                cpu_user_ms=0.0,
                cpu_system_ms=0.0,
                peak_rss_kb=0,
                error="not a worker of this zygote",
            )
        _kill(pid)
        cgroup = self.worker_cgroup.pop(pid, None)
        _pid, status, ru = os.wait4(pid, 0)
        self.children.discard(pid)
        self._sweep()  # its escaped descendants, before the host hears it is gone
        if cgroup is not None:  # whatever is still in it is killed, then it goes
            _cgroups.WorkerCgroups.remove(cgroup, self._sweep)
        return Reaped(
            pid=pid,
            exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            cpu_user_ms=ru.ru_utime * 1000.0,
            cpu_system_ms=ru.ru_stime * 1000.0,
            peak_rss_kb=ru.ru_maxrss,
        )

    def _sweep(self) -> None:
        """Kill and reap adopted orphans.

        The zygote is a child subreaper, so whatever a limited worker leaves behind
        (children that left its process group, daemons) lands here when its parent
        dies.  Nothing but workers and spares may run under the zygote: the rest is
        killed, round after round, until a fork bomb has nothing left to fork from.
        """
        for _round in range(_SWEEP_ROUNDS):
            strays = [p for p in _children_of(os.getpid()) if p not in self.children]
            if not strays:
                return
            for pid in strays:
                _kill(pid)
            for pid in strays:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    def shutdown(self) -> None:
        for spare in self.spares.values():
            spare.sock.close()
        self.spares.clear()
        for pid in sorted(self.children):
            _kill(pid)
        for pid in sorted(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()
        # Whatever was adopted: kill it and wait for it too.
        for pid in _children_of(os.getpid()):
            _kill(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.worker_cgroup.clear()
        if self.cgroups is not None:
            self.cgroups.close(self._sweep)


def _open_cgroups() -> tuple[_cgroups.WorkerCgroups | None, str | None]:
    """This fork server's pids cgroups (or None where the kernel offers none), and an error.

    Without them, ``max-processes`` is RLIMIT_NPROC only, and the host refuses strict
    isolation when it runs as root (see :mod:`._kernel`).  When the kernel offers them
    but they cannot be set up, a root fork server refuses every worker: the host was
    told fork bombs are contained.
    """
    hierarchy, _why = _cgroups.detect()
    if hierarchy is None:
        return None, None
    try:
        return _cgroups.WorkerCgroups(hierarchy, os.getppid()), None
    except OSError as exc:
        if os.getuid() != 0:
            return None, None
        return None, f"cannot set up the pids cgroup for max-processes: {exc}"


def _limited_ruleset() -> int | None:
    """A Landlock ruleset for ``limited``: the whole file system, but its cgroups, scoped.

    Reads anywhere; writes anywhere but the cgroup file systems, where the
    worker's own ``pids.max`` and ``cgroup.procs`` are (root owns them with
    mode 0644, so a worker of a root host could lift its limit or leave its
    cgroup; Landlock also forbids it to mount another view of them).  Where
    the kernel can scope signals and abstract unix sockets (ABI 6), the worker
    also cannot signal or ptrace the host (same uid) or reach its abstract
    sockets, and TCP goes only through the broker.  Without Landlock limited
    runs without it (``corral doctor`` says so); only strict refuses to.
    """
    from corral._sandbox.landlock import build_ruleset, landlock_abi, paths_outside

    if landlock_abi() < 1:
        return None
    if not _LimitedWrites.paths:  # computed once per fork server
        _LimitedWrites.paths = paths_outside(_cgroups.mount_points())
    return build_ruleset(["/"], _LimitedWrites.paths)


@final
class _LimitedWrites:
    """Where a limited worker may write: everything outside the cgroup file systems."""

    paths: list[str] = []  # noqa: RUF012 - one fork server, one list


def _limited_seccomp() -> bytes | None:
    """The ``clone3`` filter of a limited worker, or None where this kernel has no seccomp."""
    from corral._sandbox.kernel import _seccomp_available
    from corral._sandbox.seccomp import build_limited_filter

    if not _seccomp_available(os.uname().machine):
        return None
    return build_limited_filter()


def _kill(pid: int) -> None:
    for fn in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            fn(pid, signal.SIGKILL)


def _children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


# -- the shared fork-server daemon ---------------------------------------------


def daemon_key(version: str | None = None) -> str:
    """Names one install's daemon: corral's version, the interpreter, the source and the
    mtimes of its modules, so a changed install never talks to an old daemon.
    """
    if version is None:
        from corral._version import __version__

        version = __version__
    try:  # not hashlib: its OpenSSL import costs every CLI call milliseconds
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - CPython always has it
        from hashlib import blake2b
    h = blake2b(digest_size=8)
    for part in (version, sys.executable, _SRC_DIR):
        h.update(part.encode() + b"\0")
    here = os.path.dirname(os.path.abspath(__file__))
    # The sandbox's modules, and corral's own that workers import (_errors, _state, ...).
    for folder in (here, os.path.dirname(here)):
        with os.scandir(folder) as entries:
            stamps = sorted(
                f"{e.path}:{e.stat().st_mtime_ns}" for e in entries if e.name.endswith(".py")
            )
        h.update("\0".join(stamps).encode())
    return h.hexdigest()


def _idle_seconds() -> float:
    raw = os.environ.get("CORRAL_FORKSERVER_IDLE", "")
    try:
        value = float(raw) if raw else _DAEMON_IDLE_SECONDS
    except ValueError:
        return _DAEMON_IDLE_SECONDS
    return value if value > 0 else _DAEMON_IDLE_SECONDS


@contextlib.contextmanager
def _sun_path(path: str) -> Iterator[str]:
    """``path`` as an ``AF_UNIX`` address: via ``/proc/self/fd`` when it is too long."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield path
        return
    head, name = os.path.split(path)
    dirfd = os.open(head, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{name}"
    finally:
        os.close(dirfd)


def _private_dir(run_dir: Path) -> None:
    """Make ``run_dir`` (mode 0700, ours) or refuse one someone else could write to."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(run_dir)
    if st.st_uid != os.getuid() or not os.path.isdir(run_dir) or os.path.islink(run_dir):
        raise OSError(errno.EPERM, f"{run_dir} is not a directory of this user")
    if st.st_mode & 0o077:
        os.chmod(run_dir, 0o700)


def _try_connect(path: str) -> socket.socket | None:
    """A connection to the daemon at ``path``, or None when none listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        with _sun_path(path) as addr:
            sock.connect(addr)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return None
        raise
    return sock


def _peer_uid(conn: socket.socket) -> int:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


@final
class _Daemon:
    """Accepts connections and hands each to a private fork server; exits when idle.

    One fork server is kept on *standby*, forked ahead of time with its cgroups made
    and a strict spare already forked: a connection is passed to it (SCM_RIGHTS) and
    the next standby is forked after, so a client waits for neither.
    """

    def __init__(self, listener: socket.socket, path: str, inode: int, idle: float) -> None:
        self.listener = listener
        self.path: Final = path
        self.inode: Final = inode
        self.idle: Final = idle
        #: Fork servers serving a client.
        self.servers: set[int] = set()
        self.standby: tuple[int, socket.socket] | None = None
        self.idle_since = time.monotonic()

    def run(self) -> None:
        self._fork_standby()
        while True:
            timeout = min(_SWEEP_SECONDS, self.idle)
            ready, _, _ = select.select([self.listener], [], [], timeout)
            self._reap()
            if ready:
                self._accept()
            if not self.servers and time.monotonic() - self.idle_since >= self.idle:
                break
            if not ready and not self._still_named():
                break  # its home is gone, or its socket was replaced: nobody can reach it
        self._retire()

    def _still_named(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _accept(self) -> None:
        try:
            conn, _addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(True)
        self._hand_over(conn)
        if self.standby is None:
            self._fork_standby()

    def _hand_over(self, conn: socket.socket) -> None:
        """Give ``conn`` to the standby fork server (or a new one), if its peer is us."""
        try:
            if _peer_uid(conn) != os.getuid():
                return
            if self.standby is not None:
                pid, sock = self.standby
                self.standby = None
                try:
                    socket.send_fds(sock, [b"c"], [conn.fileno()])
                    self.servers.add(pid)
                    return
                except OSError:
                    _kill(pid)  # it died or is stuck: it is reaped, and a new one serves
                finally:
                    sock.close()
            pid = os.fork()
            if pid == 0:
                self._serve(conn)
            self.servers.add(pid)
        except OSError:
            return
        finally:
            conn.close()

    def _fork_standby(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            ours.close()
            self._serve(None, theirs)
        theirs.close()
        self.standby = (pid, ours)

    def _serve(self, conn: socket.socket | None, handoff: socket.socket | None = None) -> None:
        """In the forked child: today's fork server on ``conn``, or on the connection
        ``handoff`` brings once it has made ready; never returns.
        """
        code = 0
        try:
            self.listener.close()
            if self.standby is not None:
                self.standby[1].close()
            os.setsid()
            _namespaces.set_child_subreaper()  # not inherited across fork
            ctrl = conn if conn is not None else handoff
            assert ctrl is not None
            zygote = _Zygote(ctrl, *_open_cgroups())
            try:
                if handoff is not None:
                    if zygote.cgroup_error is None:
                        zygote.wanted.add("strict")  # the isolation most plugins use
                        zygote._replenish()
                    _data, fds, _flags, _addr = socket.recv_fds(handoff, 16, 1)
                    handoff.close()
                    if len(fds) != 1:
                        return  # the daemon retired it
                    conn = zygote.ctrl = socket.socket(fileno=fds[0])
                assert conn is not None
                conn.sendall(b"%s %d %d" % (_HELLO, os.getpid(), os.getppid()))
                zygote.serve()
            finally:
                zygote.shutdown()
        except BaseException:
            code = 1
        finally:
            os._exit(code)

    def _reap(self) -> None:
        """Reap exited fork servers (removing what cgroups a killed one left) and strays."""
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.standby is not None and pid == self.standby[0]:
                self.standby[1].close()
                self.standby = None  # a new one is forked on the next connection
                _cgroups.remove_parent(os.getpid(), pid)
            elif pid in self.servers:
                self.servers.discard(pid)
                _cgroups.remove_parent(os.getpid(), pid)
                if not self.servers:
                    self.idle_since = time.monotonic()
        # What a killed fork server's workers left is adopted here: nothing else may run.
        ours = set(self.servers)
        if self.standby is not None:
            ours.add(self.standby[0])
        for pid in _children_of(os.getpid()):
            if pid not in ours:
                _kill(pid)

    def _retire(self) -> None:
        """Stop listening (under the start lock, so no client races it), serve what was
        already queued, stop the standby, wait for every fork server, and exit.
        """
        with (
            contextlib.suppress(OSError),
            exclusive(os.path.join(os.path.dirname(self.path), _LOCK_NAME)),
        ):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        self.listener.setblocking(False)
        while True:
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                break
            conn.setblocking(True)
            self._hand_over(conn)
        self.listener.close()
        if self.standby is not None:
            self.servers.add(self.standby[0])
            self.standby[1].close()  # EOF: it cleans up and exits
            self.standby = None
        while self.servers:
            time.sleep(0.02)
            self._reap()


def _warm_up() -> None:
    """Everything a fork server computes once, done before the daemon forks any."""
    _cgroups.detect()
    _interpreter_paths()
    with contextlib.suppress(Exception):
        from corral._sandbox.kernel import _seccomp_available
        from corral._sandbox.seccomp import build_filter

        if _seccomp_available(os.uname().machine):
            for allow_exec in (False, True):
                _Warm.seccomp[allow_exec] = build_filter(allow_exec=allow_exec)


def _listen(path: str) -> tuple[socket.socket, int]:
    """Listen at ``path``: bound under a temporary name, then renamed into place, so a
    client never finds the name before it accepts connections.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        with _sun_path(tmp) as addr:
            listener.bind(addr)
        os.chmod(tmp, 0o600)
        listener.listen(64)
        inode = os.stat(tmp).st_ino
        os.rename(tmp, path)
    except BaseException:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return listener, inode


def daemon_main(path: str, idle: float) -> None:
    """Run the fork-server daemon listening at ``path`` (detaching from its starter first)."""
    if os.fork() != 0:
        os._exit(0)  # the starter reaps this one at once; the daemon is nobody's child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _namespaces.set_child_subreaper()
    _preload()
    _warm_up()
    listener, inode = _listen(path)
    gc.collect()
    gc.freeze()
    _Daemon(listener, path, inode, idle).run()
    os._exit(0)


# -- the host's side ----------------------------------------------------------


@final
class ZygoteClient:
    """The host's handle on the fork server process; thread-safe, one request at a time.

    :param shared_dir: where a per-home fork-server daemon listens (``<home>/run``):
        the fork server is then forked by that daemon instead of started here;
        any failure of that path falls back to a private one.  ``None``: private.
    :param key: names the daemon (see :func:`daemon_key`); tests pass another.
    """

    def __init__(self, shared_dir: Path | None = None, *, key: str | None = None) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._shared_dir = shared_dir
        self._key = key
        #: The fork server's and the daemon's pids when it came from the daemon.
        self._server_pid: int | None = None
        self.daemon_pid: int | None = None
        #: Marks the fork server's command line, which every worker inherits (tests look for it).
        self.tag = f"corral-zygote-{os.getpid()}-{id(self):x}"
        self._decoder = msgspec.msgpack.Decoder(ZygoteReply)
        self._encoder = msgspec.msgpack.Encoder()

    def _start(self) -> socket.socket:
        if self._shared_dir is not None:
            try:
                ctrl = self._start_shared(self._shared_dir)
            except (OSError, ValueError, subprocess.SubprocessError):
                ctrl = None  # never fail a call because of the daemon
            if ctrl is not None:
                self._ctrl = ctrl
                return ctrl
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from corral._sandbox.forkserver import main; main(int(sys.argv[2]))"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", code, _SRC_DIR, str(theirs.fileno()), self.tag],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=dict(_ENV),
                start_new_session=True,
            )
        finally:
            theirs.close()
        ours.settimeout(_ZYGOTE_TIMEOUT)
        self._ctrl = ours
        return ours

    def _start_shared(self, run_dir: Path) -> socket.socket:
        """A fork server of the daemon at ``run_dir``, which is started when none runs."""
        _private_dir(run_dir)
        key = self._key or daemon_key()
        path = str(run_dir / f"forkserver-{key}.sock")
        sock = _try_connect(path)
        if sock is None:
            with exclusive(run_dir / _LOCK_NAME):
                sock = _try_connect(path)  # another client may just have started it
                if sock is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)  # a dead daemon's
                    self._spawn_daemon(path, key)
                    deadline = time.monotonic() + _DAEMON_START_SECONDS
                    while sock is None:
                        if time.monotonic() >= deadline:
                            raise OSError(errno.ETIMEDOUT, f"no fork-server daemon at {path}")
                        time.sleep(0.002)
                        sock = _try_connect(path)
        try:
            sock.settimeout(_DAEMON_START_SECONDS)  # a stuck daemon: fall back soon
            hello = sock.recv(256).split()
            if len(hello) != 3 or hello[0] != _HELLO:
                raise OSError(errno.ECONNRESET, "the fork-server daemon did not answer")
            self._server_pid, self.daemon_pid = int(hello[1]), int(hello[2])
            sock.settimeout(_ZYGOTE_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        self.tag = _daemon_tag(path)
        return sock

    @staticmethod
    def _spawn_daemon(path: str, key: str) -> None:
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from corral._sandbox.forkserver import daemon_main; "
            "daemon_main(sys.argv[2], float(sys.argv[3]))"
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                code,
                _SRC_DIR,
                path,
                str(_idle_seconds()),
                _daemon_tag(path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(_ENV),
            cwd="/",
            start_new_session=True,
        )
        proc.wait(timeout=_DAEMON_START_SECONDS)  # it forks the daemon and exits

    def start(self) -> None:
        """Start the fork server now, so that it gets ready while the caller works on."""
        with self._lock:
            if self._ctrl is None:
                self._start()

    def request(self, msg: Spawn | Reap, fds: Sequence[int] = ()) -> ZygoteReply:
        """Send one request and wait for its reply."""
        with self._lock:
            ctrl = self._ctrl or self._start()
            try:
                socket.send_fds(ctrl, [self._encoder.encode(msg)], list(fds))
                data = ctrl.recv(1 << 16)
            except OSError as exc:
                self._close_locked()
                raise UnavailableError(f"the sandbox fork server failed: {exc}") from exc
            if not data:
                self._close_locked()
                raise UnavailableError("the sandbox fork server exited")
            reply: ZygoteReply = self._decoder.decode(data)
            return reply

    @property
    def pid(self) -> int | None:
        """The fork server's pid, when it runs."""
        if self._proc is not None:
            return self._proc.pid
        return self._server_pid if self._ctrl is not None else None

    @property
    def shared(self) -> bool:
        """Whether the fork server is a daemon's (it cleans up after a hang-up on its own)."""
        return self._server_pid is not None

    def close(self) -> None:
        """Stop the fork server: it kills and reaps whatever it still has."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._ctrl is not None:
            # A daemon's fork server sees EOF, kills and reaps what it has (every worker
            # the supervisor reaped before: spares) and exits; the daemon reaps it.
            self._ctrl.close()
            self._ctrl = None
            self._server_pid = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=_ZYGOTE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            # A fork server that was killed could not remove its cgroups: do it for it.
            _cgroups.remove_parent(os.getpid(), self._proc.pid)
            self._proc = None


def _daemon_tag(path: str) -> str:
    """Marks the daemon's command line (its fork servers and workers inherit it)."""
    return f"corral-forkserver:{path}"


def main(ctrl_fd: int) -> None:
    """Run the fork server on the inherited control socket ``ctrl_fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _namespaces.set_child_subreaper()
    _preload()
    ctrl = socket.socket(fileno=ctrl_fd)
    zygote = _Zygote(ctrl, *_open_cgroups())
    gc.collect()
    gc.freeze()
    try:
        zygote.serve()
    finally:
        zygote.shutdown()
