"""How a forked process becomes a worker: a spare waits for its assignment, then enters.

:func:`spare` runs in a process the fork server forked ahead of time; :func:`enter`
confines it to one plugin (:mod:`.confine`) and runs the serve loop (:mod:`.serve`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import sys
from typing import Final, NoReturn

import msgspec

from corral._errors import CorralError
from corral._sandbox import namespaces as _namespaces
from corral._sandbox.rpc import Assign, Hello, Refused, WorkerInit, encode
from corral._sandbox.worker.channel import RPC_FD, Channel
from corral._sandbox.worker.confine import confine
from corral._sandbox.worker.netroute import install as install_netroute
from corral._sandbox.worker.serve import Worker

__all__ = ["enter", "spare"]

#: Exit status when confinement failed before the RPC loop.
_EXIT_SETUP: Final = 71
_assign_decoder: Final = msgspec.msgpack.Decoder(Assign)


def spare(assign_fd: int, *, own_namespaces: bool = False) -> NoReturn:
    """Wait, forked ahead of time, for an ``Assign`` on ``assign_fd``; then enter.

    Everything that does not depend on the plugin happens here, off the cold-start path.
    A strict spare (``own_namespaces``: its capabilities reach only its own user and
    mount namespaces) keeps them until it knows which directories to mount ``noexec``.
    """
    try:
        os.setsid()
        _namespaces.set_no_new_privs()
        if not own_namespaces:
            _namespaces.drop_capabilities()
        _prewarm()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=assign_fd)
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 4)
        sock.close()
        if not data:  # the fork server is shutting down
            os._exit(0)
        # Now the fork server is the parent (a strict spare was adopted long ago): die with it.
        _namespaces.set_pdeathsig(signal.SIGKILL)
        msg = _assign_decoder.decode(data)
        ruleset_fd = fds[1] if len(fds) > 1 else None
        enter(msg.init, fds[0], ruleset_fd, msg.seccomp)
    finally:
        os._exit(_EXIT_SETUP)


def _prewarm() -> None:
    """Touch (and so copy-on-write) what every worker touches, before it is needed."""
    msgspec.json.decode(msgspec.json.encode({"warm": [1, 2.0, None, "x"]}))
    encode(Hello(pid=0))
    compile("def f(x, y):\n    return x\n", "<prewarm>", "exec")
    logging.getLogger("corral.plugin")
    resource.getrusage(resource.RUSAGE_SELF)


def enter(
    init: WorkerInit, rpc_fd: int, ruleset_fd: int | None, seccomp_prog: bytes | None
) -> NoReturn:
    """Become the worker (in a freshly forked child); never returns."""
    code = 0
    try:
        with contextlib.suppress(PermissionError):  # a spare already leads its session
            os.setsid()
        if ruleset_fd == RPC_FD:
            ruleset_fd = os.dup(ruleset_fd)
        if rpc_fd != RPC_FD:
            os.dup2(rpc_fd, RPC_FD, inheritable=False)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        sock = socket.socket(fileno=RPC_FD)
        ch = Channel(sock)
        try:
            confine(init, ruleset_fd, seccomp_prog)
        except BaseException as exc:
            feature = exc.details.get("feature") if isinstance(exc, CorralError) else None
            ch.send(
                Refused(
                    message=f"could not confine the worker: {exc}",
                    feature=feature if isinstance(feature, str) else None,
                )
            )
            os._exit(_EXIT_SETUP)
        if init.isolation == "strict":  # no network of its own: connects go to the broker
            install_netroute(ch)
        worker = Worker(init, ch)
        sys.stdout = worker.stdout
        sys.stderr = worker.stderr
        worker.serve()
    except BaseException:
        code = _EXIT_SETUP
    os._exit(code)
