"""Download counts, buffered in memory and written in batches off the request path.

The same batch adds to each plugin's downloads of the day (``daily_downloads``),
the series that community analytics chart.

A download is a read: counting it in the same request would take the database's
write lock (queueing every download behind a publish on SQLite) and would fail
outright on a full disk.  Instead each download adds one to an in-process
buffer; a background thread writes the buffer in one short transaction every
:data:`FLUSH_SECONDS`.  A batch that fails to commit (disk full, database
locked) is kept and retried; counts are only lost if the process dies first.
"""

from __future__ import annotations

import collections
import threading
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import _db

__all__ = ["FLUSH_SECONDS", "DownloadCounter", "add_daily"]

#: How often pending counts are written.
FLUSH_SECONDS: Final = 1.0


def add_daily(conn: Connection, per_plugin: collections.Counter[int], day: str) -> None:
    """Add a batch's downloads to each plugin's count of ``day`` (an upsert per plugin)."""
    if not per_plugin:
        return
    d = _db.daily_downloads
    rows = [{"plugin_pk": pk, "day": day, "count": n} for pk, n in sorted(per_plugin.items())]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(d)
        conn.execute(pg.on_conflict_do_update(
            index_elements=[d.c.plugin_pk, d.c.day], set_={"count": d.c.count + pg.excluded.count}),
            rows)
        return
    from sqlalchemy.dialects.sqlite import insert as lite_insert

    lite = lite_insert(d)
    conn.execute(lite.on_conflict_do_update(
        index_elements=[d.c.plugin_pk, d.c.day], set_={"count": d.c.count + lite.excluded.count}),
        rows)


class DownloadCounter:
    """Pending download counts per (plugin pk, version pk), flushed by a daemon thread."""

    def __init__(self, engine: Engine, interval: float = FLUSH_SECONDS) -> None:
        self._engine = engine
        self._interval = interval
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: collections.Counter[tuple[int, int]] = collections.Counter()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def add(self, plugin_pk: int, version_pk: int) -> None:
        """Count one download (no I/O)."""
        with self._lock:
            self._pending[(plugin_pk, version_pk)] += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="corral-download-counts", daemon=True
                )
                self._thread.start()

    def pending_plugin(self, plugin_pk: int) -> int:
        """Downloads of a plugin counted but not yet written."""
        with self._lock:
            return sum(n for (p, _), n in self._pending.items() if p == plugin_pk)

    def pending_version(self, version_pk: int) -> int:
        """Downloads of a version counted but not yet written."""
        with self._lock:
            return sum(n for (_, v), n in self._pending.items() if v == version_pk)

    def flush(self) -> bool:
        """Write pending counts now; return False (keeping them) if the write failed."""
        with self._flush_lock:
            with self._lock:
                batch = self._pending
                self._pending = collections.Counter()
            if not batch:
                return True
            per_plugin: collections.Counter[int] = collections.Counter()
            for (plugin_pk, _), n in batch.items():
                per_plugin[plugin_pk] += n
            v, p = _db.versions, _db.plugins
            try:
                with self._engine.connect() as raw:
                    conn = raw.execution_options(sqlite_begin="IMMEDIATE")
                    with conn.begin():
                        for (_, version_pk), n in sorted(batch.items()):
                            conn.execute(v.update().where(v.c.pk == version_pk)
                                         .values(downloads=v.c.downloads + n))
                        for plugin_pk, n in sorted(per_plugin.items()):
                            conn.execute(p.update().where(p.c.pk == plugin_pk)
                                         .values(downloads=p.c.downloads + n))
                        add_daily(conn, per_plugin, _db.utcnow().date().isoformat())
            except (sa.exc.SQLAlchemyError, OSError):
                with self._lock:
                    self._pending.update(batch)
                return False
            return True

    def close(self) -> None:
        """Stop the thread and write what is pending (best effort)."""
        self._stop = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self.flush()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._interval)
            if self._stop:
                return
            self.flush()
