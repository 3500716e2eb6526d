"""Reading one worker's cgroup counters: CPU, memory, I/O, processes, OOM kills, pressure.

The host opens a worker's counter files once, when it starts, and reads them with
``pread`` (a cgroup file is regenerated at offset 0), so a sample costs a few
system calls and no path lookups.  Every figure is the kernel's own: exact, not
estimated.  v1 files and v2 files are read alike; what a kernel lacks is ``None``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, final

__all__ = ["Reading", "WorkerMeter"]

_CHUNK: Final = 8192
#: v1's "no limit" is the largest page-aligned long; anything this large means none.
_UNLIMITED: Final = 1 << 60


@final
@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of a worker's cgroup counters (cumulative ones since it started)."""

    #: CPU time, user and system, in nanoseconds (cumulative).
    cpu_ns: int | None = None
    mem_current: int | None = None
    #: The highest memory use since the worker started.
    mem_peak: int | None = None
    #: The cgroup's own memory limit, if it has one.
    mem_limit: int | None = None
    #: Bytes read and written on block devices (cumulative).
    io_read: int | None = None
    io_write: int | None = None
    #: Processes and threads in the worker's cgroup now.
    processes: int | None = None
    #: Times the kernel's OOM killer killed in it (cumulative).
    oom_kills: int | None = None
    #: PSI ``some avg10`` (percent) for cpu, memory and io; v2 only.
    psi_cpu: float | None = None
    psi_memory: float | None = None
    psi_io: float | None = None


def _int(text: str) -> int | None:
    try:
        return int(text.split(maxsplit=1)[0])
    except (ValueError, IndexError):
        return None


def _keyed(text: str, key: str) -> int | None:
    """The value of ``key N`` in a flat-keyed cgroup file."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _int(value)
    return None


def _io_v1(text: str) -> tuple[int, int]:
    """Read and write bytes from ``blkio.throttle.io_service_bytes``."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            write += int(parts[2])
    return read, write


def _io_v2(text: str) -> tuple[int, int]:
    """Read and write bytes from ``io.stat``."""
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def _psi(text: str) -> float | None:
    """``some avg10`` of a ``*.pressure`` file."""
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


#: (what, v1 controller, v1 file, v2 file): every file a meter opens.
_FILES: Final = (
    ("cpu", "cpuacct", "cpuacct.usage", "cpu.stat"),
    ("mem_current", "memory", "memory.usage_in_bytes", "memory.current"),
    ("mem_peak", "memory", "memory.max_usage_in_bytes", "memory.peak"),
    ("mem_limit", "memory", "memory.limit_in_bytes", "memory.max"),
    ("oom", "memory", "memory.oom_control", "memory.events"),
    ("io", "blkio", "blkio.throttle.io_service_bytes", "io.stat"),
    ("pids", "pids", "pids.current", "pids.current"),
    ("psi_cpu", "", "", "cpu.pressure"),
    ("psi_memory", "", "", "memory.pressure"),
    ("psi_io", "", "", "io.pressure"),
)


@final
class WorkerMeter:
    """The open counter files of one worker's cgroups; :meth:`read` samples them.

    :param cgroups: ``{controller: path}`` as the fork server made them (``unified``
        for a v2 cgroup).
    """

    __slots__ = ("_fds", "_lock", "cgroups", "version")

    def __init__(self, cgroups: Mapping[str, str]) -> None:
        self.cgroups: Final = dict(cgroups)
        self.version: Final = 2 if "unified" in cgroups else 1
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        for what, controller, v1_file, v2_file in _FILES:
            if self.version == 2:
                where, name = cgroups["unified"], v2_file
            else:
                where, name = cgroups.get(controller, ""), v1_file
            if not where or not name:
                continue
            with contextlib.suppress(OSError):
                self._fds[what] = os.open(os.path.join(where, name), os.O_RDONLY | os.O_CLOEXEC)

    @property
    def measures_cpu(self) -> bool:
        """Whether the kernel counts this worker's CPU time (else rusage stands in)."""
        return "cpu" in self._fds

    @property
    def measures_memory(self) -> bool:
        return "mem_peak" in self._fds or "mem_current" in self._fds

    def _text(self, what: str) -> str | None:
        fd = self._fds.get(what)
        if fd is None:
            return None
        try:
            return os.pread(fd, _CHUNK, 0).decode("ascii", "replace")
        except OSError:
            return None

    def read(self) -> Reading:
        """Sample every counter now (a closed meter reads all ``None``)."""
        with self._lock:
            t = self._text
            cpu_text = t("cpu")
            cpu: int | None = None
            if cpu_text is not None:
                if self.version == 2:
                    usec = _keyed(cpu_text, "usage_usec")
                    cpu = usec * 1000 if usec is not None else None
                else:
                    cpu = _int(cpu_text)
            limit_text = t("mem_limit")
            limit: int | None = None
            if limit_text is not None and not limit_text.startswith("max"):
                limit = _int(limit_text)
                if limit is not None and limit >= _UNLIMITED:
                    limit = None
            oom_text = t("oom")
            io_text = t("io")
            io: tuple[int | None, int | None] = (None, None)
            if io_text is not None:
                io = _io_v2(io_text) if self.version == 2 else _io_v1(io_text)
            psi = [t(f"psi_{k}") for k in ("cpu", "memory", "io")]
            mem_current, mem_peak, pids = t("mem_current"), t("mem_peak"), t("pids")
        return Reading(
            cpu_ns=cpu,
            mem_current=_int(mem_current) if mem_current is not None else None,
            mem_peak=_int(mem_peak) if mem_peak is not None else None,
            mem_limit=limit,
            io_read=io[0],
            io_write=io[1],
            processes=_int(pids) if pids is not None else None,
            oom_kills=_keyed(oom_text, "oom_kill") if oom_text is not None else None,
            psi_cpu=_psi(psi[0]) if psi[0] is not None else None,
            psi_memory=_psi(psi[1]) if psi[1] is not None else None,
            psi_io=_psi(psi[2]) if psi[2] is not None else None,
        )

    def close(self) -> None:
        """Close the counter files (the cgroups themselves are the fork server's)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
