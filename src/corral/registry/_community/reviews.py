"""Reviews: one per user per plugin (editable, the latest counts), and publisher replies.

Only a user with a recorded install may review (:mod:`.installs`); a review is
1-5 stars and a Markdown body stored raw.  Hidden and deleted reviews are
left out of listings and of the rating (:mod:`.ratings`).  A reply is the
publisher's: only a user who speaks for the plugin's publisher may write one.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, PermissionDenied, UsageError

from .. import _db
from .._accounts import as_utc
from .._db import review_replies, reviews, users
from . import ratings
from .installs import installed_version
from .plugins import plugin_ref, speaks_for
from .text import check_body
from .users import User

__all__ = ["MAX_REVIEW", "delete_review", "get_review", "list_reviews", "reply", "review_dict",
           "upsert_review"]

MAX_REVIEW: Final = 10_000


def _iso(value: Any) -> str | None:
    return None if value is None else as_utc(value).isoformat()


def _select() -> sa.Select[Any]:
    r, rp = reviews, review_replies
    replier = users.alias("replier")
    return (sa.select(r, users.c.name.label("user"), rp.c.pk.label("reply_pk"),
                      rp.c.body.label("reply_body"), rp.c.updated_at.label("reply_at"),
                      rp.c.hidden.label("reply_hidden"), rp.c.deleted.label("reply_deleted"),
                      replier.c.name.label("reply_user"),
                      _db.publishers.c.name.label("reply_publisher"),
                      _db.plugins.c.id.label("plugin_id"))
            .join(users, users.c.pk == r.c.user_pk)
            .join(_db.plugins, _db.plugins.c.pk == r.c.plugin_pk)
            .outerjoin(rp, rp.c.review_pk == r.c.pk)
            .outerjoin(replier, replier.c.pk == rp.c.user_pk)
            .outerjoin(_db.publishers, _db.publishers.c.pk == rp.c.publisher_pk))


def review_dict(row: Any, *, moderator: bool = False) -> dict[str, Any]:
    """A review in API spelling (with the publisher's reply, if any and visible)."""
    out: dict[str, Any] = {
        "review_id": int(row.pk), "plugin": row.plugin_id, "user": row.user,
        "stars": int(row.stars), "body": row.body, "version": row.version,
        "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
        "edited": int(row.edits) > 0, "reply": None,
    }
    if moderator:
        out.update(hidden=bool(row.hidden), deleted=bool(row.deleted))
    if row.reply_pk is not None and (moderator or not (row.reply_hidden or row.reply_deleted)):
        out["reply"] = {"reply_id": int(row.reply_pk), "body": row.reply_body,
                        "user": row.reply_user, "publisher": row.reply_publisher,
                        "updated_at": _iso(row.reply_at)}
    return out


def upsert_review(conn: Connection, user: User, plugin_id: str, stars: int,
                  body: str) -> tuple[dict[str, Any], bool]:
    """Write the user's review of ``plugin_id`` (a second call edits it); (review, created)."""
    user.require_active()
    if isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= 5:
        raise UsageError(f"stars must be an integer from 1 to 5, got {stars!r}", field="stars")
    check_body(body, "body", MAX_REVIEW, allow_empty=True)
    plugin = plugin_ref(conn, plugin_id)
    version = installed_version(conn, user.pk, int(plugin.pk))
    if version is None:
        raise PermissionDenied(
            f"only someone who installed {plugin.id} may review it: install it with your "
            "account's token (a download with Authorization: Bearer cru_..., or POST "
            f"/v1/plugins/{plugin.id}/installs), then review", permission="install",
            plugin_id=plugin.id)
    r = reviews
    now = _db.utcnow()
    where = (r.c.plugin_pk == plugin.pk) & (r.c.user_pk == user.pk)
    old = conn.execute(sa.select(r.c.pk, r.c.edits, r.c.deleted).where(where)).first()
    if old is None:
        conn.execute(r.insert().values(plugin_pk=plugin.pk, user_pk=user.pk, stars=stars,
                                       body=body, version=version, created_at=now,
                                       updated_at=now))
    else:
        conn.execute(r.update().where(r.c.pk == old.pk).values(
            stars=stars, body=body, version=version, updated_at=now, edits=int(old.edits) + 1,
            deleted=False))
    ratings.refresh(conn)
    row = conn.execute(_select().where(where)).one()
    return review_dict(row), old is None


def get_review(conn: Connection, review_id: int, *, moderator: bool = False) -> dict[str, Any]:
    """One review (hidden or deleted ones only for moderators)."""
    row = conn.execute(_select().where(reviews.c.pk == review_id)).first()
    if row is None or ((row.hidden or row.deleted) and not moderator):
        raise NotFoundError(f"no review {review_id}", review=review_id)
    return review_dict(row, moderator=moderator)


def list_reviews(conn: Connection, plugin_id: str, *, limit: int = 50, offset: int = 0,
                 moderator: bool = False) -> dict[str, Any]:
    """A plugin's visible reviews, newest first, with the rating summary."""
    plugin = plugin_ref(conn, plugin_id)
    r = reviews
    where = r.c.plugin_pk == plugin.pk
    if not moderator:
        where = where & (r.c.hidden == sa.false()) & (r.c.deleted == sa.false())
    rows = conn.execute(_select().where(where).order_by(r.c.updated_at.desc(), r.c.pk.desc())
                        .limit(limit).offset(offset)).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(r).where(where)).scalar_one()
    dist = dict.fromkeys(range(1, 6), 0)
    visible = (r.c.plugin_pk == plugin.pk) & (r.c.hidden == sa.false()) & (
        r.c.deleted == sa.false())
    for stars, n in conn.execute(sa.select(r.c.stars, sa.func.count()).where(visible)
                                 .group_by(r.c.stars)):
        dist[int(stars)] = int(n)
    p = _db.plugins
    bayes = conn.execute(sa.select(p.c.bayes_rating).where(p.c.pk == plugin.pk)).scalar_one()
    return {"id": plugin.id, "total": int(total), "bayes_rating": round(float(bayes), 3),
            "distribution": {str(k): v for k, v in dist.items()},
            "reviews": [review_dict(x, moderator=moderator) for x in rows]}


def delete_review(conn: Connection, user: User, review_id: int) -> None:
    """The author withdraws their own review (another's answers 404, as if absent)."""
    r = reviews
    row = conn.execute(sa.select(r.c.pk, r.c.user_pk, r.c.deleted)
                       .where(r.c.pk == review_id)).first()
    if row is None or row.deleted or int(row.user_pk) != user.pk:
        raise NotFoundError(f"you have no review {review_id}", review=review_id)
    conn.execute(r.update().where(r.c.pk == review_id).values(deleted=True))
    ratings.refresh(conn)


def reply(conn: Connection, user: User, review_id: int, body: str) -> dict[str, Any]:
    """The publisher's reply to a review (a second call edits it)."""
    user.require_active()
    check_body(body, "body", MAX_REVIEW)
    r = reviews
    row = conn.execute(sa.select(r.c.pk, r.c.plugin_pk, r.c.hidden, r.c.deleted)
                       .where(r.c.pk == review_id)).first()
    if row is None or row.hidden or row.deleted:
        raise NotFoundError(f"no review {review_id}", review=review_id)
    ns_pk = conn.execute(sa.select(_db.plugins.c.namespace_pk, _db.plugins.c.id)
                         .where(_db.plugins.c.pk == row.plugin_pk)).one()
    publisher_pk = speaks_for(conn, user, int(ns_pk.namespace_pk))
    if publisher_pk is None:
        raise PermissionDenied(
            f"only the publisher of {ns_pk.id} replies to its reviews (user {user.name!r} "
            "does not act for a member of its namespace)", permission="publisher",
            plugin_id=str(ns_pk.id))
    rp = review_replies
    now = _db.utcnow()
    if conn.execute(sa.select(rp.c.pk).where(rp.c.review_pk == review_id)).first() is None:
        conn.execute(rp.insert().values(review_pk=review_id, user_pk=user.pk,
                                        publisher_pk=publisher_pk, body=body, created_at=now,
                                        updated_at=now))
    else:
        conn.execute(rp.update().where(rp.c.review_pk == review_id).values(
            body=body, user_pk=user.pk, publisher_pk=publisher_pk, updated_at=now,
            deleted=False))
    return get_review(conn, review_id)
