"""L2: every plugin's cache entries in ``<home>/cache.db`` (SQLite, WAL), shared by the host.

Entries are keyed by namespace and key, charged to the plugin that wrote them
(``owner``), and bounded per owner by its ``cache-mb``: past it, the owner's
oldest entries are evicted, unless TinyLFU admission finds the new entry colder
than the one it would push out.  Each namespace has a generation, raised by
every change, which tells the L1s (the host's and the workers') to drop theirs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, Protocol, final

from corral._disk.settings import SETTINGS_FILE, read_settings
from corral._errors import ManifestError, UsageError

__all__ = ["CACHE_DB", "CacheStore", "Level2", "Row", "cache_url", "open_existing",
           "open_store"]

CACHE_DB: Final = "cache.db"
#: ``(value, kind, fresh_until, keep_until)`` of one entry.
Row = tuple[bytes, int, float, float]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS entries (
    ns TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL,
    value BLOB NOT NULL, kind INTEGER NOT NULL, size INTEGER NOT NULL,
    fresh REAL NOT NULL, keep REAL NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_owner ON entries (owner, seq);
CREATE INDEX IF NOT EXISTS entries_keep ON entries (keep);
CREATE TABLE IF NOT EXISTS tags (
    ns TEXT NOT NULL, tag TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (ns, tag, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_key ON tags (ns, key);
CREATE TABLE IF NOT EXISTS usage (owner TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS generations (ns TEXT PRIMARY KEY, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    owner TEXT NOT NULL, level TEXT NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0,
    sets INTEGER NOT NULL DEFAULT 0, evictions INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0, expired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, level)
);
"""
_COUNTERS: Final = ("hits", "misses", "sets", "evictions", "rejected", "expired")


class Level2(Protocol):
    """What the service needs of L2: :class:`CacheStore`, or ``redis.RedisStore``."""

    path: Any

    def close(self) -> None: ...
    def get(self, ns: str, key: str, now: float) -> Row | None: ...
    def data_version(self) -> int: ...
    def generations(self) -> dict[str, int]: ...
    def usage(self, owner: str) -> tuple[int, int]: ...
    def owners(self) -> list[str]: ...
    def counters(self, owner: str) -> dict[str, dict[str, int]]: ...
    def set(self, ns: str, key: str, owner: str, blob: bytes, kind: int, fresh: float,
            keep: float, tags: tuple[str, ...], size: int, cap: int,
            admit: Callable[[str], bool]) -> tuple[bool, int, int, int]: ...
    def delete(self, ns: str, key: str) -> tuple[bool, int, int]: ...
    def invalidate(self, ns: str, tags: Iterable[str]) -> tuple[int, int, int]: ...
    def clear(self, plugin_id: str, tag: str | None = None) -> dict[str, int]: ...
    def purge_expired(self, now: float | None = None) -> int: ...
    def add_counters(self, rows: Iterable[tuple[str, str, dict[str, int]]]) -> None: ...


def cache_url(home: Path) -> str | None:
    """``[cache] url`` of the home's settings: a ``redis://`` (or ``rediss://``, ``unix://``)
    address of a shared L2, or ``None`` for ``<home>/cache.db``."""
    section = read_settings(home).get("cache", {})
    where = str(home / SETTINGS_FILE)
    if not isinstance(section, dict):
        raise ManifestError("must be a table", file=where, key="cache")
    url = section.get("url")
    if url is None:
        return None
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ManifestError(f"expected a redis://, rediss:// or unix:// address, got {url!r}",
                            file=where, key="cache.url")
    return url


def open_store(home: Path) -> Level2:
    """The home's L2: Redis when ``[cache] url`` says so, else ``<home>/cache.db``."""
    url = cache_url(home)
    if url is not None:
        from corral._services.cache.redis import RedisStore  # deferred: the redis package

        return RedisStore(url)
    return CacheStore(home / CACHE_DB)


def open_existing(home: Path) -> Level2 | None:
    """:func:`open_store`, or ``None`` when the home has no cache yet (nothing is made)."""
    if cache_url(home) is None and not (home / CACHE_DB).exists():
        return None
    return open_store(home)


def open_private(path: Path) -> None:
    """Make ``path`` readable by its owner only; refuse a link planted in its place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


@final
class CacheStore:
    """The L2 database; every method is one transaction, safe from many threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            open_private(path)
        except OSError as exc:
            raise UsageError(f"cannot open the cache database {path}: {exc.strerror}",
                             path=str(path)) from None
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out

    # -- reading ----------------------------------------------------------------

    def get(self, ns: str, key: str, now: float) -> Row | None:
        """``key``'s entry in ``ns`` unless past keeping."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value, kind, fresh, keep FROM entries WHERE ns = ? AND key = ?",
                (ns, key)).fetchone()
        if row is None or row[3] <= now:
            return None
        return bytes(row[0]), int(row[1]), float(row[2]), float(row[3])

    def data_version(self) -> int:
        """Changes when another connection commits (``PRAGMA data_version``)."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def generations(self) -> dict[str, int]:
        """Every namespace's generation."""
        with self._lock:
            return dict(self._conn.execute("SELECT ns, gen FROM generations").fetchall())

    def usage(self, owner: str) -> tuple[int, int]:
        """``(entries, bytes)`` that ``owner`` wrote and that are still kept."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM entries WHERE owner = ?",
                (owner,)).fetchone()
        return int(row[0]), int(row[1])

    def owners(self) -> list[str]:
        """Every plugin with entries or counters."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT owner FROM usage WHERE bytes > 0 UNION SELECT owner FROM counters "
                "ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    def counters(self, owner: str) -> dict[str, dict[str, int]]:
        """``owner``'s recorded counters by level."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT level, {', '.join(_COUNTERS)} FROM counters WHERE owner = ?",  # noqa: S608
                (owner,)).fetchall()
        return {r[0]: dict(zip(_COUNTERS, map(int, r[1:]), strict=True)) for r in rows}

    # -- writing ----------------------------------------------------------------

    def set(self, ns: str, key: str, owner: str, blob: bytes, kind: int, fresh: float,
            keep: float, tags: tuple[str, ...], size: int, cap: int,
            admit: Callable[[str], bool]) -> tuple[bool, int, int, int]:
        """Store an entry; ``(stored, evicted, previous generation, generation)``.

        Past ``cap`` bytes for ``owner``, its oldest entries are evicted first, unless
        ``admit(victim_key)`` says the new entry is the colder one: then nothing is
        written and ``stored`` is false.
        """
        now = time.time()

        def run(conn: sqlite3.Connection) -> tuple[bool, int, int, int]:
            old = conn.execute("SELECT owner, size FROM entries WHERE ns = ? AND key = ?",
                               (ns, key)).fetchone()
            used = _usage(conn, owner) - (old[1] if old is not None and old[0] == owner else 0)
            evicted = 0
            if used + size > cap:
                used -= _purge(conn, "owner = ? AND keep <= ?", (owner, now))
            if used + size > cap:
                victims = conn.execute(
                    "SELECT ns, key, size FROM entries WHERE owner = ? AND NOT "
                    "(ns = ? AND key = ?) ORDER BY seq", (owner, ns, key))
                chosen: list[tuple[str, str]] = []
                for vns, vkey, vsize in victims:
                    if not chosen and not admit(f"{vns}\0{vkey}"):
                        return False, 0, 0, 0
                    chosen.append((vns, vkey))
                    used -= vsize
                    if used + size <= cap:
                        break
                for vns, vkey in chosen:
                    _delete(conn, vns, vkey)
                evicted = len(chosen)
                if used + size > cap:
                    return False, evicted, 0, 0
            if old is not None:
                _delete(conn, ns, key)
            conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (ns, key, owner, blob, kind, size, fresh, keep, time.time_ns()))
            conn.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?, ?)",
                             [(ns, tag, key) for tag in tags])
            _add_usage(conn, owner, size)
            prev, gen = _bump(conn, ns)
            return True, evicted, prev, gen

        result: tuple[bool, int, int, int] = self._write(run)
        return result

    def delete(self, ns: str, key: str) -> tuple[bool, int, int]:
        """Remove one entry; ``(existed, previous generation, generation)``."""
        def run(conn: sqlite3.Connection) -> tuple[bool, int, int]:
            existed = _delete(conn, ns, key)
            prev, gen = _bump(conn, ns)
            return existed, prev, gen

        result: tuple[bool, int, int] = self._write(run)
        return result

    def invalidate(self, ns: str, tags: Iterable[str]) -> tuple[int, int, int]:
        """Remove every entry of ``ns`` carrying one of ``tags``; ``(removed, prev, gen)``."""
        def run(conn: sqlite3.Connection) -> tuple[int, int, int]:
            keys: set[str] = set()
            for tag in tags:
                keys.update(r[0] for r in conn.execute(
                    "SELECT key FROM tags WHERE ns = ? AND tag = ?", (ns, tag)))
            for key in keys:
                _delete(conn, ns, key)
            prev, gen = _bump(conn, ns)
            return len(keys), prev, gen

        result: tuple[int, int, int] = self._write(run)
        return result

    def clear(self, plugin_id: str, tag: str | None = None) -> dict[str, int]:
        """Remove ``plugin_id``'s namespace and what it wrote elsewhere (only ``tag``'s
        entries of its namespace, if given); how many entries and bytes went."""
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            if tag is not None:
                rows = conn.execute(
                    "SELECT e.ns, e.key, e.size FROM tags t JOIN entries e "
                    "ON e.ns = t.ns AND e.key = t.key WHERE t.ns = ? AND t.tag = ?",
                    (plugin_id, tag)).fetchall()
            else:
                rows = conn.execute(
                    "SELECT ns, key, size FROM entries WHERE ns = ? OR owner = ?",
                    (plugin_id, plugin_id)).fetchall()
            for ns, key, _size in rows:
                _delete(conn, ns, key)
            for ns in {r[0] for r in rows} | {plugin_id}:
                _bump(conn, ns)
            if tag is None:
                conn.execute("DELETE FROM counters WHERE owner = ?", (plugin_id,))
            return {"entries": len(rows), "bytes": sum(r[2] for r in rows)}

        result: dict[str, int] = self._write(run)
        return result

    def purge_expired(self, now: float | None = None) -> int:
        """Remove every entry past keeping; how many."""
        when = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> int:
            rows = conn.execute("SELECT DISTINCT ns FROM entries WHERE keep <= ?",
                                (when,)).fetchall()
            n = _purge(conn, "keep <= ?", (when,), count=True)
            for (ns,) in rows:
                _bump(conn, ns)
            return n

        result: int = self._write(run)
        return result

    def add_counters(self, rows: Iterable[tuple[str, str, dict[str, int]]]) -> None:
        """Add ``(owner, level, counters)`` to the recorded counters."""
        items = [(o, lv, *(c.get(n, 0) for n in _COUNTERS)) for o, lv, c in rows
                 if any(c.values())]
        if not items:
            return
        sets = ", ".join(f"{n} = {n} + excluded.{n}" for n in _COUNTERS)
        self._write(lambda conn: conn.executemany(
            f"INSERT INTO counters (owner, level, {', '.join(_COUNTERS)}) "  # noqa: S608
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, level) DO UPDATE SET {sets}",
            items))


def _usage(conn: sqlite3.Connection, owner: str) -> int:
    row = conn.execute("SELECT bytes FROM usage WHERE owner = ?", (owner,)).fetchone()
    return int(row[0]) if row else 0


def _add_usage(conn: sqlite3.Connection, owner: str, delta: int) -> None:
    conn.execute("INSERT INTO usage VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET "
                 "bytes = max(0, bytes + excluded.bytes)", (owner, delta))


def _delete(conn: sqlite3.Connection, ns: str, key: str) -> bool:
    row = conn.execute("DELETE FROM entries WHERE ns = ? AND key = ? RETURNING owner, size",
                       (ns, key)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM tags WHERE ns = ? AND key = ?", (ns, key))
    _add_usage(conn, row[0], -int(row[1]))
    return True


def _purge(conn: sqlite3.Connection, where: str, args: tuple[Any, ...], *,
           count: bool = False) -> int:
    """Delete the entries matching ``where``; their bytes (or their number)."""
    # ``where`` is one of this module's constants; the values are bound
    rows = conn.execute(f"SELECT ns, key, size FROM entries WHERE {where}",  # noqa: S608
                        args).fetchall()
    for ns, key, _ in rows:
        _delete(conn, ns, key)
    return len(rows) if count else sum(int(r[2]) for r in rows)


def _bump(conn: sqlite3.Connection, ns: str) -> tuple[int, int]:
    row = conn.execute("INSERT INTO generations VALUES (?, 1) ON CONFLICT (ns) DO UPDATE SET "
                       "gen = gen + 1 RETURNING gen", (ns,)).fetchone()
    gen = int(row[0])
    return gen - 1, gen
