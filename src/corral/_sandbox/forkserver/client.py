"""The host's side of the fork server: start one (private, or the shared daemon's) and talk to it.

:class:`ForkServerClient` starts the fork server lazily, by module path in a
clean interpreter (``python -I -c ...``), or connects to the per-home daemon
(:mod:`.daemon`) and falls back to a private fork server when that fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, final

import msgspec

from corral._disk.files import exclusive
from corral._errors import UnavailableError
from corral._sandbox import cgroups as _cgroups
from corral._sandbox.forkserver.daemon import (
    HELLO,
    LOCK_NAME,
    SRC_DIR,
    daemon_key,
    daemon_tag,
    idle_seconds,
    private_dir,
    try_connect,
)
from corral._sandbox.rpc import ForkServerReply, Reap, Spawn

__all__ = ["ForkServerClient"]

_FORKSERVER_TIMEOUT: Final = 10.0
#: How long a client waits for a daemon it started to listen.
_DAEMON_START_SECONDS: Final = 2.0
_ENV: Final = {"LC_ALL": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}


@final
class ForkServerClient:
    """The host's handle on the fork server process; thread-safe, one request at a time.

    :param shared_dir: where a per-home fork server daemon listens (``<home>/run``):
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
        self.tag = f"corral-forkserver-{os.getpid()}-{id(self):x}"
        self._decoder = msgspec.msgpack.Decoder(ForkServerReply)
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
            "from corral._sandbox.forkserver.server import main; main(int(sys.argv[2]))"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", code, SRC_DIR, str(theirs.fileno()), self.tag],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=dict(_ENV),
                start_new_session=True,
            )
        finally:
            theirs.close()
        ours.settimeout(_FORKSERVER_TIMEOUT)
        self._ctrl = ours
        return ours

    def _start_shared(self, run_dir: Path) -> socket.socket:
        """A fork server of the daemon at ``run_dir``, which is started when none runs."""
        private_dir(run_dir)
        key = self._key or daemon_key()
        path = str(run_dir / f"forkserver-{key}.sock")
        sock = try_connect(path)
        if sock is None:
            with exclusive(run_dir / LOCK_NAME):
                sock = try_connect(path)  # another client may just have started it
                if sock is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)  # a dead daemon's
                    self._spawn_daemon(path, key)
                    deadline = time.monotonic() + _DAEMON_START_SECONDS
                    while sock is None:
                        if time.monotonic() >= deadline:
                            raise OSError(errno.ETIMEDOUT, f"no fork server daemon at {path}")
                        time.sleep(0.002)
                        sock = try_connect(path)
        try:
            sock.settimeout(_DAEMON_START_SECONDS)  # a stuck daemon: fall back soon
            hello = sock.recv(256).split()
            if len(hello) != 3 or hello[0] != HELLO:
                raise OSError(errno.ECONNRESET, "the fork server daemon did not answer")
            self._server_pid, self.daemon_pid = int(hello[1]), int(hello[2])
            sock.settimeout(_FORKSERVER_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        self.tag = daemon_tag(path)
        return sock

    @staticmethod
    def _spawn_daemon(path: str, key: str) -> None:
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from corral._sandbox.forkserver.daemon import daemon_main; "
            "daemon_main(sys.argv[2], float(sys.argv[3]))"
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                code,
                SRC_DIR,
                path,
                str(idle_seconds()),
                daemon_tag(path),
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

    def request(self, msg: Spawn | Reap, fds: Sequence[int] = ()) -> ForkServerReply:
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
            reply: ForkServerReply = self._decoder.decode(data)
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
                self._proc.wait(timeout=_FORKSERVER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            # A fork server that was killed could not remove its cgroups: do it for it.
            _cgroups.remove_parent(os.getpid(), self._proc.pid)
            self._proc = None


