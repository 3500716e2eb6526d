"""The fork server: one long-lived process that forks every worker.

The host (:class:`~.client.ForkServerClient`) starts it once, lazily
(``python -I -c ...``), with one end of a ``SOCK_SEQPACKET`` socketpair.  It
imports the worker runtime up front, then answers ``Spawn`` and ``Reap``
requests (:mod:`corral._sandbox.rpc`), one packet each.  Filters are built
here, in the parent, once per worker (the Landlock ruleset) or once per kind
(the seccomp program), and only applied in the child.

Workers are forked ahead of time: for each isolation level in use the fork
server keeps one *spare*, already forked, in its namespaces, session and
capability-less state (a strict spare keeps those of its own user namespace
until its assignment says which directories to mount ``noexec``), waiting on a
private socket.  A Spawn hands the spare its ``Assign`` (with the RPC socket and
the ruleset via SCM_RIGHTS), answers the host, and only then forks the next
spare.

A ``strict`` spare is forked twice: the first child unshares the user, PID,
network, mount and IPC namespaces, maps its uid/gid, forks PID 1 of the new PID
namespace and exits.  The fork server is a child subreaper, so it adopts that
PID 1 and is its parent: it alone reaps workers, so it can kill them without
racing pid reuse, and it kills whatever else it adopts (what a limited worker
left behind).  Workers die with the fork server (``PR_SET_PDEATHSIG``); when the
host goes away (EOF on the control socket) the fork server kills and reaps every
worker and exits.  It never leaves a zombie or an orphan.

A one-shot process (the CLI) may instead get a fork server forked by the shared
per-home daemon (:mod:`.daemon`), which serves its connection exactly as above.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
from typing import Final, final

import msgspec

from corral._sandbox import cgroups as _cgroups
from corral._sandbox import namespaces as _namespaces
from corral._sandbox.rpc import (
    Assign,
    ForkServerRequest,
    Reap,
    Reaped,
    Spawn,
    Spawned,
    WorkerInit,
)
from corral._sandbox.worker.start import spare as _become_spare

__all__ = [
    "ForkServer", "children_of", "kill", "main", "open_accounting", "open_cgroups", "preload",
    "warm_up",
]

_MAX_PACKET: Final = 1 << 20
#: How often the fork server (and the daemon) looks for strays when nothing happens.
SWEEP_SECONDS: Final = 1.0
_SWEEP_ROUNDS: Final = 100
#: Exit status of a spare that could not join its pids cgroup.
_EXIT_SPARE: Final = 71

_decoder: Final = msgspec.msgpack.Decoder(ForkServerRequest)
_encoder: Final = msgspec.msgpack.Encoder()


def preload() -> None:
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


def interpreter_paths() -> list[str]:
    """What every strict worker may read: the interpreter's files and ``sys.path``."""
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

    __slots__ = ("accounting", "cgroup", "pid", "sock")

    def __init__(self, pid: int, sock: socket.socket, cgroup: str | None,
                 accounting: dict[str, str] | None = None) -> None:
        self.pid: Final = pid
        self.sock: Final = sock
        #: The pids cgroup it joined before waiting, without a limit until it is assigned.
        self.cgroup: Final = cgroup
        #: Its accounting cgroups (v1), ``{controller: path}``.
        self.accounting: Final = accounting or {}


class ForkServer:
    """Forks every worker of one host (or one daemon client) and reaps it."""

    def __init__(
        self,
        ctrl: socket.socket,
        cgroups: _cgroups.WorkerCgroups | None = None,
        cgroup_error: str | None = None,
        accounting: _cgroups.AccountingCgroups | None = None,
    ) -> None:
        self.ctrl = ctrl
        self.children: set[int] = set()
        #: Each worker's pids cgroup (``max-processes``), when the kernel offers one.
        self.cgroups: Final = cgroups
        #: Why the pids cgroups the kernel offers could not be set up (refuses every spawn).
        self.cgroup_error: Final = cgroup_error
        self.worker_cgroup: dict[int, str] = {}
        #: Each worker's accounting cgroups, when the kernel lets us make them.
        self.accounting: Final = accounting
        self.worker_accounting: dict[int, dict[str, str]] = {}
        self.spares: dict[str, _Spare] = {}
        self.wanted: set[str] = set()
        self.read_paths: Final = interpreter_paths()
        self.seccomp: dict[bool, bytes] = {}
        self.limited_seccomp: bytes | None = None

    # -- requests ---------------------------------------------------------------

    def serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.ctrl], [], [], SWEEP_SECONDS)
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
                self.replenish()
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
                measured = dict(spare.accounting)
                if spare.accounting:
                    self.worker_accounting[spare.pid] = spare.accounting
                if cgroup is not None and self.cgroups is not None:
                    measured["pids"] = cgroup
                    if self.cgroups.hierarchy.version == 2:
                        measured["unified"] = cgroup
                return Spawned(pid=spare.pid, cgroups=measured)
            return Spawned(error=why)
        except Exception as exc:
            return Spawned(error=f"{type(exc).__name__}: {exc}")
        finally:
            if ruleset_fd is not None:
                os.close(ruleset_fd)

    def replenish(self) -> None:
        """Keep one spare process per isolation level in use, forked ahead of time."""
        for kind in sorted(self.wanted):
            if kind not in self.spares:
                try:
                    self.spares[kind] = self._fork_spare(kind)
                except Exception:  # the next spawn forks on demand and reports the error
                    return

    def _discard(self, spare: _Spare, cgroup: str | None = None) -> None:
        kill(spare.pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
        self.children.discard(spare.pid)
        cgroup = cgroup or spare.cgroup
        if cgroup is not None:
            _cgroups.WorkerCgroups.remove(cgroup, self._sweep)
        _cgroups.AccountingCgroups.remove(spare.accounting, self._sweep)

    def _in_child(self) -> None:
        """First thing in any forked child: drop the fork server's Python-level descriptors."""
        self.ctrl.close()
        for spare in self.spares.values():
            spare.sock.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _fork_spare(self, kind: str) -> _Spare:
        cgroup: str | None = None
        procs_fd: int | None = None
        measured: dict[str, str] = {}
        measure_fds: list[int] = []
        if self.accounting is not None:
            with contextlib.suppress(OSError):  # unmeasured is better than no worker
                measured, measure_fds = self.accounting.create()
        try:
            if self.cgroups is not None:
                cgroup, procs_fd = self.cgroups.create()
        except BaseException:
            for fd in measure_fds:
                os.close(fd)
            _cgroups.AccountingCgroups.remove(measured)
            raise
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if kind == "strict":
                pid = self._fork_strict(ours, theirs, procs_fd, measure_fds)
            else:
                pid = os.fork()
                if pid == 0:
                    try:
                        ours.close()
                        self._in_child()
                        _join_accounting(measure_fds)
                        if procs_fd is not None:
                            _cgroups.join(procs_fd)
                    except BaseException:
                        os._exit(_EXIT_SPARE)
                    _become_spare(theirs.detach())
        except BaseException:
            if cgroup is not None:
                _cgroups.WorkerCgroups.remove(cgroup)
            _cgroups.AccountingCgroups.remove(measured)
            raise
        finally:
            theirs.close()
            if procs_fd is not None:
                os.close(procs_fd)
            for fd in measure_fds:
                os.close(fd)
        self.children.add(pid)
        return _Spare(pid, ours, cgroup, measured)

    def _fork_strict(
        self, ours: socket.socket, theirs: socket.socket, procs_fd: int | None = None,
        measure_fds: list[int] | None = None,
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
                        _join_accounting(measure_fds or [])
                        if procs_fd is not None:  # it pays for the move, not the fork server
                            _cgroups.join(procs_fd)
                    except BaseException:
                        os._exit(_EXIT_SPARE)
                    _become_spare(theirs.detach(), own_namespaces=True)
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
                error="not a worker of this fork server",
            )
        kill(pid)
        cgroup = self.worker_cgroup.pop(pid, None)
        measured = self.worker_accounting.pop(pid, {})
        _pid, status, ru = os.wait4(pid, 0)
        self.children.discard(pid)
        self._sweep()  # its escaped descendants, before the host hears it is gone
        if cgroup is not None:  # whatever is still in it is killed, then it goes
            _cgroups.WorkerCgroups.remove(cgroup, self._sweep)
        _cgroups.AccountingCgroups.remove(measured, self._sweep)
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

        The server is a child subreaper, so whatever a limited worker leaves behind
        (children that left its process group, daemons) lands here when its parent
        dies.  Nothing but workers and spares may run under the fork server: the rest is
        killed, round after round, until a fork bomb has nothing left to fork from.
        """
        for _round in range(_SWEEP_ROUNDS):
            strays = [p for p in children_of(os.getpid()) if p not in self.children]
            if not strays:
                return
            for pid in strays:
                kill(pid)
            for pid in strays:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    def shutdown(self) -> None:
        for spare in self.spares.values():
            spare.sock.close()
        self.spares.clear()
        for pid in sorted(self.children):
            kill(pid)
        for pid in sorted(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()
        # Whatever was adopted: kill it and wait for it too.
        for pid in children_of(os.getpid()):
            kill(pid)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.worker_cgroup.clear()
        self.worker_accounting.clear()
        if self.cgroups is not None:
            self.cgroups.close(self._sweep)
        if self.accounting is not None:
            self.accounting.close(self._sweep)


def open_cgroups() -> tuple[_cgroups.WorkerCgroups | None, str | None]:
    """This fork server's pids cgroups (or None where the kernel offers none), and an error.

    Without them, ``max-processes`` is RLIMIT_NPROC only, and the host refuses strict
    isolation when it runs as root (see :mod:`corral._sandbox.kernel`).  When the kernel offers them
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


def open_accounting(
    cgroups: _cgroups.WorkerCgroups | None = None,
) -> _cgroups.AccountingCgroups | None:
    """This fork server's accounting cgroups, or None where they cannot be made (the host
    then measures workers by their rusage, marked approximate).
    """
    hierarchies, _why = _cgroups.detect_accounting()
    if hierarchies is None:
        return None
    try:
        return _cgroups.AccountingCgroups(
            hierarchies, os.getppid(), cgroups.path if cgroups is not None else None
        )
    except OSError:
        return None


def _join_accounting(fds: list[int]) -> None:
    """In a spare: join its accounting cgroups (before the pids one); failures only
    leave it unmeasured.
    """
    for fd in fds:
        with contextlib.suppress(OSError):
            _cgroups.join(fd)


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


def kill(pid: int) -> None:
    """SIGKILL ``pid``'s process group and ``pid`` itself; gone already is fine."""
    for fn in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            fn(pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s children (its own and adopted ones), from ``/proc``."""
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


def warm_up() -> None:
    """Everything a fork server computes once, done before the daemon forks any."""
    _cgroups.detect()
    _cgroups.detect_accounting()
    interpreter_paths()
    with contextlib.suppress(Exception):
        from corral._sandbox.kernel import _seccomp_available
        from corral._sandbox.seccomp import build_filter

        if _seccomp_available(os.uname().machine):
            for allow_exec in (False, True):
                _Warm.seccomp[allow_exec] = build_filter(allow_exec=allow_exec)


def main(ctrl_fd: int) -> None:
    """Run the fork server on the inherited control socket ``ctrl_fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _namespaces.set_child_subreaper()
    preload()
    ctrl = socket.socket(fileno=ctrl_fd)
    cgroups, cgroup_error = open_cgroups()
    server = ForkServer(ctrl, cgroups, cgroup_error, accounting=open_accounting(cgroups))
    gc.collect()
    gc.freeze()
    try:
        server.serve()
    finally:
        server.shutdown()
