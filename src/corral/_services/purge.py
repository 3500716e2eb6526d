"""What the host services keep for a plugin, counted and removed: its shared state and its
durable subscriptions (``corral remove --purge``, ``corral gc``).

A shared-state key belongs to the plugin that wrote it last (as ``state-mb``
counts it); it is deleted through the store, so watchers see the deletion, and
the plugin's change history goes with it.  A durable consumer of a plugin is
named ``<plugin id>:<name>``; its committed offset is deleted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral._services.hub import Services

__all__ = ["purge_services", "service_orphans", "service_usage"]


def _query(path: Path, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the SQLite file ``path``, read only; none if the file or table is not
    there yet.
    """
    if not path.exists():
        return []
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30.0)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _state_rows(home: Path, plugin_id: str) -> list[tuple[str, int]]:
    return [(str(k), int(n)) for k, n in _query(
        home / "state.db",
        "SELECT key, length(CAST(key AS BLOB)) + length(value) FROM state WHERE updated_by = ?",
        (plugin_id,))]


def _consumers(home: Path, plugin_id: str) -> list[str]:
    prefix = f"{plugin_id}:"
    return [str(r[0]) for r in _query(
        home / "events.db", "SELECT name FROM consumers WHERE substr(name, 1, ?) = ?",
        (len(prefix), prefix))]


def service_usage(home: Path, plugin_id: str) -> dict[str, dict[str, int]]:
    """What :func:`purge_services` would remove for ``plugin_id``, counted."""
    rows = _state_rows(home, plugin_id)
    history = _query(home / "state.db", "SELECT count(*) FROM changes WHERE updated_by = ?",
                     (plugin_id,))
    return {
        "state": {"keys": len(rows), "bytes": sum(n for _, n in rows),
                  "history": int(history[0][0]) if history else 0},
        "subscriptions": {"consumers": len(_consumers(home, plugin_id))},
    }


def purge_services(services: Services, plugin_id: str) -> dict[str, dict[str, int]]:
    """Delete ``plugin_id``'s shared-state keys and history and its durable consumers;
    what was removed, counted.
    """
    home = services.home
    out = service_usage(home, plugin_id)
    rows = _state_rows(home, plugin_id)
    if rows or out["state"]["history"]:
        store = services.shared_state
        for key, _ in rows:
            store.delete(key)  # a change row, so watchers see it go
        conn = sqlite3.connect(home / "state.db", timeout=30.0, isolation_level=None)
        try:
            conn.execute("DELETE FROM changes WHERE updated_by = ?", (plugin_id,))
        finally:
            conn.close()
    names = _consumers(home, plugin_id)
    if names:
        conn = sqlite3.connect(home / "events.db", timeout=30.0, isolation_level=None)
        try:
            conn.executemany("DELETE FROM consumers WHERE name = ?", [(n,) for n in names])
        finally:
            conn.close()
    return out


def service_orphans(home: Path, registered: Iterable[str]) -> dict[str, dict[str, int]]:
    """Plugin ids that last wrote shared-state keys but are not registered -> keys and bytes."""
    known = set(registered)
    out: dict[str, dict[str, int]] = {}
    for by, keys, size in _query(
            home / "state.db",
            "SELECT updated_by, count(*), sum(length(CAST(key AS BLOB)) + length(value)) "
            "FROM state WHERE updated_by IS NOT NULL GROUP BY updated_by", ()):
        if by not in known:
            out[str(by)] = {"keys": int(keys), "bytes": int(size or 0)}
    return out
