"""The shared fork server daemon: one warm process per home that forks fork servers.

A one-shot process (the CLI) may share a warm daemon per home instead of
starting a fork server of its own (:func:`daemon_main`,
``<home>/run/forkserver-<key>.sock``): per connection it forks a private fork
server (:mod:`.server`) that serves that connection exactly as a private one
would, without paying the interpreter start and imports (one is kept on
standby, its cgroups made and a strict spare forked).  The daemon is exec'd
cleanly, never forked from the host; it serves only its own uid (SO_PEERCRED),
reaps its fork servers and what cgroups a killed one left, and exits after
``CORRAL_FORKSERVER_IDLE`` seconds (600) without a client, or on SIGTERM.
``<key>`` changes with the install (:func:`daemon_key`), and a client falls
back to a private fork server whenever the daemon cannot serve it.  Beside its
socket it keeps ``<socket>.status`` (:func:`.control.status_path`: pid, clients, when it
went idle) for ``corral daemon status`` (:mod:`.control`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, final

from corral._disk.files import exclusive
from corral._sandbox import cgroups as _cgroups
from corral._sandbox import namespaces as _namespaces
from corral._sandbox.forkserver.control import status_path
from corral._sandbox.forkserver.server import (
    SWEEP_SECONDS,
    ForkServer,
    children_of,
    kill,
    open_accounting,
    open_cgroups,
    preload,
    warm_up,
)
from corral._sandbox.forkserver.settings import forkserver_env
from corral._version import __version__

__all__ = [
    "HELLO",
    "LOCK_NAME",
    "SRC_DIR",
    "daemon_key",
    "daemon_main",
    "daemon_tag",
    "idle_seconds",
    "private_dir",
    "try_connect",
]

#: The directory ``corral`` is imported from, handed to every process started by path.
SRC_DIR: Final = str(Path(__file__).resolve().parents[3])
#: Default idle time before the daemon exits (``CORRAL_FORKSERVER_IDLE``).
_DAEMON_IDLE_SECONDS: Final = 600.0
#: First packet a daemon's fork server sends: its pid and the daemon's.
HELLO: Final = b"corral-forkserver"
#: The lock a client takes in ``<home>/run`` to start the daemon, and the daemon to retire.
LOCK_NAME: Final = "forkserver.lock"
#: Longest socket path bound or connected directly (``sun_path`` holds 108 bytes).
_MAX_SUN_PATH: Final = 100


def daemon_key(version: str | None = None) -> str:
    """Names one install's daemon: corral's version, the interpreter, the source and the
    mtimes of its modules, so a changed install never talks to an old daemon.
    """
    if version is None:
        version = __version__
    try:  # not hashlib: its OpenSSL import costs every CLI call milliseconds
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - CPython always has it
        from hashlib import blake2b
    h = blake2b(digest_size=8)
    for part in (version, sys.executable, SRC_DIR):
        h.update(part.encode() + b"\0")
    sandbox = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The sandbox's modules (its packages' too), and corral's own top-level ones (_errors, ...).
    with os.scandir(sandbox) as entries:
        packages = sorted(e.path for e in entries if e.is_dir() and e.name != "__pycache__")
    for folder in (sandbox, *packages, os.path.dirname(sandbox)):
        with os.scandir(folder) as entries:
            stamps = sorted(
                f"{e.path}:{e.stat().st_mtime_ns}" for e in entries if e.name.endswith(".py")
            )
        h.update("\0".join(stamps).encode())
    return h.hexdigest()


def idle_seconds() -> float:
    """How long the daemon waits without a client before it exits."""
    raw = forkserver_env("IDLE")
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


def private_dir(run_dir: Path) -> None:
    """Make ``run_dir`` (mode 0700, ours) or refuse one someone else could write to."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(run_dir)
    if st.st_uid != os.getuid() or not os.path.isdir(run_dir) or os.path.islink(run_dir):
        raise OSError(errno.EPERM, f"{run_dir} is not a directory of this user")
    if st.st_mode & 0o077:
        os.chmod(run_dir, 0o700)


def try_connect(path: str) -> socket.socket | None:
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
        self.stopping = False
        #: Wakes the select loop when SIGTERM asks the daemon to retire.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.status: dict[str, object] = {}

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _child_exited(self, signum: int, frame: object) -> None:
        pass  # the wake-up pipe did the work

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGCHLD, self._child_exited)  # wakes select: reap and say so
        self._fork_standby()
        self._write_status()
        while not self.stopping:
            timeout = min(SWEEP_SECONDS, self.idle)
            ready, _, _ = select.select([self.listener.fileno(), self.wake_r], [], [], timeout)
            with contextlib.suppress(OSError):
                os.read(self.wake_r, 64)
            self._reap()
            if self.listener.fileno() in ready:
                self._accept()
            self._write_status()
            if not self.servers and time.monotonic() - self.idle_since >= self.idle:
                break
            if not ready and not self._still_named():
                break  # its home is gone, or its socket was replaced: nobody can reach it
        self._retire()

    def _write_status(self) -> None:
        """Rewrite the status file when what it says changed (atomically: a reader never
        sees half of it); ``idle_since`` is wall-clock time, for other processes.
        """
        idle_for = time.monotonic() - self.idle_since
        status: dict[str, object] = {
            "pid": os.getpid(), "socket": self.path, "clients": len(self.servers),
            "idle_timeout": self.idle,
            "idle_since": None if self.servers else round(time.time() - idle_for, 3),
        }
        if status["clients"] == self.status.get("clients") and (
                self.servers or self.status.get("idle_since") is not None):
            return
        self.status = status
        target = status_path(self.path)
        tmp = f"{target}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(status, f)
            os.rename(tmp, target)

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
                    kill(pid)  # it died or is stuck: it is reaped, and a new one serves
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
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGCHLD):  # the daemon's, not ours
                signal.signal(signum, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.listener.close()
            if self.standby is not None:
                self.standby[1].close()
            os.setsid()
            _namespaces.set_child_subreaper()  # not inherited across fork
            ctrl = conn if conn is not None else handoff
            assert ctrl is not None
            cgroups, cgroup_error = open_cgroups()
            server = ForkServer(ctrl, cgroups, cgroup_error,
                                accounting=open_accounting(cgroups))
            try:
                if handoff is not None:
                    if server.cgroup_error is None:
                        server.wanted.add("strict")  # the isolation most plugins use
                        server.replenish()
                    _data, fds, _flags, _addr = socket.recv_fds(handoff, 16, 1)
                    handoff.close()
                    if len(fds) != 1:
                        return  # the daemon retired it
                    conn = server.ctrl = socket.socket(fileno=fds[0])
                assert conn is not None
                conn.sendall(b"%s %d %d" % (HELLO, os.getpid(), os.getppid()))
                server.serve()
            finally:
                server.shutdown()
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
        for pid in children_of(os.getpid()):
            if pid not in ours:
                kill(pid)

    def _retire(self) -> None:
        """Stop listening (under the start lock, so no client races it), serve what was
        already queued, stop the standby, wait for every fork server, and exit.
        """
        with (
            contextlib.suppress(OSError),
            exclusive(os.path.join(os.path.dirname(self.path), LOCK_NAME)),
        ):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
                with contextlib.suppress(OSError):
                    os.unlink(status_path(self.path))
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
    """Run the fork server daemon listening at ``path`` (detaching from its starter first)."""
    if os.fork() != 0:
        os._exit(0)  # the starter reaps this one at once; the daemon is nobody's child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _namespaces.set_child_subreaper()
    preload()
    warm_up()
    listener, inode = _listen(path)
    gc.collect()
    gc.freeze()
    _Daemon(listener, path, inode, idle).run()
    os._exit(0)


def daemon_tag(path: str) -> str:
    """Marks the daemon's command line (its fork servers and workers inherit it)."""
    return f"corral-forkserver:{path}"


