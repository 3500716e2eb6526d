"""Call metrics held in memory and written to the host database in one transaction per flush.

A call only appends a tuple to a bounded deque; the database sees them at the next flush.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Final, final

from corral._runtime.database import HostDatabase

__all__ = ["CallMetrics"]

METRICS_MAX: Final = 100_000


@final
class CallMetrics:
    """The finished calls not yet written: in-process ones (timings) and sandboxed ones (rows)."""

    __slots__ = ("db", "imports", "in_process", "profiles", "sandboxed")

    def __init__(self, db: HostDatabase) -> None:
        self.db = db
        #: ``((plugin id, export), start ns, end ns, outcome)``, appended by ``Host.call``.
        self.in_process: deque[tuple[Any, ...]] = deque(maxlen=METRICS_MAX)
        #: Whole database rows, appended by the sandboxed call path.
        self.sandboxed: deque[tuple[Any, ...]] = deque(maxlen=METRICS_MAX)
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
        """Write the calls' metrics recorded so far to the host database, in one transaction."""
        if self.profiles or self.imports:
            profiles = [self.profiles.popleft() for _ in range(len(self.profiles))]
            imports = [self.imports.popleft() for _ in range(len(self.imports))]
            self.db.record_profiles(profiles, imports)
        if not self.in_process and not self.sandboxed:
            return
        rows = []
        while self.sandboxed:
            rows.append(self.sandboxed.popleft())
        now = time.time()
        while self.in_process:
            (plugin_id, export), start, end, outcome = self.in_process.popleft()
            rows.append(
                (plugin_id, export, "none", outcome, (end - start) / 1e6, None, None, None, None,
                 now)
            )
        self.db.record_calls(rows)
