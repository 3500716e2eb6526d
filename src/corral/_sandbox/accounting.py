"""One worker's account: its cgroup readings (or rusage) turned into usage rows.

The supervisor keeps one per worker.  A call only counts itself (and adds the
worker's own rusage figures, the fallback); the kernel's counters are read when
the host samples (at a bounded rate) and once more before the worker is reaped,
so the call path pays nothing for exact accounting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Final, final

from corral._runtime.usage import UsageRow
from corral._sandbox.meter import Reading, WorkerMeter

__all__ = ["WorkerAccount"]

_MIB: Final = 1024 * 1024


@final
class WorkerAccount:
    """What one worker has cost, and what of it has already been reported.

    :param cgroups: the worker's cgroups by controller (empty: rusage only, approximate).
    """

    __slots__ = (
        "_last", "_lock", "_rusage_ms", "_rusage_peak_kb", "_since", "calls", "isolation",
        "limit_bytes", "meter", "plugin_id", "version",
    )

    def __init__(
        self, plugin_id: str, version: str, isolation: str, memory_mb: int,
        cgroups: Mapping[str, str],
    ) -> None:
        self.plugin_id: Final = plugin_id
        self.version: Final = version
        self.isolation: Final = isolation
        self.limit_bytes: Final = memory_mb * _MIB
        meter = WorkerMeter(cgroups) if cgroups else None
        if meter is not None and not meter.measures_cpu:
            meter.close()
            meter = None
        #: The kernel's counters, or ``None`` where the worker has no accounting cgroups.
        self.meter: Final = meter
        self._lock = threading.Lock()
        #: Calls finished since the last row.
        self.calls = 0
        self._rusage_ms = 0.0
        self._rusage_peak_kb = 0
        self._since = time.time()
        # The baseline: what the spare cost before it was this plugin's is not its.
        self._last: Reading = meter.read() if meter is not None else Reading()

    @property
    def exact(self) -> bool:
        """Whether its figures are the kernel's cgroup counters."""
        return self.meter is not None

    def cgroup_path(self, controller: str) -> str | None:
        """The worker's cgroup directory for ``controller`` (``unified`` on v2)."""
        if self.meter is None:
            return None
        cgroups = self.meter.cgroups
        return cgroups.get(controller) or cgroups.get("unified")

    def call_done(self, cpu_ms: float, peak_rss_kb: int) -> None:
        """Count one finished call, with the worker's own rusage figures for it."""
        with self._lock:
            self.calls += 1
            self._rusage_ms += cpu_ms
            self._rusage_peak_kb = max(self._rusage_peak_kb, peak_rss_kb)

    def cpu_ns(self) -> int | None:
        """The kernel's CPU time of the worker so far (``None`` without a cgroup)."""
        return self.meter.read().cpu_ns if self.meter is not None else None

    def sample(self, *, final: bool = False) -> UsageRow | None:
        """A row for what the worker did since the last one (``None`` if nothing); the
        meter is closed after a ``final`` one.
        """
        with self._lock:
            now = time.time()
            calls, self.calls = self.calls, 0
            seconds = now - self._since
            if self.meter is None:
                cpu_ms, self._rusage_ms = self._rusage_ms, 0.0
                if not calls and not cpu_ms:
                    return None
                self._since = now
                return UsageRow(
                    self.plugin_id, self.version, self.isolation, "rusage", True, now,
                    seconds, calls, cpu_ms=cpu_ms,
                    mem_peak_bytes=self._rusage_peak_kb * 1024 or None,
                    mem_limit_bytes=self.limit_bytes,
                )
            new = self.meter.read()
            if final:
                self.meter.close()
            old, self._last = self._last, new
            cpu = _delta(new.cpu_ns, old.cpu_ns)
            io_read = _delta(new.io_read, old.io_read)
            io_write = _delta(new.io_write, old.io_write)
            if not calls and not cpu and not io_read and not io_write and not final:
                return None
            self._since = now
            return UsageRow(
                self.plugin_id, self.version, self.isolation,
                f"cgroup-v{self.meter.version}", False, now, seconds, calls,
                cpu_ms=cpu / 1e6 if cpu is not None else None,
                mem_current_bytes=new.mem_current,
                mem_peak_bytes=new.mem_peak,
                mem_limit_bytes=new.mem_limit or self.limit_bytes,
                io_read_bytes=io_read,
                io_write_bytes=io_write,
                processes=0 if final else new.processes,
                oom_kills=_delta(new.oom_kills, old.oom_kills),
                psi_cpu=new.psi_cpu,
                psi_memory=new.psi_memory,
                psi_io=new.psi_io,
            )


def _delta(new: int | None, old: int | None) -> int | None:
    if new is None:
        return None
    return max(0, new - (old or 0))
