"""Confinement of a worker to one plugin, between fork and the serve loop.

Rlimits, environment, descriptors and cwd; then, for ``strict``, its writable
directories mounted ``noexec``, Landlock, no capabilities and two seccomp layers.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Final

from corral._runtime.loader import source_only
from corral._sandbox import namespaces as _namespaces
from corral._sandbox import reaper as _reaper
from corral._sandbox.blame import install as install_blame
from corral._sandbox.rpc import WorkerInit
from corral._sandbox.worker.channel import RPC_FD
from corral._sandbox.worker.serve import on_sigxcpu

__all__ = ["confine"]

#: Built once in the fork server (which imports this module); applied in each strict worker.
_SOCKET_FILTER: Final = _namespaces.build_socket_filter()


def _apply_rlimits(init: WorkerInit) -> None:
    from corral._sandbox.rlimits import apply_rlimits

    apply_rlimits(init.memory_mb, init.cpu_budget_seconds, init.max_processes, init.disk_mb)


def confine(init: WorkerInit, ruleset_fd: int | None, seccomp_prog: bytes | None) -> None:
    """Everything between fork and the RPC loop, in an order where each step still can."""
    strict = init.isolation == "strict"
    # Environment: exactly the granted variables, nothing of the host's.
    os.environ.clear()
    os.environ.update(init.env)
    os.chdir(init.tmp_dir)
    tempfile.tempdir = init.tmp_dir
    sys.path[:] = [init.plugin_dir, *(p for p in sys.path if p and p != init.plugin_dir)]
    sys.dont_write_bytecode = True
    source_only(init.plugin_dir)  # the plugin's own byte code never runs
    signal.signal(signal.SIGXCPU, on_sigxcpu)
    signal.signal(signal.SIGPROF, on_sigxcpu)
    install_blame(RPC_FD)  # a stuck call's stack reaches the host before it is killed
    _apply_rlimits(init)
    _namespaces.set_no_new_privs()
    if strict:  # what it can write it cannot execute, by exec or by a loader's mmap
        for path in _writable_dirs(init):
            _namespaces.remount_noexec(path)
    if strict and ruleset_fd is None:
        raise OSError("no Landlock ruleset for a strict worker")
    if ruleset_fd is not None:  # strict: the grants; limited: scoping only (ABI 6+)
        from corral._sandbox.landlock import restrict_self

        restrict_self(ruleset_fd)
    # No inherited descriptors: 0-2 are /dev/null, 3 is the RPC socket, nothing else.
    _namespaces.close_fds_from(RPC_FD + 1)
    if not _namespaces.capabilities_dropped():
        _namespaces.drop_capabilities()
    if strict:  # PID 1 of its namespace: orphans come here, to be reaped promptly
        _reaper.install()
        from corral._sandbox.seccomp import install_filter

        if seccomp_prog is None:
            raise OSError("no seccomp filter for a strict worker")
        install_filter(seccomp_prog)
        if not _SOCKET_FILTER:
            raise OSError("no unix-socket seccomp layer for this machine")
        install_filter(_SOCKET_FILTER)
    elif seccomp_prog is not None:  # limited: only clone3, which could leave the pids cgroup
        from corral._sandbox.seccomp import install_filter

        install_filter(seccomp_prog)


#: System folders whose programs and shared libraries every worker runs.
_SYSTEM_CODE: Final = ("/usr", "/lib", "/lib64", "/bin", "/sbin")


def _runs_from(init: WorkerInit) -> list[str]:
    """Where the worker itself loads code: the interpreter, its libraries, the granted programs.

    The plugin's own folder is not among them: code the plugin could write must not run.
    """
    places = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),
              *_SYSTEM_CODE, *init.exec_paths,
              *(p for p in sys.path if p and p != init.plugin_dir)]
    return sorted({os.path.realpath(p) for p in places if os.path.exists(p)})


def _writable_dirs(init: WorkerInit) -> list[str]:
    """The directories a strict worker may write, outermost first, each once, to mount
    ``noexec``; none holding code the worker runs (the interpreter, its libraries, a
    granted program): Landlock alone keeps those from being executed as written."""
    paths = [init.tmp_dir, init.data_dir, init.cache_dir, init.workspace, *init.write_paths]
    dirs = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    runs = _runs_from(init)
    dirs = [d for d in dirs
            if not any(r == d or r.startswith(d.rstrip("/") + "/") for r in runs)]
    return [d for i, d in enumerate(dirs) if not any(
        d.startswith(outer.rstrip("/") + "/") for outer in dirs[:i])]


