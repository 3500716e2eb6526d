"""Community figures read from the database: downloads per day, active installs, version
adoption, rating trends, per-publisher totals and the ecosystem summary.

Every function takes an open connection and returns plain JSON-ready data; days
are ``YYYY-MM-DD`` (UTC) and every series is filled with zeros, oldest first.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError

from .. import _db

__all__ = [
    "ACTIVE_WINDOW",
    "active_installs",
    "day_range",
    "downloads_series",
    "ecosystem_stats",
    "plugin_stats",
    "publisher_stats",
    "rating_series",
    "record_rating",
    "reporting_days",
]

#: Active installs are averaged over this many days of reports.
ACTIVE_WINDOW: Final = 7
#: A plugin needs this many downloads in the recent window to count as trending.
TRENDING_MIN: Final = 5


def day_range(days: int, today: dt.date | None = None) -> list[str]:
    """The last ``days`` days up to ``today`` (UTC), oldest first."""
    end = today or _db.utcnow().date()
    return [(end - dt.timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def _series(found: dict[str, float], days: list[str]) -> list[dict[str, Any]]:
    return [{"day": d, "count": found.get(d, 0)} for d in days]


def downloads_series(conn: Connection, plugin_pks: list[int] | None,
                     days: list[str]) -> list[dict[str, Any]]:
    """Downloads per day over ``days`` of the plugins ``plugin_pks`` (None: all of them)."""
    d = _db.daily_downloads
    q = (sa.select(d.c.day, sa.func.sum(d.c.count)).where(d.c.day.between(days[0], days[-1]))
         .group_by(d.c.day))
    if plugin_pks is not None:
        if not plugin_pks:
            return _series({}, days)
        q = q.where(d.c.plugin_pk.in_(plugin_pks))
    return _series({day: int(n) for day, n in conn.execute(q)}, days)


def reporting_days(conn: Connection, days: list[str]) -> int:
    """On how many of ``days`` any host reported (at least 1, to divide by)."""
    r = _db.usage_reports
    n = conn.execute(sa.select(sa.func.count(sa.distinct(r.c.day))).where(
        r.c.day.between(days[0], days[-1]))).scalar()
    return max(int(n or 0), 1)


def active_installs(conn: Connection, plugin_id: str,
                    today: dt.date | None = None) -> dict[str, Any]:
    """Hosts reporting ``plugin_id`` per reporting day over the last :data:`ACTIVE_WINDOW`
    days, and each version's share of them (version adoption)."""
    days = day_range(ACTIVE_WINDOW, today)
    per_day = reporting_days(conn, days)
    i = _db.daily_installs
    rows = conn.execute(
        sa.select(i.c.version, sa.func.sum(i.c.hosts))
        .where((i.c.plugin_id == plugin_id) & i.c.day.between(days[0], days[-1]))
        .group_by(i.c.version)
    ).all()
    total = sum(int(n) for _, n in rows)
    versions = sorted(
        ({"version": v, "active_installs": round(int(n) / per_day, 2),
          "share": round(int(n) / total, 4)} for v, n in rows),
        key=lambda r: (-r["share"], r["version"]))
    return {"active_installs": round(total / per_day, 2), "window_days": ACTIVE_WINDOW,
            "versions": versions}


def record_rating(conn: Connection, plugin_pk: int, stars: int,
                  day: str | None = None) -> None:
    """Count one rating given on ``day`` (today): the hook that rating and review writers call."""
    r = _db.daily_ratings
    row = {"plugin_pk": plugin_pk, "day": day or _db.utcnow().date().isoformat(), "count": 1,
           "stars_sum": stars}
    added = {"count": r.c.count + 1, "stars_sum": r.c.stars_sum + stars}
    keys = [r.c.plugin_pk, r.c.day]
    # one statement: two raters on the same day cannot race
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        conn.execute(postgresql.insert(r).values(**row)
                     .on_conflict_do_update(index_elements=keys, set_=added))
        return
    from sqlalchemy.dialects import sqlite

    conn.execute(sqlite.insert(r).values(**row).on_conflict_do_update(index_elements=keys,
                                                                      set_=added))


def rating_series(conn: Connection, plugin_pks: list[int],
                  days: list[str]) -> list[dict[str, Any]]:
    """Ratings given per day and their average (None on a day without any)."""
    r = _db.daily_ratings
    found: dict[str, tuple[int, int]] = {}
    if plugin_pks:
        for day, n, total in conn.execute(
            sa.select(r.c.day, sa.func.sum(r.c.count), sa.func.sum(r.c.stars_sum))
            .where(r.c.plugin_pk.in_(plugin_pks) & r.c.day.between(days[0], days[-1]))
            .group_by(r.c.day)
        ):
            found[day] = (int(n), int(total))
    return [{"day": d, "count": found.get(d, (0, 0))[0],
             "average": round(found[d][1] / found[d][0], 2) if d in found else None}
            for d in days]


def plugin_stats(conn: Connection, plugin_id: str, *, days: int = 90,
                 today: dt.date | None = None) -> dict[str, Any]:
    """Everything counted about one plugin over the last ``days`` days."""
    p = _db.plugins
    row = conn.execute(sa.select(p.c.pk, p.c.id, p.c.downloads, p.c.rating, p.c.rating_count)
                       .where(p.c.id == plugin_id.strip().lower())).first()
    if row is None:
        raise NotFoundError(f"no plugin {plugin_id!r} in this registry", plugin_id=plugin_id)
    span = day_range(days, today)
    series = downloads_series(conn, [row.pk], span)
    return {
        "id": row.id,
        "days": days,
        "downloads": {"total": int(row.downloads),
                      "in_window": sum(s["count"] for s in series), "series": series},
        **active_installs(conn, row.id, today),
        "ratings": {"average": round(float(row.rating), 2), "count": int(row.rating_count),
                    "series": rating_series(conn, [row.pk], span)},
    }


def publisher_stats(conn: Connection, publisher: str, *, days: int = 90,
                    today: dt.date | None = None) -> dict[str, Any]:
    """A publisher's totals: plugins, downloads (and per day), ratings, active installs."""
    pub = _db.publishers
    ppk = conn.execute(sa.select(pub.c.pk).where(pub.c.name == publisher)).scalar()
    if ppk is None:
        raise NotFoundError(f"no publisher {publisher!r} in this registry", publisher=publisher)
    p = _db.plugins
    mine = p.c.publisher_pk == ppk
    count, downloads, ratings, stars = conn.execute(sa.select(
        sa.func.count(), sa.func.coalesce(sa.func.sum(p.c.downloads), 0),
        sa.func.coalesce(sa.func.sum(p.c.rating_count), 0),
        sa.func.coalesce(sa.func.sum(p.c.rating_sum), 0)).where(mine)).one()
    top = conn.execute(sa.select(p.c.id, p.c.downloads).where(mine)
                       .order_by(p.c.downloads.desc(), p.c.id).limit(10)).all()
    span = day_range(days, today)
    d = _db.daily_downloads
    series = _series({day: int(n) for day, n in conn.execute(
        sa.select(d.c.day, sa.func.sum(d.c.count)).join(p, p.c.pk == d.c.plugin_pk)
        .where((p.c.publisher_pk == ppk) & d.c.day.between(span[0], span[-1]))
        .group_by(d.c.day))}, span)
    win = day_range(ACTIVE_WINDOW, today)
    i = _db.daily_installs
    hosts = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(i.c.hosts), 0)).join(p, p.c.id == i.c.plugin_id)
        .where((p.c.publisher_pk == ppk) & i.c.day.between(win[0], win[-1]))).scalar()
    ratings, stars = int(ratings), int(stars)
    return {
        "publisher": publisher,
        "days": days,
        "plugins": int(count),
        "downloads": {"total": int(downloads),
                      "in_window": sum(s["count"] for s in series), "series": series},
        "active_installs": round(int(hosts or 0) / reporting_days(conn, win), 2),
        "ratings": {"count": ratings, "average": round(stars / ratings, 2) if ratings else None},
        "top": [{"id": r.id, "downloads": int(r.downloads)} for r in top],
    }


def ecosystem_stats(conn: Connection, *, days: int = 30, limit: int = 10,
                    today: dt.date | None = None) -> dict[str, Any]:
    """The whole registry: totals, top plugins, categories and trending plugins.

    Trending: downloads in the last ``days`` days against the ``days`` before,
    ``growth = recent / max(previous, 1)``, among plugins with at least
    :data:`TRENDING_MIN` recent downloads.
    """
    p, d = _db.plugins, _db.daily_downloads
    plugins_n, downloads = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(p.c.downloads), 0))).one()
    publishers_n = conn.execute(sa.select(sa.func.count()).select_from(_db.publishers)).scalar()
    top = conn.execute(sa.select(p.c.id, p.c.downloads, p.c.category)
                       .where(p.c.latest_version.is_not(None))
                       .order_by(p.c.downloads.desc(), p.c.id).limit(limit)).all()
    cats = conn.execute(sa.select(p.c.category, sa.func.count(), sa.func.sum(p.c.downloads))
                        .where(p.c.category.is_not(None)).group_by(p.c.category)).all()
    span = day_range(2 * days, today)
    recent_start = span[days]
    per: dict[int, list[int]] = {}
    for pk, day, n in conn.execute(sa.select(d.c.plugin_pk, d.c.day, d.c.count)
                                   .where(d.c.day.between(span[0], span[-1]))):
        slot = per.setdefault(pk, [0, 0])
        slot[0 if day >= recent_start else 1] += int(n)
    rising = sorted(((pk, r, b) for pk, (r, b) in per.items() if r >= TRENDING_MIN),
                    key=lambda t: (-(t[1] / max(t[2], 1)), -t[1]))[:limit]
    ids: dict[int, str] = {}
    if rising:
        ids = {int(pk): str(pid) for pk, pid in conn.execute(
            sa.select(p.c.pk, p.c.id).where(p.c.pk.in_([t[0] for t in rising])))}
    win = day_range(ACTIVE_WINDOW, today)
    reports = conn.execute(sa.select(sa.func.count()).select_from(_db.usage_reports).where(
        _db.usage_reports.c.day.between(win[0], win[-1]))).scalar()
    return {
        "days": days,
        "totals": {"plugins": int(plugins_n), "publishers": int(publishers_n or 0),
                   "downloads": int(downloads),
                   "downloads_in_window": sum(r for r, _ in per.values()),
                   "reporting_hosts": round(int(reports or 0) / reporting_days(conn, win), 2)},
        "top": [{"id": r.id, "downloads": int(r.downloads), "category": r.category}
                for r in top],
        "categories": sorted(({"category": c, "plugins": int(n), "downloads": int(s or 0)}
                              for c, n, s in cats), key=lambda r: (-r["downloads"],
                                                                   r["category"])),
        "trending": [{"id": ids.get(pk, ""), "recent": r, "previous": b,
                      "growth": round(r / max(b, 1), 2)} for pk, r, b in rising if pk in ids],
        "downloads": downloads_series(conn, None, day_range(days, today)),
    }
