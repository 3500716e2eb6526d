"""Resource limits of a worker, from the manifest's ``[sandbox]`` table.

Applied in the forked child before plugin code runs.  A limit is never set
above the current hard limit: that would fail, and the stricter value is what
the host already asked for.  The choices, limit by limit:

- ``memory-mb`` -> ``RLIMIT_AS``.  Address space, not resident memory: it is
  the limit that turns a Python allocation bomb into ``MemoryError`` instead
  of a kill by the OOM killer, and it needs no cgroup.  It also counts
  reservations that cost no memory: glibc reserves 64 MiB of address space
  for each per-thread malloc arena, so with the limit set malloc is told to
  use one arena (``mallopt(M_ARENA_MAX, 1)``).  Thread stacks (8 MiB each by
  default) and mapped libraries still count.
- ``cpu-seconds`` -> ``RLIMIT_CPU``, soft at the value (``SIGXCPU``) and hard
  one second later (``SIGKILL``).  It is cumulative over the worker's life;
  per-call CPU accounting is the supervisor's job.
- ``max-processes`` -> ``RLIMIT_NPROC``.  The kernel counts every process of
  the real uid in the user namespace (and its ancestors), and ignores the
  limit for the init namespace's root; a worker must not run as real root.
- ``disk-mb`` -> ``RLIMIT_FSIZE``: a per-file size cap (writes past it fail
  with ``EFBIG``, as Python ignores ``SIGXFSZ``); the quota on ``{data}`` as a
  whole is enforced elsewhere.
- Always: no core dumps, at most 256 open descriptors, and no locked memory,
  POSIX message queues or real-time priority.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import sys
from typing import Any, Final

from corral._errors import ResourceLimitExceeded, UnsupportedError

__all__ = ["MAX_OPEN_FILES", "apply_rlimits"]

_MIB: Final = 1024 * 1024
_M_ARENA_MAX: Final = -8
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
#: ``RLIMIT_NOFILE`` of every worker.
MAX_OPEN_FILES: Final = 256


def _set(which: int, name: str, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    try:
        resource.setrlimit(which, (soft, hard))
    except (OSError, ValueError) as exc:
        raise UnsupportedError(f"cannot set {name} to {soft}/{hard}: {exc}", limit=name) from exc


def _find_mallopt() -> Any:
    """glibc's ``mallopt``, or None under another C library (which has no arenas to tame)."""
    if sys.platform != "linux":
        return None
    return getattr(ctypes.CDLL(None), "mallopt", None)


# Looked up at import, in the fork server, so that no worker pays for it.
_MALLOPT: Final = _find_mallopt()


def _one_malloc_arena() -> None:
    """Keep glibc from reserving an arena per thread, which RLIMIT_AS would count."""
    if _MALLOPT is not None:
        _MALLOPT(_M_ARENA_MAX, 1)


def _address_space() -> int:
    """Current address space in bytes, or 0 when /proc cannot tell (only a diagnostic)."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            pages = int(os.read(fd, 128).split()[0])
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return 0
    return pages * _PAGE_SIZE


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def apply_rlimits(
    memory_mb: int | None,
    cpu_seconds: float | None,
    max_processes: int | None,
    disk_mb: int | None,
) -> None:
    """Limit the calling process (and its children) as the manifest asks.

    ``None`` leaves that limit as inherited.  Irreversible once the seccomp
    filter is on (it refuses any new limit); call it only in the worker.

    :raises ValueError: a limit that is zero or negative.
    :raises ResourceLimitExceeded: the process already uses more address space
        than ``memory_mb`` allows, so it could not even start.
    :raises CorralError: the kernel refused a limit.
    """
    for name, value in (
        ("memory-mb", memory_mb),
        ("cpu-seconds", cpu_seconds),
        ("max-processes", max_processes),
        ("disk-mb", disk_mb),
    ):
        _positive(name, value)
    if memory_mb is not None:
        limit = memory_mb * _MIB
        used = _address_space()
        if used >= limit:
            raise ResourceLimitExceeded(
                f"memory-mb = {memory_mb} is below the {used // _MIB} MiB of address "
                "space the worker uses before running any plugin code",
                limit="memory-mb",
                measured=used // _MIB,
            )
        _one_malloc_arena()
        _set(resource.RLIMIT_AS, "memory-mb", limit)
    if cpu_seconds is not None:
        seconds = math.ceil(cpu_seconds)
        _set(resource.RLIMIT_CPU, "cpu-seconds", seconds, seconds + 1)
    if max_processes is not None:
        _set(resource.RLIMIT_NPROC, "max-processes", max_processes)
    if disk_mb is not None:
        _set(resource.RLIMIT_FSIZE, "disk-mb", disk_mb * _MIB)
    _set(resource.RLIMIT_CORE, "core", 0)
    _set(resource.RLIMIT_NOFILE, "open-files", MAX_OPEN_FILES)
    _set(resource.RLIMIT_MEMLOCK, "memlock", 0)
    _set(resource.RLIMIT_MSGQUEUE, "msgqueue", 0)
    _set(resource.RLIMIT_RTPRIO, "rtprio", 0)
