"""Prompt reaping of orphans in a strict worker, without stealing the plugin's own statuses.

A strict worker is PID 1 of its PID namespace, so whatever a plugin's programs
leave behind when their parent exits (``sh -c 'sleep 1 & exit'``) is re-parented
to the worker and stays a zombie until the worker waits for it.  The worker
cannot simply ``waitpid(-1)``: a ``subprocess.Popen`` of the plugin would then
get ``ECHILD`` and report exit status 0.  So the process-creating functions of
the worker are wrapped to remember the pids they return (the plugin's *own*
children); a ``SIGCHLD`` handler peeks at the next zombie with ``waitid(...,
WNOWAIT)`` and reaps it only when it is not one of those.  Between calls the
handler interrupts the RPC ``recv`` (PEP 475 retries it), so orphans are reaped
while the worker is idle too.

The peek sees one zombie at a time, in the order they became children: while an
own child the plugin has not waited for yet is first in line, orphans behind it
wait for the next ``SIGCHLD`` or for :func:`reap_after_call`.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any, Final, final

__all__ = ["install", "own_children", "reap_after_call", "reap_orphans"]

_PEEK: Final = os.WEXITED | os.WNOHANG | os.WNOWAIT


@final
class _State:
    """The worker's own children and whether a fork is under way (one process, one state)."""

    own: set[int] = set()  # noqa: RUF012 - process-wide state, on purpose
    #: Forks under way: their pid is not known yet, so no zombie can be told apart.
    forking = 0
    #: A SIGCHLD came while forking: look again once the pid is recorded.
    missed = False
    installed = False
    #: A SIGCHLD came since the last :func:`reap_after_call` (it may have left a zombie).
    signalled = False


def own_children() -> frozenset[int]:
    """The pids this worker process started itself and has not seen reaped."""
    return frozenset(_State.own)


def reap_orphans() -> int:
    """Reap every visible zombie that is not an own child; return how many were reaped."""
    if _State.forking:
        _State.missed = True
        return 0
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, _PEEK)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in _State.own:
            return reaped  # nothing exited, or the next one is the plugin's to wait for
        with contextlib.suppress(ChildProcessError):  # another thread was quicker
            os.waitpid(info.si_pid, os.WNOHANG)
            reaped += 1


def reap_after_call() -> None:
    """Reap every exited child (own ones too) and forget own children that are gone.

    Runs at the end of each call, as the worker always did: a zombie the plugin
    did not wait for during its call does not outlive it.  With the handler
    installed (and still ours), no own child and no SIGCHLD since the last
    time, there is no child at all: the ``waitpid`` is skipped (the hot path).
    """
    if (
        _State.installed
        and not _State.own
        and not _State.signalled
        and signal.getsignal(signal.SIGCHLD) is _on_sigchld
    ):
        return
    _State.signalled = False
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        _State.own.discard(pid)
    for pid in list(_State.own):
        try:
            os.waitid(os.P_PID, pid, _PEEK)
        except ChildProcessError:  # reaped by the plugin (or by the loop above)
            _State.own.discard(pid)


def _on_sigchld(signum: int, frame: object) -> None:
    _State.signalled = True
    reap_orphans()


def _tracked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a process-creating function so that the pid it returns is recorded."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _State.forking += 1
        try:
            result = fn(*args, **kwargs)
            pid = result[0] if isinstance(result, tuple) else result
            if isinstance(pid, int) and pid > 0:
                _State.own.add(pid)
        finally:
            _State.forking -= 1
        if _State.missed and not _State.forking:
            _State.missed = False
            reap_orphans()
        return result

    wrapper.__name__ = getattr(fn, "__name__", "wrapper")
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Wrap ``os.fork``/``forkpty``/``posix_spawn[p]`` and ``fork_exec``; reap on SIGCHLD.

    Call once, in the worker's main thread, before plugin code runs (and before
    seccomp, which leaves ``rt_sigaction`` and ``waitid`` alone anyway).
    """
    if _State.installed:
        return
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        fn = getattr(os, name, None)
        if fn is not None:
            setattr(os, name, _tracked(fn))
    fork_exec = _tracked(_posixsubprocess.fork_exec)
    _posixsubprocess.fork_exec = fork_exec  # multiprocessing's spawn and forkserver
    if getattr(subprocess, "_fork_exec", None) is not None:
        subprocess._fork_exec = fork_exec  # type: ignore[attr-defined]
    signal.signal(signal.SIGCHLD, _on_sigchld)
    os.register_at_fork(after_in_child=_in_child)
    _State.installed = True


def _in_child() -> None:
    """A process the plugin forked is no init: it keeps its children's statuses to itself."""
    _State.own.clear()
    _State.missed = False
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
