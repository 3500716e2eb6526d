"""The host database: registered plugins, their durable states and call metrics.

SQLite in WAL mode with a busy timeout, so that several processes using the
same home see one consistent picture.  Every change is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NamedTuple, final

__all__ = ["CALL_PROFILE_COLUMNS", "HostDatabase", "PluginRow"]

SCHEMA_VERSION: Final = 3

#: Per-plugin resource usage samples (schema 3; see ``_runtime/usage.py``).
_USAGE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    plugin_id TEXT NOT NULL,
    version TEXT NOT NULL,
    isolation TEXT NOT NULL,
    source TEXT NOT NULL,
    approximate INTEGER NOT NULL,
    at REAL NOT NULL,
    seconds REAL NOT NULL,
    calls INTEGER NOT NULL,
    cpu_ms REAL,
    mem_current_bytes INTEGER,
    mem_peak_bytes INTEGER,
    mem_limit_bytes INTEGER,
    io_read_bytes INTEGER,
    io_write_bytes INTEGER,
    processes INTEGER,
    oom_kills INTEGER,
    psi_cpu REAL,
    psi_memory REAL,
    psi_io REAL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (at, plugin_id);
"""
_USAGE_INSERT: Final = (
    "INSERT INTO usage (plugin_id, version, isolation, source, approximate, at, seconds, "
    "calls, cpu_ms, mem_current_bytes, mem_peak_bytes, mem_limit_bytes, io_read_bytes, "
    "io_write_bytes, processes, oom_kills, psi_cpu, psi_memory, psi_io) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plugins (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    manifest TEXT NOT NULL,
    manifest_mtime_ns INTEGER NOT NULL,
    manifest_size INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL DEFAULT '',
    linked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    plugin_id TEXT NOT NULL,
    export TEXT NOT NULL,
    isolation TEXT NOT NULL,
    outcome TEXT NOT NULL,
    wall_ms REAL NOT NULL,
    cpu_user_ms REAL,
    cpu_system_ms REAL,
    peak_rss_kb INTEGER,
    result_bytes INTEGER,
    at REAL NOT NULL,
    weight INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS calls_by_plugin ON calls (plugin_id, at);
""" + _USAGE_SCHEMA

#: What ``corral suggest`` reads beyond ``calls``; added to an older database on open.
_MONITOR_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS call_profile (
    id INTEGER PRIMARY KEY,
    plugin_id TEXT NOT NULL,
    export TEXT NOT NULL,
    version TEXT NOT NULL,
    isolation TEXT NOT NULL,
    outcome TEXT NOT NULL,
    input_hash TEXT,
    broker_calls INTEGER NOT NULL,
    broker_ms REAL NOT NULL,
    wall_ms REAL NOT NULL,
    cpu_ms REAL,
    peak_rss_kb INTEGER,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS call_profile_by_plugin ON call_profile (plugin_id, at);
CREATE TABLE IF NOT EXISTS import_profile (
    id INTEGER PRIMARY KEY,
    plugin_id TEXT NOT NULL,
    version TEXT NOT NULL,
    module TEXT NOT NULL,
    self_ms REAL NOT NULL,
    total_ms REAL NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS import_profile_by_plugin ON import_profile (plugin_id, at);
"""
#: The columns of a ``call_profile`` row, in order (``id`` aside).
CALL_PROFILE_COLUMNS: Final = (
    "plugin_id", "export", "version", "isolation", "outcome", "input_hash", "broker_calls",
    "broker_ms", "wall_ms", "cpu_ms", "peak_rss_kb", "at",
)


class PluginRow(NamedTuple):
    """One row of ``plugins``: what the host remembers of a registered plugin."""

    id: str
    version: str
    path: str
    source: str
    state: str
    error: dict[str, Any] | None
    manifest: dict[str, Any]
    manifest_mtime_ns: int
    manifest_size: int
    registered_at: float
    updated_at: float
    #: Where it was registered from (the user's folder or archive); ``path`` may be a copy.
    origin: str = ""
    #: The content hash of its tree when registered (``tree_digest``); "" if not known.
    digest: str = ""
    #: Registered with ``--link``: it runs from ``origin`` itself, never copied.
    linked: bool = False


def _row(r: tuple[Any, ...]) -> PluginRow:
    return PluginRow(
        id=r[0],
        version=r[1],
        path=r[2],
        source=r[3],
        state=r[4],
        error=json.loads(r[5]) if r[5] else None,
        manifest=json.loads(r[6]),
        manifest_mtime_ns=r[7],
        manifest_size=r[8],
        registered_at=r[9],
        updated_at=r[10],
        origin=r[11] or r[2],
        digest=r[12],
        linked=bool(r[13]),
    )


_COLUMNS: Final = (
    "id, version, path, source, state, error, manifest, manifest_mtime_ns, "
    "manifest_size, registered_at, updated_at, origin, digest, linked"
)

#: Columns added after schema 1, with their definitions (added to an older database on open).
_ADDED: Final = (
    ("origin", "TEXT NOT NULL DEFAULT ''"),
    ("digest", "TEXT NOT NULL DEFAULT ''"),
    ("linked", "INTEGER NOT NULL DEFAULT 0"),
)


@final
class HostDatabase:
    """Access to ``<home>/corral.db``; one connection per host, safe across processes."""

    __slots__ = ("_conn", "_lock", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn
        # One connection serves every thread of the host: statements and
        # transactions take turns, or two threads would nest transactions.
        self._lock = threading.RLock()
        if not self._has_schema():
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                    (str(SCHEMA_VERSION),),
                )
        else:
            self._migrate()
            self._add_usage()
        self._add_monitor_tables()

    def _add_usage(self) -> None:
        """Add the ``usage`` table and ``calls.weight`` a schema-2 database lacks."""
        has_usage = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'"
        ).fetchone()
        call_columns = {r[1] for r in self._conn.execute("PRAGMA table_info(calls)")}
        if has_usage and "weight" in call_columns:
            return
        with self.transaction() as conn:
            for statement in _USAGE_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if "weight" not in {r[1] for r in conn.execute("PRAGMA table_info(calls)")}:
                conn.execute("ALTER TABLE calls ADD COLUMN weight INTEGER NOT NULL DEFAULT 1")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _add_monitor_tables(self) -> None:
        """Create ``call_profile`` and ``import_profile`` where they are missing."""
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'import_profile'"
        ).fetchone()
        if row is not None:
            return
        with self.transaction() as conn:
            for statement in _MONITOR_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def _migrate(self) -> None:
        """Add the columns a schema-1 database lacks (where each plugin came from)."""
        have = {r[1] for r in self._conn.execute("PRAGMA table_info(plugins)").fetchall()}
        missing = [(name, sql) for name, sql in _ADDED if name not in have]
        if not missing:
            return
        with self.transaction() as conn:
            have = {r[1] for r in conn.execute("PRAGMA table_info(plugins)").fetchall()}
            for name, sql in missing:
                if name not in have:  # another process may have just added it
                    conn.execute(f"ALTER TABLE plugins ADD COLUMN {name} {sql}")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _has_schema(self) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'calls'"
        ).fetchone()
        return row is not None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (``BEGIN IMMEDIATE``): writers queue, never fail."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def all(self) -> list[PluginRow]:
        """Every registered plugin, by id."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM plugins ORDER BY id"  # noqa: S608
            ).fetchall()
        return [_row(r) for r in rows]

    def get(self, plugin_id: str) -> PluginRow | None:
        """One registered plugin, or ``None``."""
        with self._lock:
            r = self._conn.execute(
                f"SELECT {_COLUMNS} FROM plugins WHERE id = ?",  # noqa: S608
                (plugin_id,),
            ).fetchone()
        return _row(r) if r else None

    def insert(self, conn: sqlite3.Connection, row: PluginRow) -> None:
        """Add a plugin inside ``transaction()``."""
        conn.execute(
            f"INSERT INTO plugins ({_COLUMNS}) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.version,
                row.path,
                row.source,
                row.state,
                json.dumps(row.error) if row.error else None,
                json.dumps(row.manifest, sort_keys=True),
                row.manifest_mtime_ns,
                row.manifest_size,
                row.registered_at,
                row.updated_at,
                row.origin or row.path,
                row.digest,
                int(row.linked),
            ),
        )

    def replace_code(self, conn: sqlite3.Connection, row: PluginRow) -> None:
        """Point a registered plugin at new code inside ``transaction()`` (an upgrade in place).

        Its state (``row.state``), registration time and call metrics stay.
        """
        conn.execute(
            "UPDATE plugins SET version = ?, path = ?, source = ?, state = ?, error = NULL, "
            "manifest = ?, manifest_mtime_ns = ?, manifest_size = ?, updated_at = ?, "
            "origin = ?, digest = ?, linked = ? WHERE id = ?",
            (
                row.version, row.path, row.source, row.state,
                json.dumps(row.manifest, sort_keys=True), row.manifest_mtime_ns,
                row.manifest_size, row.updated_at, row.origin or row.path, row.digest,
                int(row.linked), row.id,
            ),
        )

    def set_state(
        self, plugin_id: str, state: str, error: dict[str, Any] | None = None
    ) -> None:
        """Record a durable state (and the error that caused ``failed``)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE plugins SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (state, json.dumps(error) if error else None, time.time(), plugin_id),
            )

    def refresh_manifest(
        self, plugin_id: str, version: str, manifest: dict[str, Any], mtime_ns: int, size: int
    ) -> None:
        """Store a re-read manifest after its file changed on disk."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE plugins SET version = ?, manifest = ?, manifest_mtime_ns = ?, "
                "manifest_size = ?, updated_at = ? WHERE id = ?",
                (
                    version,
                    json.dumps(manifest, sort_keys=True),
                    mtime_ns,
                    size,
                    time.time(),
                    plugin_id,
                ),
            )

    def set_digest(self, plugin_id: str, digest: str) -> None:
        """Record the content hash of a linked plugin's files as they are now."""
        with self.transaction() as conn:
            conn.execute("UPDATE plugins SET digest = ? WHERE id = ?", (digest, plugin_id))

    def delete(self, conn: sqlite3.Connection, plugin_id: str) -> None:
        """Forget a plugin inside ``transaction()``."""
        conn.execute("DELETE FROM plugins WHERE id = ?", (plugin_id,))
        conn.execute("DELETE FROM calls WHERE plugin_id = ?", (plugin_id,))
        conn.execute("DELETE FROM usage WHERE plugin_id = ?", (plugin_id,))
        conn.execute("DELETE FROM call_profile WHERE plugin_id = ?", (plugin_id,))
        conn.execute("DELETE FROM import_profile WHERE plugin_id = ?", (plugin_id,))

    def get_meta(self, key: str) -> str | None:
        """A value from the ``meta`` table."""
        with self._lock:
            r = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a value in the ``meta`` table."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def record_calls(self, rows: list[tuple[Any, ...]]) -> None:
        """Append per-call metrics rows (see the ``calls`` table for the columns)."""
        if not rows:
            return
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO calls (plugin_id, export, isolation, outcome, wall_ms, cpu_user_ms, "
                "cpu_system_ms, peak_rss_kb, result_bytes, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def record_weighted_calls(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append per-call rows each standing for ``weight`` calls (their last column): a
        sample of a host's calls when there were more than it writes per flush.
        """
        if not rows:
            return
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO calls (plugin_id, export, isolation, outcome, wall_ms, cpu_user_ms, "
                "cpu_system_ms, peak_rss_kb, result_bytes, at, weight) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def record_usage(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append usage samples (``UsageRow`` tuples, the ``usage`` table's columns)."""
        if not rows:
            return
        with self.transaction() as conn:
            conn.executemany(_USAGE_INSERT, rows)

    def usage_since(self, since: float) -> list[tuple[Any, ...]]:
        """Usage samples taken at or after ``since``, oldest first (``UsageRow`` columns)."""
        with self._lock:
            return self._conn.execute(
                "SELECT plugin_id, version, isolation, source, approximate, at, seconds, calls, "
                "cpu_ms, mem_current_bytes, mem_peak_bytes, mem_limit_bytes, io_read_bytes, "
                "io_write_bytes, processes, oom_kills, psi_cpu, psi_memory, psi_io "
                "FROM usage WHERE at >= ? ORDER BY at",
                (since,),
            ).fetchall()

    def calls_since(self, since: float) -> list[tuple[str, str, float, float, int]]:
        """``(plugin id, outcome, wall ms, at, weight)`` of the calls recorded at or after
        ``since`` (a row stands for ``weight`` calls).
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT plugin_id, outcome, wall_ms, at, weight FROM calls WHERE at >= ? "
                "ORDER BY at",
                (since,),
            ).fetchall()
        return [(str(r[0]), str(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows]

    def call_histograms(
        self, bounds_ms: tuple[float, ...]
    ) -> list[tuple[str, str, int, float, list[int]]]:
        """Per plugin and outcome, over every recorded call: ``(plugin id, outcome, calls,
        wall ms summed, calls at or under each bound)``.
        """
        buckets = "".join(f", SUM((wall_ms <= {float(b)!r}) * weight)" for b in bounds_ms)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT plugin_id, outcome, SUM(weight), SUM(wall_ms * weight){buckets} "  # noqa: S608
                "FROM calls GROUP BY plugin_id, outcome ORDER BY plugin_id, outcome"
            ).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2]), float(r[3] or 0.0),
                 [int(x or 0) for x in r[4:]]) for r in rows]

    def usage_totals(self) -> list[tuple[str, bool, float, int, int, int, int]]:
        """Per plugin over every usage sample: ``(plugin id, approximate, CPU ms summed,
        highest peak bytes, bytes read, bytes written, OOM kills)``.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT plugin_id, MAX(approximate), SUM(COALESCE(cpu_ms, 0)), "
                "MAX(COALESCE(mem_peak_bytes, 0)), SUM(COALESCE(io_read_bytes, 0)), "
                "SUM(COALESCE(io_write_bytes, 0)), SUM(COALESCE(oom_kills, 0)) "
                "FROM usage GROUP BY plugin_id ORDER BY plugin_id"
            ).fetchall()
        return [(str(r[0]), bool(r[1]), float(r[2]), int(r[3]), int(r[4]), int(r[5]),
                 int(r[6])) for r in rows]

    def usage_summary(self, plugin_id: str) -> dict[str, Any]:
        """A plugin's recorded resource use: CPU in total, its highest memory peak, I/O,
        OOM kills, and whether any of it is approximate (``{}`` when nothing was recorded).
        """
        for pid, approximate, cpu_ms, peak, read, written, ooms in self.usage_totals():
            if pid == plugin_id:
                return {"cpu_ms": round(cpu_ms, 3), "mem_peak_bytes": peak,
                        "io_read_bytes": read, "io_write_bytes": written, "oom_kills": ooms,
                        "approximate": approximate}
        return {}

    def call_summary(self, plugin_id: str) -> dict[str, Any]:
        """Totals and latency figures of a plugin's recorded calls."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT outcome, wall_ms, cpu_user_ms, cpu_system_ms, peak_rss_kb, weight "
                "FROM calls WHERE plugin_id = ? ORDER BY at DESC LIMIT 10000",
                (plugin_id,),
            ).fetchall()
        if not rows:
            return {"calls": 0}
        walls: list[float] = sorted(float(r[1]) for r in rows)
        outcomes: dict[str, int] = {}
        for r in rows:  # a sampled row stands for ``weight`` calls
            outcomes[r[0]] = outcomes.get(r[0], 0) + int(r[5])

        def pct(p: float) -> float:
            return round(walls[min(len(walls) - 1, int(p * len(walls)))], 3)

        return {
            "calls": sum(outcomes.values()),
            "outcomes": outcomes,
            "wall_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": walls[-1]},
            "cpu_user_ms": round(sum(r[2] or 0.0 for r in rows), 3),
            "cpu_system_ms": round(sum(r[3] or 0.0 for r in rows), 3),
            "peak_rss_kb": max((r[4] or 0) for r in rows),
        }

    def record_profiles(self, calls: list[tuple[Any, ...]],
                        imports: list[tuple[Any, ...]]) -> None:
        """Append ``call_profile`` rows (:data:`CALL_PROFILE_COLUMNS`) and ``import_profile``
        rows ``(plugin_id, version, module, self_ms, total_ms, at)``."""
        if not calls and not imports:
            return
        with self.transaction() as conn:
            conn.executemany(
                f"INSERT INTO call_profile ({', '.join(CALL_PROFILE_COLUMNS)}) "  # noqa: S608
                f"VALUES ({', '.join('?' * len(CALL_PROFILE_COLUMNS))})",
                calls,
            )
            conn.executemany(
                "INSERT INTO import_profile (plugin_id, version, module, self_ms, total_ms, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                imports,
            )

    def call_profiles(self, plugin_id: str, limit: int = 20_000) -> list[dict[str, Any]]:
        """The plugin's most recent ``call_profile`` rows, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(CALL_PROFILE_COLUMNS)} FROM call_profile "  # noqa: S608
                "WHERE plugin_id = ? ORDER BY at DESC, id DESC LIMIT ?",
                (plugin_id, limit),
            ).fetchall()
        return [dict(zip(CALL_PROFILE_COLUMNS, r, strict=True)) for r in reversed(rows)]

    def import_profiles(self, plugin_id: str) -> list[dict[str, Any]]:
        """The module import times last measured for the plugin (its newest import)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, module, self_ms, total_ms, at FROM import_profile "
                "WHERE plugin_id = ? AND at = (SELECT MAX(at) FROM import_profile "
                "WHERE plugin_id = ?) ORDER BY self_ms DESC",
                (plugin_id, plugin_id),
            ).fetchall()
        return [{"version": r[0], "module": r[1], "self_ms": r[2], "total_ms": r[3], "at": r[4]}
                for r in rows]
