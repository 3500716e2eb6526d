"""Call metrics and usage held in memory and written to the host database in one transaction
per flush.

A call only appends a tuple to a bounded deque; the database sees them at the next flush,
which a background thread runs at a bounded rate (:data:`FLUSH_SECONDS`), so that
``corral top`` in another process sees this host's calls within about a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Final, final

from corral._runtime.database import HostDatabase
from corral._runtime.usage import InProcessSampler, UsageRow

__all__ = ["FLUSH_SECONDS", "ROWS_PER_FLUSH", "CallMetrics", "weighted"]

METRICS_MAX: Final = 100_000
#: Call rows one flush writes at most; beyond, a spread sample whose rows carry the number
#: of calls each stands for (``weight``), so counts stay exact and the writes bounded.
ROWS_PER_FLUSH: Final = 1000
#: How often the background flush writes what was recorded (and samples usage).
FLUSH_SECONDS: Final = 1.0

_log: Final = logging.getLogger("corral.metrics")


@final
class CallMetrics:
    """The finished calls not yet written: in-process ones (timings) and sandboxed ones (rows),
    and where usage samples come from.
    """

    __slots__ = ("_flusher", "_lock", "_stop", "db", "imports", "in_process", "profiles",
                 "sampler", "sandboxed", "usage_sources")

    def __init__(self, db: HostDatabase) -> None:
        self.db = db
        #: ``((plugin id, export), start ns, end ns, outcome)``, appended by ``Host.call``.
        self.in_process: deque[tuple[Any, ...]] = deque(maxlen=METRICS_MAX)
        #: Whole database rows, appended by the sandboxed call path.
        self.sandboxed: deque[tuple[Any, ...]] = deque(maxlen=METRICS_MAX)
        #: Called at each flush for usage rows (the supervisor's cgroup samples).
        self.usage_sources: list[Callable[[], list[UsageRow]]] = []
        #: Measures in-process calls while monitoring is on (``Host.set_monitoring``).
        self.sampler: InProcessSampler | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        #: ``call_profile`` and ``import_profile`` rows (what ``corral suggest`` reads).
        self.profiles: deque[tuple[Any, ...]] = deque(maxlen=METRICS_MAX)
        self.imports: deque[tuple[Any, ...]] = deque(maxlen=METRICS_MAX)

    def record(self, row: tuple[Any, ...], profile: tuple[Any, ...] | None = None,
               imports: list[tuple[Any, ...]] | None = None) -> None:
        """Record one finished sandboxed call's metrics (and its ``call_profile`` row and the
        import times its worker measured); written with the next flush."""
        self.sandboxed.append(row)
        if profile is not None:
            self.profiles.append(profile)
        if imports:
            self.imports.extend(imports)

    def flush(self) -> None:
        """Write the calls' metrics and the usage sampled so far, in one transaction each."""
        with self._lock:
            usage: list[UsageRow] = []
            for source in list(self.usage_sources):
                usage.extend(source())
            if self.sampler is not None:
                usage.extend(self.sampler.take(time.time()))
            self.db.record_usage(usage)
            if self.profiles or self.imports:
                profiles = [self.profiles.popleft() for _ in range(len(self.profiles))]
                imports = [self.imports.popleft() for _ in range(len(self.imports))]
                self.db.record_profiles(profiles, imports)
            if not self.in_process and not self.sandboxed:
                return
            sandboxed = [self.sandboxed.popleft() for _ in range(len(self.sandboxed))]
            calls = [self.in_process.popleft() for _ in range(len(self.in_process))]
            now = time.time()
            rows = [(*r, w) for r, w in weighted(sandboxed, ROWS_PER_FLUSH // 2, (0, 1, 3))]
            for ((plugin_id, export), start, end, outcome), weight in weighted(
                calls, ROWS_PER_FLUSH // 2, (0, 3)
            ):
                rows.append((plugin_id, export, "none", outcome, (end - start) / 1e6, None, None,
                             None, None, now, weight))
            self.db.record_weighted_calls(rows)

    def start(self, seconds: float = FLUSH_SECONDS) -> None:
        """Flush every ``seconds`` in a background thread until :meth:`stop`."""
        if self._flusher is not None or seconds <= 0:
            return
        self._flusher = threading.Thread(
            target=self._run, args=(seconds,), name="corral-metrics", daemon=True
        )
        self._flusher.start()

    def _run(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.flush()
            except Exception as exc:  # the database is busy or closed: try again later
                _log.debug("metrics flush failed: %s", exc)

    def stop(self) -> None:
        """Stop the background flush (the caller flushes once more)."""
        self._stop.set()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.join()


def weighted(
    rows: list[tuple[Any, ...]], limit: int, group: tuple[int, ...]
) -> list[tuple[Any, ...]]:
    """``rows`` paired with a weight of 1 each, or, when there are more than ``limit``, every
    k-th row of each group (the fields at ``group``) paired with the rows it stands for.
    """
    if len(rows) <= limit:
        return [(r, 1) for r in rows]
    step = -(-len(rows) // limit)
    key = itemgetter(*group)
    groups: dict[Any, list[tuple[Any, ...]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out: list[tuple[Any, ...]] = []
    for members in groups.values():
        out.extend((members[i], len(members[i : i + step]))
                   for i in range(0, len(members), step))
    return out
