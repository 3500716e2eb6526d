"""The Bayesian average rating that search sorts by.

Every star counts once: the latest review of each user (hidden and deleted
reviews do not count) and each publisher's rating from ``POST .../rating``.
For a plugin with ``n`` stars summing to ``s``::

    bayes = (C * m + s) / (C + n)

where the prior mean ``m`` is the mean of all stars given to any plugin and
the prior weight ``C`` is the mean number of stars per rated plugin.  A plugin
with one 5-star review thus ranks below one with forty 4.8-star reviews.  A
plugin with no stars has ``bayes = 0`` (it is not ranked by rating at all).
The prior moves as stars come in, so every rated plugin is recomputed on each
change (rated plugins are few; unrated ones are untouched).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import _db
from .._db import reviews

__all__ = ["prior", "refresh"]


def _stars(conn: Connection) -> dict[int, tuple[int, int, int]]:
    """``plugin_pk -> (sum, count, review count)`` over visible reviews and ratings."""
    r, g = reviews, _db.ratings
    out: dict[int, tuple[int, int, int]] = {}
    visible = (r.c.hidden == sa.false()) & (r.c.deleted == sa.false())
    for pk, total, n in conn.execute(sa.select(r.c.plugin_pk, sa.func.sum(r.c.stars),
                                               sa.func.count()).where(visible)
                                     .group_by(r.c.plugin_pk)):
        out[int(pk)] = (int(total), int(n), int(n))
    for pk, total, n in conn.execute(sa.select(g.c.plugin_pk, sa.func.sum(g.c.stars),
                                               sa.func.count()).group_by(g.c.plugin_pk)):
        s, c, rc = out.get(int(pk), (0, 0, 0))
        out[int(pk)] = (s + int(total), c + int(n), rc)
    return out


def prior(conn: Connection) -> dict[str, Any]:
    """The prior: ``{"mean": m, "weight": C, "rated_plugins": k}``."""
    stars = _stars(conn)
    return _prior(stars)


def _prior(stars: dict[int, tuple[int, int, int]]) -> dict[str, Any]:
    total = sum(s for s, _, _ in stars.values())
    count = sum(c for _, c, _ in stars.values())
    if not count:
        return {"mean": 0.0, "weight": 0.0, "rated_plugins": 0}
    return {"mean": total / count, "weight": count / len(stars), "rated_plugins": len(stars)}


def refresh(conn: Connection) -> dict[str, Any]:
    """Recompute ``bayes_rating`` and ``review_count`` of every rated plugin; the prior."""
    stars = _stars(conn)
    pri = _prior(stars)
    p = _db.plugins
    conn.execute(p.update().where((p.c.bayes_rating != 0) | (p.c.review_count != 0))
                 .values(bayes_rating=0, review_count=0))
    m, c = pri["mean"], pri["weight"]
    for pk, (total, n, n_reviews) in stars.items():
        conn.execute(p.update().where(p.c.pk == pk).values(
            bayes_rating=(c * m + total) / (c + n), review_count=n_reviews))
    return pri
