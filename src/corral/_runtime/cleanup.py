"""Automatic cleanup of a home: metrics past their retention, a purged plugin's files and
rows, orphans (what plugins no longer registered left behind).

Everything here stays inside the home: folders are named by the entries found
in ``data/``, ``cache/`` and ``tmp/`` (never by a path put together from a
setting), links are removed and never followed, and a plugin id is checked
before it names anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from corral._disk.settings import SETTINGS_FILE, read_settings
from corral._errors import ManifestError, UsageError
from corral._runtime.budgets import ENTRY_BYTES
from corral._runtime.database import HostDatabase

__all__ = [
    "PLUGIN_DIRS",
    "CleanupSettings",
    "cleanup_settings",
    "count_rows",
    "delete_rows",
    "maybe_prune_metrics",
    "orphan_dirs",
    "orphan_rows",
    "prune_metrics",
    "remove_dir",
    "tree_count",
]

#: The folders of a home that hold one sub-folder per plugin.
PLUGIN_DIRS: Final = ("data", "cache", "tmp")
#: Host-database tables with rows per plugin: table -> its plugin id column.
_ROWS: Final = (("calls", "plugin_id"), ("quota_usage", "plugin_id"), ("usage", "plugin_id"),
                ("call_profile", "plugin_id"), ("import_profile", "plugin_id"))
#: What row kind each table's rows are called in reports.
ROW_NAMES: Final = {"calls": "metrics", "quota_usage": "quota_usage", "usage": "usage",
                    "call_profile": "call_profiles", "import_profile": "import_times"}
#: Measurements kept for ``[retention] metrics-days``, each with its ``at`` column.
_MEASURED: Final = ("usage", "call_profile", "import_profile")
_PRUNED_KEY: Final = "retention.metrics_pruned_at"
_DAY: Final = 86400.0
#: Quota usage is kept this long (the longest window is a day, plus the one before it).
_QUOTA_KEEP_S: Final = 2 * _DAY


@final
@dataclass(frozen=True, slots=True)
class CleanupSettings:
    """``[cleanup]`` and ``[retention]`` of ``settings.toml``."""

    #: A sandboxed worker unused this long is stopped (``[cleanup] idle-worker-seconds``).
    idle_worker_seconds: float = 300.0
    #: Call metrics older than this are deleted (``[retention] metrics-days``).
    metrics_days: int = 30


def _number(doc: dict[str, Any], table: str, key: str, default: float, low: float, high: float,
             file: str, *, integer: bool = False) -> float:
    section = doc.get(table, {})
    if not isinstance(section, dict):
        raise ManifestError("must be a table", file=file, key=table)
    value = section.get(key, default)
    ok = type(value) is int if integer else type(value) in (int, float)
    if not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ManifestError(f"must be {kind} {low:g}..{high:g}, got {value!r}", file=file,
                            key=f"{table}.{key}")
    return float(value)


def cleanup_settings(home: Path) -> CleanupSettings:
    """The cleanup settings of ``home`` (defaults where unset).

    Raises:
        ManifestError: a value of the wrong type or out of bounds, naming the key.
    """
    doc = read_settings(home)
    file = str(Path(home) / SETTINGS_FILE)
    return CleanupSettings(
        idle_worker_seconds=_number(doc, "cleanup", "idle-worker-seconds", 300.0, 0.1,
                                    30 * _DAY, file),
        metrics_days=int(_number(doc, "retention", "metrics-days", 30, 1, 36500, file,
                                 integer=True)),
    )


def _table_exists(db: HostDatabase, table: str) -> bool:
    with db.transaction() as conn:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (table,)).fetchone() is not None


def prune_metrics(db: HostDatabase, days: int, now: float | None = None) -> dict[str, int]:
    """Delete call metrics older than ``days`` and quota usage past its longest window.

    Resource usage and call profiles age out with the call metrics.  Returns the rows
    deleted, by kind (``metrics`` counts all three, ``quota_usage``).
    """
    now = time.time() if now is None else now
    out = {"metrics": 0, "quota_usage": 0}
    tables = ["calls", *(t for t in _MEASURED if _table_exists(db, t))]
    with db.transaction() as conn:
        out["metrics"] = sum(
            conn.execute(f"DELETE FROM {t} WHERE at < ?", (now - days * _DAY,)).rowcount  # noqa: S608
            for t in tables)
    if _table_exists(db, "quota_usage"):
        with db.transaction() as conn:
            out["quota_usage"] = conn.execute("DELETE FROM quota_usage WHERE window_start < ?",
                                              (now - _QUOTA_KEEP_S,)).rowcount
    return out


def maybe_prune_metrics(db: HostDatabase, home: Path, now: float | None = None
                        ) -> dict[str, int] | None:
    """:func:`prune_metrics` on the home's retention, at most once a day; ``None`` if not due.

    A settings file that cannot be read leaves everything as it is (the host must start).
    """
    now = time.time() if now is None else now
    last = db.get_meta(_PRUNED_KEY)
    with contextlib.suppress(ValueError):
        if last is not None and now - float(last) < _DAY:
            return None
    try:
        days = cleanup_settings(home).metrics_days
    except ManifestError:
        return None
    db.set_meta(_PRUNED_KEY, repr(now))
    return prune_metrics(db, days, now)


def tree_count(path: Path) -> tuple[int, int]:
    """``(entries, bytes)`` under ``path`` counted like the budgets do; links not followed.

    A link itself is one entry.  A missing path holds nothing.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0, 0
    if not stat.S_ISDIR(st.st_mode):
        return 1, max(st.st_size, st.st_blocks * 512, ENTRY_BYTES)
    files = total = 0
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += max(est.st_size, est.st_blocks * 512, ENTRY_BYTES)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(entry.path)
                else:
                    files += 1
    return files, total


def _inside(home: Path, path: Path) -> bool:
    """Whether ``path`` is a direct child of one of the home's per-plugin folders."""
    return path.parent.parent == home and path.parent.name in PLUGIN_DIRS \
        and path.name not in ("", ".", "..") and "/" not in path.name


def remove_dir(home: Path, sub: str, name: str) -> dict[str, int]:
    """Remove ``<home>/<sub>/<name>`` (a link is unlinked, never followed); what it held.

    Raises:
        UsageError: ``sub`` or ``name`` would lead anywhere else.
    """
    path = home / sub / name
    if sub not in PLUGIN_DIRS or not _inside(home, path):
        raise UsageError(f"refusing to remove {path}: not a plugin folder of {home}")
    files, size = tree_count(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return {"files": 0, "bytes": 0}
    if stat.S_ISDIR(st.st_mode):
        trash = path.with_name(f".trash-{os.urandom(8).hex()}")
        os.rename(path, trash)  # gone at once for whoever looks; then deleted
        shutil.rmtree(trash, ignore_errors=True)
    else:
        path.unlink()
    return {"files": files, "bytes": size}


def orphan_dirs(home: Path, registered: Iterable[str]) -> list[dict[str, Any]]:
    """Per-plugin folders whose name is no registered plugin: ``{"dir", "name", "path",
    "files", "bytes"}`` each, sorted.  Hidden entries (``.trash-*`` included) are not listed.
    """
    known = set(registered)
    out: list[dict[str, Any]] = []
    for sub in PLUGIN_DIRS:
        try:
            entries = sorted(os.scandir(home / sub), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name in known or entry.name.startswith("."):
                continue
            files, size = tree_count(Path(entry.path))
            out.append({"dir": sub, "name": entry.name, "path": entry.path,
                        "files": files, "bytes": size})
    return out


def count_rows(db: HostDatabase, plugin_id: str) -> dict[str, int]:
    """Rows the host database holds for ``plugin_id``, by kind."""
    out: dict[str, int] = {}
    for table, column in _ROWS:
        if not _table_exists(db, table):
            out[ROW_NAMES[table]] = 0
            continue
        with db.transaction() as conn:
            out[ROW_NAMES[table]] = conn.execute(
                f"SELECT count(*) FROM {table} WHERE {column} = ?",  # noqa: S608
                (plugin_id,)).fetchone()[0]
    return out


def delete_rows(db: HostDatabase, plugin_id: str) -> dict[str, int]:
    """Delete ``plugin_id``'s metrics and quota usage from the host database; rows deleted."""
    out: dict[str, int] = {}
    for table, column in _ROWS:
        if not _table_exists(db, table):
            out[ROW_NAMES[table]] = 0
            continue
        with db.transaction() as conn:
            out[ROW_NAMES[table]] = conn.execute(
                f"DELETE FROM {table} WHERE {column} = ?", (plugin_id,)  # noqa: S608
            ).rowcount
    return out


def orphan_rows(db: HostDatabase, registered: Iterable[str]) -> dict[str, dict[str, int]]:
    """Plugin ids with rows in the host database that are not registered -> rows by kind."""
    known = set(registered)
    out: dict[str, dict[str, int]] = {}
    for table, column in _ROWS:
        if not _table_exists(db, table):
            continue
        with db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {column}, count(*) FROM {table} GROUP BY {column}"  # noqa: S608
            ).fetchall()
        for pid, n in rows:
            if pid not in known:
                out.setdefault(str(pid), {})[ROW_NAMES[table]] = int(n)
    return out
