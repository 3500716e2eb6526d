"""Per-plugin resource usage: the rows of the ``usage`` table and the in-process sampler.

A sandboxed worker's usage comes from its cgroups (exact, see ``_sandbox/accounting.py``)
or, where those cannot be made, from its rusage; an in-process plugin's from the
calling thread's CPU clock and ``tracemalloc``, sampled while monitoring is on.  The
last two are marked ``approximate`` wherever they appear.
"""

from __future__ import annotations

import itertools
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from typing import Any, Final, NamedTuple, final

__all__ = [
    "SAMPLE_EVERY",
    "SOURCES",
    "USAGE_COLUMNS",
    "InProcessSampler",
    "UsageRow",
]

#: Where a usage row's figures come from; all but the cgroup ones are approximate.
SOURCES: Final = ("cgroup-v1", "cgroup-v2", "rusage", "thread")


class UsageRow(NamedTuple):
    """One sample of one plugin's usage over ``seconds`` (the ``usage`` table's columns)."""

    plugin_id: str
    version: str
    isolation: str
    #: One of :data:`SOURCES`.
    source: str
    approximate: bool
    at: float
    #: The time this row covers, ending at ``at``.
    seconds: float
    #: Calls finished in it.
    calls: int
    cpu_ms: float | None = None
    mem_current_bytes: int | None = None
    #: The peak since the worker started (in-process: the highest traced during a call).
    mem_peak_bytes: int | None = None
    #: The plugin's memory limit (``memory-mb``), what top shows memory against.
    mem_limit_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    processes: int | None = None
    oom_kills: int | None = None
    psi_cpu: float | None = None
    psi_memory: float | None = None
    psi_io: float | None = None


USAGE_COLUMNS: Final = UsageRow._fields

#: One in how many in-process calls the sampler measures (a thread CPU clock read costs
#: about half a microsecond; measuring every call would cost more than the call).
SAMPLE_EVERY: Final = 64


@final
class InProcessSampler:
    """Wraps in-process exports while monitoring is on: every :data:`SAMPLE_EVERY`-th call
    is measured with the thread's CPU clock (and ``tracemalloc``'s peak when it traces);
    :meth:`take` turns what was measured into approximate usage rows.
    """

    __slots__ = ("_lock", "_pending", "every", "versions")

    def __init__(self, every: int = SAMPLE_EVERY) -> None:
        self.every = max(1, every)
        #: ``(plugin id, version, calls covered, cpu ns, traced peak or None)``
        self._pending: deque[tuple[str, str, int, int, int | None]] = deque(maxlen=100_000)
        self._lock = threading.Lock()
        self.versions: dict[str, str] = {}

    def wrap(
        self, plugin_id: str, version: str, fn: Callable[[Any, Any], Any]
    ) -> Callable[[Any, Any], Any]:
        """``fn`` measured one call in :attr:`every`; the others pass straight through."""
        every = self.every
        # False on the call to measure: the countdown is one C call, not bytecode.
        skip = itertools.cycle([True] * (every - 1) + [False]).__next__
        pending = self._pending
        thread_ns = time.thread_time_ns
        tracing = tracemalloc.is_tracing

        def measured(input: Any, ctx: Any) -> Any:
            if skip():
                return fn(input, ctx)
            traced = tracing()
            if traced:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
            start = thread_ns()
            try:
                return fn(input, ctx)
            finally:
                cpu = thread_ns() - start
                peak = tracemalloc.get_traced_memory()[1] - base if traced else None
                pending.append((plugin_id, version, every, cpu, peak))

        measured.__wrapped__ = fn  # type: ignore[attr-defined]
        return measured

    def take(self, now: float) -> list[UsageRow]:
        """The rows measured since the last take, one per plugin (CPU scaled to every call)."""
        with self._lock:  # popped one by one: a call may append meanwhile
            items = [self._pending.popleft() for _ in range(len(self._pending))]
        per: dict[tuple[str, str], list[Any]] = {}
        for plugin_id, version, calls, cpu_ns, peak in items:
            acc = per.setdefault((plugin_id, version), [0, 0, None])
            acc[0] += calls
            acc[1] += cpu_ns * calls
            if peak is not None:
                acc[2] = max(acc[2] or 0, peak)
        return [
            UsageRow(plugin_id, version, "none", "thread", True, now, 0.0, calls,
                     cpu_ms=cpu / 1e6, mem_peak_bytes=peak)
            for (plugin_id, version), (calls, cpu, peak) in per.items()
        ]
