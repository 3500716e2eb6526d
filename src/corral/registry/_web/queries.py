"""Read-only queries the pages need beyond the service's: categories, ratings, dependents.

Each takes an open connection and returns plain data; the categories, which
every search page shows, are cached briefly by :class:`Cached`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral.registry import _db
from corral.registry._search import RESULT_COLUMNS, result_dict

__all__ = ["COUNT_CAP", "Cached", "categories", "dependents", "installed_by", "namespace_info",
           "plugins_where", "publisher_info", "quarantined", "rating_distribution"]

T = TypeVar("T")
#: Listings count their plugins up to this many.
COUNT_CAP: Final = 5000


class Cached(Generic[T]):
    """A value recomputed at most every ``ttl`` seconds (thread-safe)."""

    def __init__(self, make: Callable[[], T], ttl: float) -> None:
        self._make = make
        self._ttl = ttl
        self._lock = threading.Lock()
        self._value: tuple[float, T] | None = None

    def get(self) -> T:
        """The value, fresh enough."""
        with self._lock:
            if self._value is None or time.monotonic() - self._value[0] > self._ttl:
                self._value = (time.monotonic(), self._make())
            return self._value[1]

    def clear(self) -> None:
        """Forget the value (the next :meth:`get` recomputes it)."""
        with self._lock:
            self._value = None


def categories(conn: Connection) -> list[dict[str, Any]]:
    """Categories of listed plugins with how many each has, largest first."""
    p = _db.plugins
    rows = conn.execute(
        sa.select(p.c.category, sa.func.count())
        .where(p.c.category.is_not(None), p.c.latest_version.is_not(None))
        .group_by(p.c.category)
        .order_by(sa.func.count().desc())
    ).all()
    return [{"name": name, "count": int(count)} for name, count in rows]


def rating_distribution(conn: Connection, plugin_id: str) -> dict[int, int]:
    """How many ratings of each star count (1-5) a plugin has."""
    r, p = _db.ratings, _db.plugins
    rows = conn.execute(
        sa.select(r.c.stars, sa.func.count())
        .join(p, p.c.pk == r.c.plugin_pk)
        .where(p.c.id == plugin_id)
        .group_by(r.c.stars)
    ).all()
    out = dict.fromkeys(range(1, 6), 0)
    for stars, count in rows:
        if 1 <= int(stars) <= 5:
            out[int(stars)] = int(count)
    return out


def dependents(conn: Connection, plugin_id: str, limit: int = 50) -> list[str]:
    """Plugins whose latest version depends on ``plugin_id`` (uploaded archives only)."""
    v, p = _db.versions, _db.plugins
    # uploaded versions only (catalogue entries have no archive and no dependencies):
    # ``sha256 > ''`` lets the database walk the sha256 index instead of every version
    uploaded = (
        sa.select(v.c.plugin_pk, v.c.version, v.c.manifest)
        .where(v.c.sha256 > "", v.c.manifest.contains(f'"{plugin_id}"'))
        .subquery()
    )
    rows = conn.execute(
        sa.select(p.c.id, uploaded.c.manifest)
        .join(uploaded, (uploaded.c.plugin_pk == p.c.pk)
              & (uploaded.c.version == p.c.latest_version))
        .order_by(p.c.downloads.desc())
    ).all()
    out = [pid for pid, manifest in rows
           if plugin_id in (json.loads(manifest).get("dependencies") or {})]
    return out[:limit]


def publisher_info(conn: Connection, name: str) -> dict[str, Any] | None:
    """A publisher's public facts and namespaces, or None."""
    pub = _db.publishers
    row = conn.execute(sa.select(pub).where(pub.c.name == name)).first()
    if row is None:
        return None
    m, ns = _db.namespace_members, _db.namespaces
    spaces = conn.execute(
        sa.select(ns.c.name, m.c.role).join(m, m.c.namespace_pk == ns.c.pk)
        .where(m.c.publisher_pk == row.pk).order_by(ns.c.name)
    ).all()
    return {"pk": int(row.pk), "name": row.name, "display_name": row.display_name,
            "verified": bool(row.verified), "created": row.created_at,
            "namespaces": [(n, r) for n, r in spaces]}


def namespace_info(conn: Connection, name: str) -> dict[str, Any] | None:
    """A namespace's members and roles, or None."""
    ns, m, pub = _db.namespaces, _db.namespace_members, _db.publishers
    row = conn.execute(sa.select(ns).where(ns.c.name == name)).first()
    if row is None:
        return None
    members = conn.execute(
        sa.select(pub.c.name, m.c.role, pub.c.verified).join(m, m.c.publisher_pk == pub.c.pk)
        .where(m.c.namespace_pk == row.pk).order_by(m.c.role.desc(), pub.c.name)
    ).all()
    return {"pk": int(row.pk), "name": row.name, "created": row.created_at,
            "members": [(n, r, bool(v)) for n, r, v in members]}


def plugins_where(conn: Connection, cond: sa.ColumnElement[bool], page: int,
                  per_page: int) -> tuple[list[dict[str, Any]], int]:
    """Listed plugins matching ``cond`` by downloads, one page of them, and the total.

    The total stops at ``COUNT_CAP + 1`` (shown as "more than COUNT_CAP").
    """
    p = _db.plugins
    conds = [p.c.latest_version.is_not(None), cond]
    # counted up to COUNT_CAP only: a publisher of the whole catalogue would cost a full scan
    capped = sa.select(p.c.pk).where(*conds).limit(COUNT_CAP + 1).subquery()
    total = conn.execute(sa.select(sa.func.count()).select_from(capped)).scalar_one()
    rows = conn.execute(
        sa.select(*RESULT_COLUMNS).join(_db.publishers, _db.publishers.c.pk == p.c.publisher_pk)
        .where(*conds).order_by(p.c.downloads.desc(), p.c.id)
        .limit(per_page).offset((page - 1) * per_page)
    ).all()
    return [result_dict(r) for r in rows], int(total)


def quarantined(conn: Connection, plugin_id: str) -> list[dict[str, Any]]:
    """Versions of a plugin the moderators quarantined (kept, hidden from installs)."""
    v, p = _db.versions, _db.plugins
    rows = conn.execute(
        sa.select(v.c.version, v.c.manifest, v.c.published_at, v.c.downloads, v.c.yanked,
                  v.c.yanked_reason, v.c.signature, v.c.signer, v.c.sha256)
        .join(p, p.c.pk == v.c.plugin_pk)
        .where(p.c.id == plugin_id, v.c.quarantined == sa.true())
    ).all()
    return [{"version": r.version, "manifest": json.loads(r.manifest),
             "published_at": r.published_at.isoformat() if r.published_at else None,
             "downloads": int(r.downloads), "yanked": bool(r.yanked),
             "yanked_reason": r.yanked_reason, "signature": r.signature, "signer": r.signer,
             "sha256": r.sha256, "publisher_verified": False, "quarantined": True,
             "requires_corral": json.loads(r.manifest).get("plugin", {})
             .get("requires-corral", "")} for r in rows]


def installed_by(conn: Connection, user_pk: int, limit: int = 50) -> list[str]:
    """Plugins an account recorded installs of, most recent first."""
    i, p = _db.installs, _db.plugins
    rows = conn.execute(
        sa.select(p.c.id, sa.func.max(i.c.created_at).label("last"))
        .join(p, p.c.pk == i.c.plugin_pk).where(i.c.user_pk == user_pk)
        .group_by(p.c.id).order_by(sa.desc("last")).limit(limit)
    ).all()
    return [r.id for r in rows]
