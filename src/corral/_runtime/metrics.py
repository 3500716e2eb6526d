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
from typing import Any, Final, final

from corral._runtime.database import HostDatabase
from corral._runtime.usage import InProcessSampler, UsageRow

__all__ = ["FLUSH_SECONDS", "CallMetrics"]

METRICS_MAX: Final = 100_000
#: How often the background flush writes what was recorded (and samples usage).
FLUSH_SECONDS: Final = 1.0

_log: Final = logging.getLogger("corral.metrics")


@final
class CallMetrics:
    """The finished calls not yet written: in-process ones (timings) and sandboxed ones (rows),
    and where usage samples come from.
    """

    __slots__ = ("_flusher", "_lock", "_stop", "db", "in_process", "sampler", "sandboxed",
                 "usage_sources")

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

    def record(self, row: tuple[Any, ...]) -> None:
        """Record one finished sandboxed call's metrics; written with the next flush."""
        self.sandboxed.append(row)

    def flush(self) -> None:
        """Write the calls' metrics and the usage sampled so far, in one transaction each."""
        with self._lock:
            usage: list[UsageRow] = []
            for source in list(self.usage_sources):
                usage.extend(source())
            if self.sampler is not None:
                usage.extend(self.sampler.take(time.time()))
            self.db.record_usage(usage)
            if not self.in_process and not self.sandboxed:
                return
            rows = []
            while self.sandboxed:
                rows.append(self.sandboxed.popleft())
            now = time.time()
            while self.in_process:
                (plugin_id, export), start, end, outcome = self.in_process.popleft()
                rows.append(
                    (plugin_id, export, "none", outcome, (end - start) / 1e6, None, None, None,
                     None, now)
                )
            self.db.record_calls(rows)

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
