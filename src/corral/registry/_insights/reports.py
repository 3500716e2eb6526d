"""Receiving opt-in reports: checked, rate-limited per client address, stored once per
(day, nonce), and counted into the active installs of each plugin version.

Only today's or yesterday's reports (UTC) are taken, so that an old day cannot be
filled in later.  A second report with the same day and nonce is a duplicate:
answered, not counted.  Plugins this registry does not know are dropped.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._analytics.report import check_report
from corral._errors import UsageError

from .. import _db
from .._errors import RateLimited

__all__ = ["RateLimiter", "store_report"]


class RateLimiter:
    """At most ``limit`` events per ``per`` seconds for each key (a client address)."""

    def __init__(self, limit: int = 10, per: float = 60.0, keys: int = 10_000) -> None:
        self.limit, self.per, self._keys = limit, per, keys
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())

    def check(self, key: str) -> None:
        """Count one event for ``key``; :class:`RateLimited` when over the limit."""
        now = time.monotonic()
        with self._lock:
            times = self._seen.setdefault(key, collections.deque())
            self._seen.move_to_end(key)
            while times and now - times[0] > self.per:
                times.popleft()
            if len(times) >= self.limit:
                wait = max(1, int(self.per - (now - times[0])) + 1)
                raise RateLimited(f"too many reports from this address; retry in {wait} s",
                                  retry_after=wait)
            times.append(now)
            while len(self._seen) > self._keys:
                self._seen.popitem(last=False)


#: Days a report may be dated: today and yesterday (clocks and time zones differ).
_DAYS_BACK: Final = 1


def store_report(conn: Connection, doc: Any, today: dt.date | None = None) -> dict[str, Any]:
    """Check and store one report; return ``{"accepted", "duplicate", "plugins"}``."""
    report = check_report(doc)
    today = today or _db.utcnow().date()
    day = dt.date.fromisoformat(report["day"])
    if not (today - dt.timedelta(days=_DAYS_BACK)) <= day <= today:
        raise UsageError(f"day {report['day']} is not today or yesterday (UTC)", field="day")
    wanted = {e["id"]: e["version"] for e in report["plugins"]}
    known = set(conn.execute(sa.select(_db.plugins.c.id).where(
        _db.plugins.c.id.in_(sorted(wanted))) ).scalars()) if wanted else set()
    kept = sorted((pid, ver) for pid, ver in wanted.items() if pid in known)
    r = _db.usage_reports
    exists = conn.execute(sa.select(r.c.pk).where(
        (r.c.day == report["day"]) & (r.c.nonce == report["nonce"]))).first()
    if exists is not None:
        return {"accepted": False, "duplicate": True, "plugins": len(kept)}
    conn.execute(r.insert().values(day=report["day"], nonce=report["nonce"],
                                   corral_version=report["corral_version"],
                                   plugins=json.dumps(kept)))
    i = _db.daily_installs
    for pid, ver in kept:
        where = (i.c.plugin_id == pid) & (i.c.version == ver) & (i.c.day == report["day"])
        if conn.execute(i.update().where(where).values(hosts=i.c.hosts + 1)).rowcount == 0:
            conn.execute(i.insert().values(plugin_id=pid, version=ver, day=report["day"],
                                           hosts=1))
    return {"accepted": True, "duplicate": False, "plugins": len(kept)}
