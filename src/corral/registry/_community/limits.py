"""Rate limits kept in the database (so every server process sees the same counts).

A limit is ``(kind, count, window)``: at most ``count`` events of ``kind`` per
subject (``user:<pk>``, ``addr:<ip>``, ``name:<user name>``) in ``window``
seconds.  Over it, :class:`~.._errors.RateLimited` says when to retry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import _db
from .._accounts import as_utc
from .._db import rate_events
from .._errors import RateLimited

__all__ = ["FLAGS", "POSTS", "REVIEWS", "SIGNIN", "SIGNIN_ADDRESS", "SIGNUPS", "Limit", "check",
           "record"]


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` events of ``kind`` per subject in ``window`` seconds."""

    kind: str
    count: int
    window: int
    what: str


#: Failed sign-ins per account (guessing one password) ...
SIGNIN: Final = Limit("signin_fail", 5, 15 * 60, "failed sign-ins for this account")
#: ... and per client address (one password tried on many accounts; several people
#: may share an address, hence the higher count).
SIGNIN_ADDRESS: Final = Limit("signin_addr", 20, 15 * 60, "failed sign-ins from this address")
SIGNUPS: Final = Limit("signup", 50, 3600, "sign-ups from this address")
REVIEWS: Final = Limit("review", 10, 3600, "reviews or review edits")
POSTS: Final = Limit("post", 30, 3600, "threads and posts")
FLAGS: Final = Limit("flag", 30, 3600, "flags")


def check(conn: Connection, limit: Limit, *subjects: str) -> None:
    """Raise :class:`RateLimited` when any subject is at ``limit`` already."""
    now = _db.utcnow()
    since = now - dt.timedelta(seconds=limit.window)
    e = rate_events
    for subject in subjects:
        count, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(e.c.at)).where(
                (e.c.kind == limit.kind) & (e.c.subject == subject) & (e.c.at > since))
        ).one()
        if int(count) >= limit.count and oldest is not None:
            wait = (as_utc(oldest) + dt.timedelta(seconds=limit.window) - now).total_seconds()
            raise RateLimited(
                f"too many {limit.what} ({limit.count} per {limit.window // 60} minutes); "
                f"retry in {int(wait) + 1} seconds", retry_after=int(wait) + 1,
                limit=limit.kind)


def record(conn: Connection, limit: Limit, *subjects: str) -> None:
    """Count one event of ``limit.kind`` for each subject (old events are pruned)."""
    now = _db.utcnow()
    e = rate_events
    for subject in subjects:
        conn.execute(e.insert().values(kind=limit.kind, subject=subject, at=now))
    conn.execute(e.delete().where(
        (e.c.kind == limit.kind) & (e.c.subject.in_(subjects))
        & (e.c.at < now - dt.timedelta(seconds=limit.window))))
