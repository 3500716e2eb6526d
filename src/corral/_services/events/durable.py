"""The durable event log: SQLite in the home, offsets, retention, replay, consumer offsets.

One file, ``<home>/events.db`` (WAL, ``synchronous=FULL``), shared by every
process on the home.  Appends go through a group committer: publishers hand
their rows to one writer thread, which writes whatever has queued up in one
transaction and wakes them all when it is committed.  So each ``append``
returns only once its event is on disk, yet a commit (and its fsync) is
shared by every publisher that arrived meanwhile.

Offsets come from an ``AUTOINCREMENT`` key: SQLite has a single writer, so an
offset seen committed is never followed by a smaller one, and a reader that
remembers the last offset it saw misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._errors import CorralError, UnavailableError, UsageError
from corral._model.permissions import pattern_matches
from corral._runtime.budgets import MIB, over_budget

if TYPE_CHECKING:
    from corral._runtime.budgets import Budgets

__all__ = ["DurableLog", "LogRecord"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    "offset" INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    source TEXT,
    origin TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    priority INTEGER NOT NULL,
    propagation TEXT NOT NULL,
    durable INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, "offset");
CREATE INDEX IF NOT EXISTS events_by_source ON events (source);
CREATE TABLE IF NOT EXISTS durable_topics (
    pattern TEXT PRIMARY KEY,
    max_count INTEGER,
    max_age REAL
);
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY,
    "offset" INTEGER NOT NULL,
    updated_at REAL NOT NULL
)
"""

_INSERT: Final = (
    'INSERT INTO events (topic, data, source, origin, event_id, timestamp, priority, '
    'propagation, durable) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)'
)
_COLUMNS: Final = (
    '"offset", topic, data, source, origin, event_id, timestamp, priority, propagation, durable'
)
_RETENTION_EVERY: Final = 2.0
#: How long the writer may wait for stragglers to join a commit.
_GATHER_SECONDS: Final = 0.0005

_encode = msgspec.json.encode
_decode = msgspec.json.decode


@final
class LogRecord(msgspec.Struct, frozen=True, gc=False):
    """One event as stored in the log."""

    offset: int
    topic: str
    data: Any
    source: str | None
    origin: str
    event_id: int
    timestamp: float
    priority: int
    propagation: str
    durable: bool


@final
class _Batch:
    """Rows waiting for one commit, and the publishers waiting on it."""

    __slots__ = ("done", "error", "first", "rows", "waiters")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        # async publishers: (their loop, their future, their row's index)
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int], int]] = []
        self.done = threading.Event()
        self.first = 0
        self.error: BaseException | None = None


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


@final
class DurableLog:
    """Append-only event log with offsets, retention, replay and committed consumer offsets.

    :param path: the database file (``<home>/events.db``).
    :param synchronous: SQLite ``synchronous`` level; ``FULL`` (the default)
        fsyncs every commit, so an appended event survives a power cut.
    :param global_max_age: seconds to keep events that are only in the log
        for ``global`` propagation (not on a durable topic).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        global_max_age: float = 600.0,
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise UsageError(f"unknown synchronous level {synchronous!r}")
        self.path: Final = Path(path)
        self._sync = synchronous.upper()
        self.global_max_age = global_max_age
        conn = _connect(self.path, self._sync)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._conn = conn  # used by the writer thread only
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._closing = False
        self._closed = False
        self._last_retention = time.monotonic()
        self._last_batch = 0
        self.commits = 0
        #: The active plugins' ``events-mb``, set by the host; bytes each source holds here.
        self.budgets: Budgets | None = None
        self._held: dict[str, int] = {}
        self._held_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="corral-log-writer",
                                        daemon=True)
        self._writer.start()

    # -- connections -------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise UsageError("the durable log is closed")
            # readers write only consumer offsets and declarations: NORMAL is
            # durable against a crashed process, which is what offsets need
            conn = _connect(self.path, "NORMAL")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Commit what is queued, stop the writer and close every connection."""
        if self._closed:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join(timeout=30)
        self._closed = True
        self._conn.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- appending -----------------------------------------------------------------

    def append(
        self,
        topic: str,
        data: Any,
        *,
        source: str | None = None,
        origin: str = "",
        event_id: int = 0,
        timestamp: float | None = None,
        priority: int = 0,
        propagation: str = "local",
        durable: bool = True,
    ) -> int:
        """Append one event; return its offset once it is committed to disk."""
        row = _row(topic, data, source, origin, event_id, timestamp, priority, propagation,
                   durable)
        self._charge(source, len(row[1]))
        with self._cond:
            if self._closing:
                raise UsageError("the durable log is closed")
            batch = self._batch
            index = len(batch.rows)
            batch.rows.append(row)
            if index == 0:
                self._cond.notify()
        batch.done.wait()
        if batch.error is not None:
            raise self._write_error(topic, batch.error) from batch.error
        return batch.first + index

    async def aappend(
        self,
        topic: str,
        data: Any,
        *,
        source: str | None = None,
        origin: str = "",
        event_id: int = 0,
        timestamp: float | None = None,
        priority: int = 0,
        propagation: str = "local",
        durable: bool = True,
    ) -> int:
        """Async twin of :meth:`append`: no thread per publisher, the commit wakes the loop."""
        row = _row(topic, data, source, origin, event_id, timestamp, priority, propagation,
                   durable)
        self._charge(source, len(row[1]))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        with self._cond:
            if self._closing:
                raise UsageError("the durable log is closed")
            batch = self._batch
            index = len(batch.rows)
            batch.rows.append(row)
            batch.waiters.append((loop, fut, index))
            if index == 0:
                self._cond.notify()
        try:
            return await fut
        except Exception as exc:
            raise self._write_error(topic, exc) from exc

    def _charge(self, source: str | None, n: int) -> None:
        """Refuse an event that would take plugin ``source`` past its ``events-mb``.

        The count is kept in memory and taken again from the log (after retention)
        whenever it would refuse, so events that expired give their room back.
        """
        limits = self.budgets.get(source) if self.budgets is not None else None
        if limits is None or source is None:
            return
        cap = limits.events_mb * MIB
        with self._held_lock:
            held = self._held.get(source)
            if held is None or held + n > cap:
                held = self.usage(source)
            if held + n > cap:
                self._held[source] = held
                raise over_budget(source, "events-mb", "the durable log", held, cap)
            self._held[source] = held + n

    def usage(self, source: str) -> int:
        """Bytes of event data from plugin ``source`` kept in the log."""
        (n,) = self._reader().execute(
            "SELECT coalesce(sum(length(data)), 0) FROM events WHERE source = ?", (source,)
        ).fetchone()
        return int(n)

    def _write_error(self, topic: str, exc: BaseException) -> CorralError:
        return UnavailableError(f"could not write the event on {topic!r} to {self.path}: {exc}",
                                topic=topic)

    def _write_loop(self) -> None:
        conn = self._conn
        while True:
            with self._cond:
                while not self._batch.rows and not self._closing:
                    self._cond.wait(_RETENTION_EVERY)
                    if not self._batch.rows and not self._closing:
                        break
                # Group commit: when fewer publishers are back than last time, give
                # the rest a moment to join this commit rather than pay for another.
                waiting = len(self._batch.rows)
                if 0 < waiting < self._last_batch // 2 and not self._closing:
                    self._cond.wait(_GATHER_SECONDS)
                batch = self._batch
                self._last_batch = len(batch.rows)
                self._batch = _Batch()
                closing = self._closing
            if batch.rows:
                self._commit(conn, batch)
            if time.monotonic() - self._last_retention > _RETENTION_EVERY:
                self._last_retention = time.monotonic()
                with contextlib.suppress(sqlite3.Error):  # retried next round
                    self._retain(conn)
            if closing and not self._batch.rows:
                return

    def _commit(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, batch.rows)
                last = conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
                ).fetchone()[0]
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            batch.first = int(last) - len(batch.rows) + 1
            self.commits += 1
        except Exception as exc:
            batch.error = exc
        batch.done.set()
        if batch.waiters:
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int]]] = {}
            for loop, fut, index in batch.waiters:
                by_loop.setdefault(loop, []).append((fut, index))
            for loop, futs in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(_settle, futs, batch.first, batch.error)

    # -- reading -------------------------------------------------------------------

    def last_offset(self) -> int:
        """The offset of the newest event ever appended (0 for an empty log)."""
        row = self._reader().execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
        ).fetchone()
        return int(row[0]) if row else 0

    def first_offset(self) -> int:
        """The offset of the oldest event still kept (0 when empty)."""
        row = self._reader().execute('SELECT min("offset") FROM events').fetchone()
        return int(row[0] or 0)

    def read(
        self,
        after: int,
        *,
        pattern: str | None = None,
        limit: int = 1000,
        durable_only: bool = False,
        global_only: bool = False,
    ) -> list[LogRecord]:
        """Events with offsets above ``after``, oldest first (replay from an offset)."""
        return self.scan(after, pattern=pattern, limit=limit, durable_only=durable_only,
                         global_only=global_only)[0]

    def scan(
        self,
        after: int,
        *,
        pattern: str | None = None,
        limit: int = 1000,
        durable_only: bool = False,
        global_only: bool = False,
    ) -> tuple[list[LogRecord], int]:
        """Like :meth:`read`, plus the highest offset looked at (resume scanning after it)."""
        where = ['"offset" > ?']
        params: list[Any] = [after]
        if durable_only:
            where.append("durable = 1")
        if global_only:
            where.append("propagation = 'global'")
        if pattern is not None:
            prefix = _literal_prefix(pattern)
            if prefix:
                where.append("substr(topic, 1, ?) = ?")
                params += [len(prefix), prefix]
        params.append(limit)
        rows = self._reader().execute(
            f'SELECT {_COLUMNS} FROM events WHERE {" AND ".join(where)} '  # noqa: S608
            'ORDER BY "offset" LIMIT ?',
            params,
        ).fetchall()
        out = []
        for r in rows:
            if pattern is not None and not pattern_matches(pattern, r[1]):
                continue
            out.append(LogRecord(r[0], r[1], _decode(r[2]), r[3], r[4], r[5], r[6], r[7], r[8],
                                 bool(r[9])))
        return out, (rows[-1][0] if rows else after)

    # -- durable topics and retention ----------------------------------------------------

    def declare(
        self, pattern: str, *, max_count: int | None = None, max_age: float | None = None
    ) -> None:
        """Make topics matching ``pattern`` durable, keeping at most ``max_count`` events
        per topic and none older than ``max_age`` seconds (``None``: no limit)."""
        if max_count is not None and (type(max_count) is not int or max_count < 1):
            raise UsageError(f"max_count must be a positive int, got {max_count!r}")
        if max_age is not None and not (isinstance(max_age, int | float) and max_age > 0):
            raise UsageError(f"max_age must be a positive number of seconds, got {max_age!r}")
        conn = self._reader()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO durable_topics (pattern, max_count, max_age) VALUES (?, ?, ?) "
            "ON CONFLICT (pattern) DO UPDATE SET max_count = excluded.max_count, "
            "max_age = excluded.max_age",
            (pattern, max_count, max_age),
        )
        conn.execute("COMMIT")

    def durable_patterns(self) -> list[str]:
        """Patterns of the durable topics declared on this home."""
        rows = self._reader().execute("SELECT pattern FROM durable_topics ORDER BY pattern")
        return [str(r[0]) for r in rows]

    def apply_retention(self) -> None:
        """Delete what the retention rules no longer keep (the writer does this every 2 s)."""
        self._retain(self._reader())

    def _retain(self, conn: sqlite3.Connection) -> None:
        rules = conn.execute("SELECT pattern, max_count, max_age FROM durable_topics").fetchall()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "DELETE FROM events WHERE durable = 0 AND timestamp < ?",
                (now - self.global_max_age,),
            )
            if any(r[1] is not None or r[2] is not None for r in rules):
                topics = [t for (t,) in conn.execute(
                    "SELECT DISTINCT topic FROM events WHERE durable = 1")]
                for pattern, max_count, max_age in rules:
                    for topic in topics:
                        if not pattern_matches(pattern, topic):
                            continue
                        if max_age is not None:
                            conn.execute(
                                "DELETE FROM events WHERE topic = ? AND timestamp < ?",
                                (topic, now - max_age),
                            )
                        if max_count is not None:
                            conn.execute(
                                'DELETE FROM events WHERE topic = ? AND "offset" <= ('
                                'SELECT "offset" FROM events WHERE topic = ? '
                                'ORDER BY "offset" DESC LIMIT 1 OFFSET ?)',
                                (topic, topic, max_count),
                            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- consumer offsets ------------------------------------------------------------------

    def commit(self, consumer: str, offset: int) -> None:
        """Record that ``consumer`` has handled everything up to ``offset``."""
        conn = self._reader()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            'INSERT INTO consumers (name, "offset", updated_at) VALUES (?, ?, ?) '
            'ON CONFLICT (name) DO UPDATE SET "offset" = excluded."offset", '
            "updated_at = excluded.updated_at",
            (consumer, offset, time.time()),
        )
        conn.execute("COMMIT")

    def committed(self, consumer: str) -> int:
        """The last offset ``consumer`` committed (0: it starts at the beginning)."""
        row = self._reader().execute(
            'SELECT "offset" FROM consumers WHERE name = ?', (consumer,)
        ).fetchone()
        return int(row[0]) if row else 0

    def consumers(self) -> dict[str, int]:
        """Every consumer and its committed offset."""
        rows = self._reader().execute('SELECT name, "offset" FROM consumers ORDER BY name')
        return {str(r[0]): int(r[1]) for r in rows}


def _row(
    topic: str,
    data: Any,
    source: str | None,
    origin: str,
    event_id: int,
    timestamp: float | None,
    priority: int,
    propagation: str,
    durable: bool,
) -> tuple[Any, ...]:
    try:
        blob = _encode(data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"payload for {topic!r} is not JSON data: {exc}", topic=topic) from None
    return (topic, blob, source, origin, event_id,
            time.time() if timestamp is None else timestamp, priority, propagation,
            1 if durable else 0)


def _settle(
    futs: list[tuple[asyncio.Future[int], int]], first: int, error: BaseException | None
) -> None:
    for fut, index in futs:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(first + index)


def _literal_prefix(pattern: str) -> str:
    """The part of ``pattern`` before its first wildcard, with the trailing dot."""
    out: list[str] = []
    for part in pattern.split("."):
        if part in ("*", ">"):
            return ".".join(out) + "." if out else ""
        out.append(part)
    return pattern
