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


def _per_plugin() -> sa.Subquery:
    """``plugin_pk, total, n, reviews``: the stars of every rated plugin."""
    r, g = reviews, _db.ratings
    visible = (r.c.hidden == sa.false()) & (r.c.deleted == sa.false())
    stars = sa.union_all(
        sa.select(r.c.plugin_pk.label("plugin_pk"), r.c.stars.label("stars"),
                  sa.literal(1).label("review")).where(visible),
        sa.select(g.c.plugin_pk, g.c.stars, sa.literal(0)),
    ).subquery()
    return (sa.select(stars.c.plugin_pk, sa.func.sum(stars.c.stars).label("total"),
                      sa.func.count().label("n"), sa.func.sum(stars.c.review).label("reviews"))
            .group_by(stars.c.plugin_pk).subquery())


def prior(conn: Connection) -> dict[str, Any]:
    """The prior: ``{"mean": m, "weight": C, "rated_plugins": k}``."""
    per = _per_plugin()
    total, count, plugins = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(per.c.total), 0),
                  sa.func.coalesce(sa.func.sum(per.c.n), 0), sa.func.count())).one()
    if not count:
        return {"mean": 0.0, "weight": 0.0, "rated_plugins": 0}
    return {"mean": int(total) / int(count), "weight": int(count) / int(plugins),
            "rated_plugins": int(plugins)}


def refresh(conn: Connection) -> dict[str, Any]:
    """Recompute ``bayes_rating`` and ``review_count`` of every rated plugin; the prior.

    Two statements whatever the number of rated plugins (an ``UPDATE ... FROM``).
    """
    pri = prior(conn)
    p = _db.plugins
    # every rated plugin has a positive average (stars are 1-5): a range on the index
    conn.execute(p.update().where(p.c.bayes_rating > 0).values(bayes_rating=0, review_count=0))
    if pri["rated_plugins"]:
        per = _per_plugin()
        cm = float(pri["weight"] * pri["mean"])
        c = float(pri["weight"])
        conn.execute(p.update().where(p.c.pk == per.c.plugin_pk).values(
            bayes_rating=(sa.literal(cm, sa.Float) + sa.cast(per.c.total, sa.Float))
            / (sa.literal(c, sa.Float) + sa.cast(per.c.n, sa.Float)),
            review_count=per.c.reviews))
    return pri
