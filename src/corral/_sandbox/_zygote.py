"""The fork server: one long-lived process that forks every worker, and its client.

The host (:class:`ZygoteClient`) starts it once, lazily (``python -I -c ...``),
with one end of a ``SOCK_SEQPACKET`` socketpair.  It imports the worker runtime
up front, then answers :class:`~._rpc.Spawn` and :class:`~._rpc.Reap` requests,
one packet each.  Filters are built here, in the parent, once per worker (the
Landlock ruleset) or once per kind (the seccomp program), and only applied in
the child.

Workers are forked ahead of time: for each isolation level in use the zygote
keeps one *spare*, already forked, in its namespaces, session and capability-
less state, waiting on a private socket.  A Spawn hands the spare its
:class:`~._rpc.Assign` (with the RPC socket and the ruleset via SCM_RIGHTS),
answers the host, and only then forks the next spare.

A ``strict`` spare is forked twice: the first child unshares the user, PID,
network, mount and IPC namespaces, maps its uid/gid, forks PID 1 of the new PID
namespace and exits.  The zygote is a child subreaper, so it adopts that PID 1
and is its parent: it alone reaps workers, so it can kill them without racing
pid reuse, and it kills whatever else it adopts (what a limited worker left
behind).  Workers die with the zygote (``PR_SET_PDEATHSIG``); when the host goes
away (EOF on the control socket) the zygote kills and reaps every worker and
exits.  It never leaves a zombie or an orphan.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, final

import msgspec

from corral._errors import CorralError

from . import _cgroups, _namespaces, _worker
from ._rpc import (
    Assign,
    Reap,
    Reaped,
    Spawn,
    Spawned,
    WorkerInit,
    ZygoteReply,
    ZygoteRequest,
)

__all__ = ["ZygoteClient", "main"]

_MAX_PACKET: Final = 1 << 20
_SRC_DIR: Final = str(Path(__file__).resolve().parents[2])
_ZYGOTE_TIMEOUT: Final = 10.0
_SWEEP_SECONDS: Final = 1.0
_SWEEP_ROUNDS: Final = 100
#: Exit status of a spare that could not join its pids cgroup.
_EXIT_SPARE: Final = 71

_decoder: Final = msgspec.msgpack.Decoder(ZygoteRequest)
_encoder: Final = msgspec.msgpack.Encoder()


def _preload() -> None:
    """Import what a worker may need after it can no longer read the file system."""
    from . import _landlock, _rlimits, _seccomp

    del _landlock, _rlimits, _seccomp
    import asyncio.base_events
    import asyncio.unix_events  # noqa: F401
    import encodings.idna  # noqa: F401
    import json  # noqa: F401
    import selectors  # noqa: F401


def _interpreter_paths() -> list[str]:
    from ._landlock import interpreter_read_paths

    paths = set(interpreter_read_paths())
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted(paths)


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
        prog = self.seccomp.get(allow_exec)
        if prog is None:
            from ._seccomp import build_filter

            prog = self.seccomp[allow_exec] = build_filter(allow_exec=allow_exec)
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
                from ._landlock import build_ruleset

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
                    _worker.spare(theirs.detach())
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
    from ._landlock import build_ruleset, landlock_abi, paths_outside

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
    from ._kernel import _seccomp_available
    from ._seccomp import build_limited_filter

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


# -- the host's side ----------------------------------------------------------


@final
class ZygoteClient:
    """The host's handle on the fork server process; thread-safe, one request at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        #: Marks the fork server's command line, which every worker inherits (tests look for it).
        self.tag: Final = f"corral-zygote-{os.getpid()}-{id(self):x}"
        self._decoder = msgspec.msgpack.Decoder(ZygoteReply)
        self._encoder = msgspec.msgpack.Encoder()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from corral._sandbox._zygote import main; main(int(sys.argv[2]))"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", code, _SRC_DIR, str(theirs.fileno()), self.tag],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={"LC_ALL": "C.UTF-8", "MALLOC_ARENA_MAX": "2"},
                start_new_session=True,
            )
        finally:
            theirs.close()
        ours.settimeout(_ZYGOTE_TIMEOUT)
        self._ctrl = ours
        return ours

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
                raise CorralError(f"the sandbox fork server failed: {exc}") from exc
            if not data:
                self._close_locked()
                raise CorralError("the sandbox fork server exited")
            reply: ZygoteReply = self._decoder.decode(data)
            return reply

    @property
    def pid(self) -> int | None:
        """The fork server's pid, when it runs."""
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Stop the fork server: it kills and reaps whatever it still has."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=_ZYGOTE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            # A fork server that was killed could not remove its cgroups: do it for it.
            _cgroups.remove_parent(os.getpid(), self._proc.pid)
            self._proc = None


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
