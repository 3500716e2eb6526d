"""What flags and moderation actions point at: reviews, replies, threads, posts, plugins,
versions and users, each named by a kind and a string.

Content (``review``, ``reply``, ``thread``, ``post``) is named by its numeric id,
a ``plugin`` by its id, a ``version`` by ``<plugin id>@<version>``, a ``user``
by their name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, UsageError

from .. import _db
from .._db import posts, review_replies, reviews, threads, users

__all__ = ["CONTENT", "KINDS", "Target", "find", "set_content_state"]

#: Content tables by kind: each has ``hidden``, ``deleted`` and ``user_pk``.
CONTENT: Final = {"review": reviews, "reply": review_replies, "thread": threads, "post": posts}
KINDS: Final = (*CONTENT, "plugin", "version", "user")
_MAX_ID: Final = 2 ** 31 - 1  # the ids are 32-bit on PostgreSQL


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved target: its kind, canonical name, row key and state."""

    kind: str
    name: str
    pk: int
    hidden: bool  # hidden, deleted, closed, quarantined or banned
    deleted: bool
    author_pk: int | None  # who wrote it (content), or the user itself
    plugin_pk: int | None
    is_admin: bool = False  # a user who moderates


def _content_plugin(conn: Connection, kind: str, pk: int) -> int | None:
    if kind in ("review", "thread"):
        table = CONTENT[kind]
        return conn.execute(sa.select(table.c.plugin_pk).where(table.c.pk == pk)).scalar()
    if kind == "reply":
        return conn.execute(sa.select(reviews.c.plugin_pk).join(
            review_replies, review_replies.c.review_pk == reviews.c.pk)
            .where(review_replies.c.pk == pk)).scalar()
    return conn.execute(sa.select(threads.c.plugin_pk).join(
        posts, posts.c.thread_pk == threads.c.pk).where(posts.c.pk == pk)).scalar()


def find(conn: Connection, kind: str, name: str) -> Target:
    """Resolve ``kind``/``name`` (404 when there is no such thing)."""
    if kind not in KINDS:
        raise UsageError(f"target kind must be one of {', '.join(KINDS)}, got {kind!r}",
                         field="target_kind")
    missing = NotFoundError(f"no {kind} {name!r}", target_kind=kind, target=name)
    if kind in CONTENT:
        if not (name.isascii() and name.isdigit()) or int(name) > _MAX_ID:
            raise missing
        table = CONTENT[kind]
        row = conn.execute(sa.select(table.c.pk, table.c.hidden, table.c.deleted,
                                     table.c.user_pk).where(table.c.pk == int(name))).first()
        if row is None:
            raise missing
        return Target(kind, str(int(row.pk)), int(row.pk), bool(row.hidden), bool(row.deleted),
                      int(row.user_pk), _content_plugin(conn, kind, int(row.pk)))
    p, v = _db.plugins, _db.versions
    if kind == "plugin":
        prow = conn.execute(sa.select(p.c.pk, p.c.id, p.c.closed)
                            .where(p.c.id == name.strip().lower())).first()
        if prow is None:
            raise missing
        return Target(kind, str(prow.id), int(prow.pk), bool(prow.closed), False, None,
                      int(prow.pk))
    if kind == "version":
        plugin_id, sep, version = name.partition("@")
        owner = conn.execute(sa.select(p.c.pk, p.c.id)
                             .where(p.c.id == plugin_id.strip().lower())).first()
        if not sep or owner is None:
            raise missing
        vrow = conn.execute(sa.select(v.c.pk, v.c.version, v.c.quarantined).where(
            (v.c.plugin_pk == owner.pk) & (v.c.version == version)
            & (v.c.pending == sa.false()))).first()
        if vrow is None:
            raise missing
        return Target(kind, f"{owner.id}@{vrow.version}", int(vrow.pk),
                      bool(vrow.quarantined), False, None, int(owner.pk))
    urow = conn.execute(sa.select(users.c.pk, users.c.name, users.c.banned, users.c.is_admin)
                        .where(users.c.name == name)).first()
    if urow is None:
        raise missing
    return Target(kind, str(urow.name), int(urow.pk), bool(urow.banned), False, int(urow.pk),
                  None, bool(urow.is_admin))


def set_content_state(conn: Connection, target: Target, *, hidden: bool | None = None,
                      deleted: bool | None = None) -> None:
    """Set ``hidden``/``deleted`` of a review, reply, thread or post."""
    table = CONTENT[target.kind]
    values = {k: val for k, val in (("hidden", hidden), ("deleted", deleted)) if val is not None}
    conn.execute(table.update().where(table.c.pk == target.pk).values(**values))
