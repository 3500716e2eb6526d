"""Shared state: versioned JSON values under dotted keys, consistent across processes.

The values live in ``<home>/state.db`` (SQLite, WAL).  Every write is one
``BEGIN IMMEDIATE`` transaction, so writers from any process on the home
queue for the database's single write lock: :meth:`StateStore.update` reads,
applies the function and writes inside that lock, and two processes
incrementing the same key never lose an update.  Each write also appends to a
``changes`` table, which watchers in every process follow.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import msgspec

from corral._errors import PermissionDenied, PluginError, UsageError
from corral._model.jsoncheck import json_problem
from corral._model.permissions import Permissions, pattern_matches, valid_pattern
from corral._model.state import StateChange, StateValue
from corral._model.topics import pattern_covers
from corral._runtime.budgets import MIB, over_budget

if TYPE_CHECKING:
    from corral._runtime.budgets import Budgets

__all__ = ["PluginState", "StateChange", "StateStore", "StateValue", "state_broker_op"]

#: Largest value, as encoded JSON.
MAX_VALUE_BYTES: Final = 1024 * 1024
_CHANGES_KEPT: Final = 10_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    value BLOB,
    version INTEGER NOT NULL,
    updated_by TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS state_by ON state (updated_by);
CREATE INDEX IF NOT EXISTS changes_by ON changes (updated_by)
"""

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def check_key(key: object) -> str:
    """Return ``key`` if it is a dotted name without wildcards, else raise :class:`UsageError`."""
    if type(key) is not str or not valid_pattern(key) or "*" in key or ">" in key:
        raise UsageError(
            f"malformed state key {key!r}: use dotted names of letters, digits, '_' and '-'",
            key=str(key),
        )
    return key


def _encode_value(key: str, value: Any) -> bytes:
    problem = json_problem(value)
    if problem is not None:
        raise UsageError(f"value for state key {key!r} is not JSON data: {problem}", key=key)
    blob = _encode(value)
    if len(blob) > MAX_VALUE_BYTES:
        raise UsageError(
            f"value for state key {key!r} is {len(blob)} bytes, more than {MAX_VALUE_BYTES}",
            key=key,
        )
    return blob


def _check(perms: Permissions | None, service: str, key: str, plugin_id: str | None) -> None:
    if perms is not None:
        perms.check_api(service, key, plugin_id=plugin_id)


@final
class StateWatch:
    """A subscription to state changes; :meth:`cancel` ends it."""

    __slots__ = ("_store", "errors", "handler", "pattern", "plugin_id")

    def __init__(
        self,
        store: StateStore,
        pattern: str,
        handler: Callable[[StateChange], Any],
        plugin_id: str | None,
    ) -> None:
        self._store = store
        self.pattern: Final = pattern
        self.handler: Final = handler
        self.plugin_id: Final = plugin_id
        #: What the handler raised (the latest 100), so one failure stops nothing.
        self.errors: deque[str] = deque(maxlen=100)

    def cancel(self) -> None:
        """Stop receiving changes (idempotent)."""
        self._store._unwatch(self)


@final
class StateStore:
    """Versioned shared state in ``<home>/state.db``; safe across threads and processes.

    Every method takes the acting plugin's :class:`Permissions` (``None`` for
    the host) and checks ``state.read:<key>`` or ``state.write:<key>``.
    """

    def __init__(self, path: str | Path, *, poll_interval: float = 0.05) -> None:
        self.path: Final = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
        self._interval = poll_interval
        self._watches: list[StateWatch] = []
        self._watch_lock = threading.Lock()
        self._wake = threading.Condition()
        self._watcher: threading.Thread | None = None
        self._writes = 0
        #: The active plugins' ``state-mb`` and ``state-keys``, set by the host.
        self.budgets: Budgets | None = None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise UsageError("the state store is closed")
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 60000")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Stop the watcher and close every connection."""
        self._closed = True
        with self._wake:
            self._wake.notify_all()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    # -- reading -------------------------------------------------------------------------

    def get(
        self, key: str, *, perms: Permissions | None = None, plugin_id: str | None = None
    ) -> StateValue | None:
        """The value and version at ``key``, or ``None`` when it was never set (or deleted)."""
        check_key(key)
        _check(perms, "state.read", key, plugin_id)
        row = self._conn().execute(
            "SELECT value, version, updated_at, updated_by FROM state WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return StateValue(key, _decode(row[0]), row[1], row[2], row[3])

    def keys(
        self,
        pattern: str = ">",
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
    ) -> list[str]:
        """Keys matching ``pattern`` that the caller may read, sorted."""
        if not valid_pattern(pattern):
            raise UsageError(f"malformed key pattern {pattern!r}", pattern=pattern)
        rows = self._conn().execute("SELECT key FROM state ORDER BY key").fetchall()
        return [
            k for (k,) in rows
            if pattern_matches(pattern, k)
            and (perms is None or perms.allows_api("state.read", k))
        ]

    # -- writing ---------------------------------------------------------------------------

    def _write(
        self,
        key: str,
        decide: Callable[[tuple[Any, ...] | None], tuple[bytes | None, Any] | None],
        by: str | None,
    ) -> tuple[int, Any] | None:
        """One write transaction: ``decide(current row)`` says what to store (or nothing)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT value, version FROM state WHERE key = ?", (key,)
            ).fetchone()
            decision = decide(row)
            if decision is None:
                conn.execute("ROLLBACK")
                return None
            blob, value = decision
            limits = self.budgets.get(by) if self.budgets is not None else None
            if limits is not None and blob is not None:
                self._charge(conn, by, key, blob, limits.state_mb * MIB, limits.state_keys)
            version = (row[1] if row else 0) + 1
            now = time.time()
            if blob is None:
                conn.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO state (key, value, version, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value, version = excluded.version, "
                    "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    (key, blob, version, now, by),
                )
            seq = conn.execute(
                "INSERT INTO changes (key, value, version, updated_by, at) VALUES (?, ?, ?, ?, ?)",
                (key, blob, version if blob is not None else 0, by, now),
            ).lastrowid
            if limits is not None:
                # The change log kept for watchers counts too: past state-mb, drop the oldest.
                (logged,) = conn.execute(
                    "SELECT coalesce(sum(length(value)), 0) FROM changes WHERE updated_by = ?",
                    (by,),
                ).fetchone()
                if logged > limits.state_mb * MIB:
                    conn.execute("DELETE FROM changes WHERE updated_by = ? AND seq < ?",
                                 (by, seq))
            self._writes += 1
            if self._writes % 1000 == 0:
                conn.execute(
                    "DELETE FROM changes WHERE seq < (SELECT max(seq) FROM changes) - ?",
                    (_CHANGES_KEPT,),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if self._watches:
            with self._wake:
                self._wake.notify_all()
        return version, value

    @staticmethod
    def _charge(conn: sqlite3.Connection, by: str | None, key: str, blob: bytes,
                max_bytes: int, max_keys: int) -> None:
        """Refuse a write that would take ``by`` past its ``state-mb`` or ``state-keys``."""
        keys, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0) "
            "FROM state WHERE updated_by = ? AND key != ?",
            (by, key),
        ).fetchone()
        if keys + 1 > max_keys:
            raise over_budget(by, "state-keys", "shared state", keys, max_keys, "keys")
        if size + len(key.encode()) + len(blob) > max_bytes:
            raise over_budget(by, "state-mb", "shared state", size, max_bytes)

    def set(
        self,
        key: str,
        value: Any,
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
    ) -> int:
        """Store ``value`` at ``key``; return the new version."""
        check_key(key)
        _check(perms, "state.write", key, plugin_id)
        blob = _encode_value(key, value)
        out = self._write(key, lambda row: (blob, value), plugin_id)
        assert out is not None
        return int(out[0])

    def compare_and_set(
        self,
        key: str,
        expected_version: int,
        value: Any,
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
    ) -> bool:
        """Store ``value`` only if ``key`` is still at ``expected_version`` (0: absent)."""
        check_key(key)
        _check(perms, "state.write", key, plugin_id)
        if type(expected_version) is not int or expected_version < 0:
            raise UsageError(
                f"expected_version must be an int >= 0, got {expected_version!r}", key=key
            )
        blob = _encode_value(key, value)

        def decide(row: tuple[Any, ...] | None) -> tuple[bytes | None, Any] | None:
            current = row[1] if row else 0
            return (blob, value) if current == expected_version else None

        return self._write(key, decide, plugin_id) is not None

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        default: Any = None,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
    ) -> StateValue:
        """Atomically replace the value at ``key`` with ``fn(current)`` (``default`` if unset).

        ``fn`` runs while this home's state is write-locked: keep it short and
        free of side effects.
        """
        check_key(key)
        _check(perms, "state.read", key, plugin_id)
        _check(perms, "state.write", key, plugin_id)

        def decide(row: tuple[Any, ...] | None) -> tuple[bytes | None, Any]:
            current = _decode(row[0]) if row else default
            try:
                new = fn(current)
            except Exception as exc:
                raise PluginError(
                    f"the update function for state key {key!r} raised "
                    f"{type(exc).__name__}: {exc}", key=key, plugin_id=plugin_id,
                ) from exc
            return _encode_value(key, new), new

        out = self._write(key, decide, plugin_id)
        assert out is not None
        return StateValue(key, out[1], int(out[0]), time.time(), plugin_id)

    def delete(
        self, key: str, *, perms: Permissions | None = None, plugin_id: str | None = None
    ) -> bool:
        """Remove ``key``; return whether it existed."""
        check_key(key)
        _check(perms, "state.write", key, plugin_id)
        return self._write(key, lambda row: (None, None) if row else None, plugin_id) is not None

    # -- watching --------------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[StateChange], Any],
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
    ) -> StateWatch:
        """Call ``handler(change)`` for writes to keys matching ``pattern``, from any process.

        Changes arrive in commit order on the store's watcher thread.  A plugin
        needs ``state.read`` grants covering the whole pattern.
        """
        if not valid_pattern(pattern):
            raise UsageError(f"malformed key pattern {pattern!r}", pattern=pattern)
        if perms is not None:
            granted = [g.partition(":")[2] for g in perms.host_api
                       if g.partition(":")[0] == "state.read"]
            if not any(pattern_covers(g, pattern) for g in granted):
                raise PermissionDenied(
                    f"plugin {plugin_id or '?'} has no host-api grant covering "
                    f"state.read:{pattern}",
                    permission=f"host-api:state.read:{pattern}",
                    plugin_id=plugin_id,
                )
        watch = StateWatch(self, pattern, handler, plugin_id)
        with self._watch_lock:
            self._watches.append(watch)
            if self._watcher is None:
                row = self._conn().execute("SELECT max(seq) FROM changes").fetchone()
                self._watcher = threading.Thread(
                    target=self._watch_loop, args=(int(row[0] or 0),),
                    name="corral-state-watch", daemon=True,
                )
                self._watcher.start()
        return watch

    def cancel_plugin(self, plugin_id: str) -> int:
        """Cancel every watch of ``plugin_id`` (it stopped); return how many."""
        with self._watch_lock:
            mine = [w for w in self._watches if w.plugin_id == plugin_id]
            self._watches = [w for w in self._watches if w.plugin_id != plugin_id]
        return len(mine)

    def _unwatch(self, watch: StateWatch) -> None:
        with self._watch_lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def _watch_loop(self, seq: int) -> None:
        while not self._closed:
            try:
                rows = self._conn().execute(
                    "SELECT seq, key, value, version, updated_by, at FROM changes "
                    "WHERE seq > ? ORDER BY seq LIMIT 1000",
                    (seq,),
                ).fetchall()
            except (sqlite3.Error, UsageError):
                rows = []
            for r in rows:
                seq = r[0]
                change = StateChange(r[1], None if r[2] is None else _decode(r[2]), r[3],
                                     r[2] is None, r[4], r[5])
                with self._watch_lock:
                    watches = [w for w in self._watches if pattern_matches(w.pattern, r[1])]
                for w in watches:
                    try:
                        w.handler(change)
                    except Exception as exc:
                        w.errors.append(f"{type(exc).__name__}: {exc}")
            if not rows:
                with self._wake:
                    if not self._closed:
                        self._wake.wait(self._interval)

    def for_plugin(self, plugin_id: str, perms: Permissions) -> PluginState:
        """``ctx.state`` for one plugin."""
        return PluginState(self, plugin_id, perms)


@final
class PluginState:
    """``ctx.state``: shared state seen by one plugin, every call checked against its grants."""

    __slots__ = ("_perms", "_store", "plugin_id")

    def __init__(self, store: StateStore, plugin_id: str, perms: Permissions) -> None:
        self._store = store
        self.plugin_id: Final = plugin_id
        self._perms = perms

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` (needs ``state.read:<key>``)."""
        got = self._store.get(key, perms=self._perms, plugin_id=self.plugin_id)
        return default if got is None else got.value

    def get_versioned(self, key: str) -> StateValue | None:
        """The value with its version, for :meth:`compare_and_set`."""
        return self._store.get(key, perms=self._perms, plugin_id=self.plugin_id)

    def set(self, key: str, value: Any) -> int:
        """Store ``value``; return the new version (needs ``state.write:<key>``)."""
        return self._store.set(key, value, perms=self._perms, plugin_id=self.plugin_id)

    def compare_and_set(self, key: str, expected_version: int, value: Any) -> bool:
        """Store ``value`` only if ``key`` is still at ``expected_version`` (0: absent)."""
        return self._store.compare_and_set(key, expected_version, value, perms=self._perms,
                                           plugin_id=self.plugin_id)

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> StateValue:
        """Atomically replace the value with ``fn(current)``."""
        return self._store.update(key, fn, default=default, perms=self._perms,
                                  plugin_id=self.plugin_id)

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        return self._store.delete(key, perms=self._perms, plugin_id=self.plugin_id)

    def keys(self, pattern: str = ">") -> list[str]:
        """Readable keys matching ``pattern``."""
        return self._store.keys(pattern, perms=self._perms, plugin_id=self.plugin_id)

    async def aget(self, key: str, default: Any = None) -> Any:
        """Async twin of :meth:`get` (the database is read off the event loop)."""
        return await asyncio.to_thread(self.get, key, default)

    async def aset(self, key: str, value: Any) -> int:
        """Async twin of :meth:`set`."""
        return await asyncio.to_thread(self.set, key, value)

    async def acompare_and_set(self, key: str, expected_version: int, value: Any) -> bool:
        """Async twin of :meth:`compare_and_set`."""
        return await asyncio.to_thread(self.compare_and_set, key, expected_version, value)

    async def aupdate(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> StateValue:
        """Async twin of :meth:`update`."""
        return await asyncio.to_thread(self.update, key, fn, default)

    def subscribe(self, pattern: str, handler: Callable[[StateChange], Any]) -> StateWatch:
        """Watch writes to keys matching ``pattern`` (``state.read`` must cover it)."""
        return self._store.subscribe(pattern, handler, perms=self._perms,
                                     plugin_id=self.plugin_id)


def state_broker_op(
    store: StateStore, plugin_id: str, perms: Permissions, op: str, args: dict[str, Any]
) -> Any:
    """Serve a sandboxed plugin's ``state.*`` broker request."""
    key = args.get("key")
    if op == "state.get":
        got = store.get(key, perms=perms, plugin_id=plugin_id)  # type: ignore[arg-type]
        return None if got is None else got.value
    if op == "state.get_versioned":
        got = store.get(key, perms=perms, plugin_id=plugin_id)  # type: ignore[arg-type]
        return None if got is None else {"value": got.value, "version": got.version}
    if op == "state.set":
        return store.set(key, args.get("value"), perms=perms,  # type: ignore[arg-type]
                         plugin_id=plugin_id)
    if op == "state.cas":
        return store.compare_and_set(
            key, args.get("version"), args.get("value"),  # type: ignore[arg-type]
            perms=perms, plugin_id=plugin_id,
        )
    if op == "state.delete":
        return store.delete(key, perms=perms, plugin_id=plugin_id)  # type: ignore[arg-type]
    if op == "state.keys":
        return store.keys(str(args.get("pattern", ">")), perms=perms, plugin_id=plugin_id)
    raise UsageError(f"unknown state operation {op!r}", plugin_id=plugin_id)
