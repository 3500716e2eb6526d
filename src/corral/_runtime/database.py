"""The host database: registered plugins, their durable states and call metrics.

SQLite in WAL mode with a busy timeout, so that several processes using the
same home see one consistent picture.  Every change is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NamedTuple, final

__all__ = ["CALL_PROFILE_COLUMNS", "HostDatabase", "PluginRow"]

SCHEMA_VERSION: Final = 2

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
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_plugin ON calls (plugin_id, at);
"""

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
        self._add_monitor_tables()

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

    def call_summary(self, plugin_id: str) -> dict[str, Any]:
        """Totals and latency figures of a plugin's recorded calls."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT outcome, wall_ms, cpu_user_ms, cpu_system_ms, peak_rss_kb "
                "FROM calls WHERE plugin_id = ? ORDER BY at DESC LIMIT 10000",
                (plugin_id,),
            ).fetchall()
        if not rows:
            return {"calls": 0}
        walls: list[float] = sorted(float(r[1]) for r in rows)
        outcomes: dict[str, int] = {}
        for r in rows:
            outcomes[r[0]] = outcomes.get(r[0], 0) + 1

        def pct(p: float) -> float:
            return round(walls[min(len(walls) - 1, int(p * len(walls)))], 3)

        return {
            "calls": len(rows),
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
