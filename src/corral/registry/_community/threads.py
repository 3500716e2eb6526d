"""Discussions: Q&A threads per plugin, their posts, the accepted answer, closing.

A post's ``is_publisher`` is computed when it is written: whether its author
spoke for the plugin's publisher then.  The thread's author or the publisher
accepts an answer and may close the thread; a closed thread takes no posts.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, PermissionDenied, UsageError

from .. import _db
from .._accounts import as_utc
from .._db import posts, threads, users
from .plugins import plugin_ref, speaks_for
from .text import MAX_BODY, check_body, check_line
from .users import User

__all__ = ["accept_answer", "close_thread", "create_thread", "get_thread", "list_threads",
           "post_reply"]

PAGE: Final = 50


def _iso(value: Any) -> str | None:
    return None if value is None else as_utc(value).isoformat()


def _thread_row(conn: Connection, thread_id: int, moderator: bool = False) -> Any:
    t, p = threads, _db.plugins
    row = conn.execute(sa.select(t, p.c.id.label("plugin_id"), p.c.namespace_pk,
                                 p.c.closed.label("plugin_closed"), users.c.name.label("user"))
                       .join(p, p.c.pk == t.c.plugin_pk).join(users, users.c.pk == t.c.user_pk)
                       .where(t.c.pk == thread_id)).first()
    if row is None or (not moderator and (row.hidden or row.deleted or row.plugin_closed)):
        raise NotFoundError(f"no thread {thread_id}", thread=thread_id)
    return row


def _thread_dict(row: Any, replies: int | None = None, *, moderator: bool = False
                 ) -> dict[str, Any]:
    out = {"thread_id": int(row.pk), "plugin": row.plugin_id, "user": row.user,
           "title": row.title, "body": row.body, "closed": bool(row.closed),
           "accepted_post_id": row.accepted_post_pk, "created_at": _iso(row.created_at),
           "updated_at": _iso(row.updated_at)}
    if replies is not None:
        out["replies"] = replies
    if moderator:
        out.update(hidden=bool(row.hidden), deleted=bool(row.deleted))
    return out


def create_thread(conn: Connection, user: User, plugin_id: str, title: str,
                  body: str) -> dict[str, Any]:
    """Open a thread on ``plugin_id``."""
    user.require_active()
    title = check_line(title, "title")
    check_body(body, "body", MAX_BODY)
    plugin = plugin_ref(conn, plugin_id)
    now = _db.utcnow()
    pk = conn.execute(threads.insert().values(plugin_pk=plugin.pk, user_pk=user.pk, title=title,
                                              body=body, created_at=now, updated_at=now)
                      ).inserted_primary_key[0]  # type: ignore[index]
    return _thread_dict(_thread_row(conn, int(pk)), 0)


def list_threads(conn: Connection, plugin_id: str, *, limit: int = PAGE, offset: int = 0
                 ) -> dict[str, Any]:
    """A plugin's visible threads, most recently active first, with reply counts."""
    plugin = plugin_ref(conn, plugin_id)
    t, po = threads, posts
    visible = (t.c.plugin_pk == plugin.pk) & (t.c.hidden == sa.false()) & (
        t.c.deleted == sa.false())
    count = (sa.select(sa.func.count()).where(
        (po.c.thread_pk == t.c.pk) & (po.c.hidden == sa.false()) & (po.c.deleted == sa.false()))
        .scalar_subquery())
    rows = conn.execute(sa.select(t, users.c.name.label("user"),
                                  sa.literal(plugin.id).label("plugin_id"),
                                  count.label("n"))
                        .join(users, users.c.pk == t.c.user_pk).where(visible)
                        .order_by(t.c.updated_at.desc(), t.c.pk.desc())
                        .limit(limit).offset(offset)).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(t).where(visible)).scalar_one()
    return {"id": plugin.id, "total": int(total),
            "threads": [_thread_dict(r, int(r.n)) for r in rows]}


def get_thread(conn: Connection, thread_id: int, *, moderator: bool = False) -> dict[str, Any]:
    """A thread with its visible posts, oldest first."""
    row = _thread_row(conn, thread_id, moderator)
    po = posts
    where = po.c.thread_pk == thread_id
    if not moderator:
        where = where & (po.c.hidden == sa.false()) & (po.c.deleted == sa.false())
    rows = conn.execute(sa.select(po, users.c.name.label("user"))
                        .join(users, users.c.pk == po.c.user_pk).where(where)
                        .order_by(po.c.pk)).all()
    out = _thread_dict(row, len(rows), moderator=moderator)
    out["posts"] = [_post_dict(p, row.accepted_post_pk, moderator=moderator) for p in rows]
    return out


def _post_dict(row: Any, accepted: int | None, *, moderator: bool = False) -> dict[str, Any]:
    out = {"post_id": int(row.pk), "thread_id": int(row.thread_pk), "user": row.user,
           "body": row.body, "is_publisher": bool(row.is_publisher),
           "accepted": accepted is not None and int(row.pk) == int(accepted),
           "created_at": _iso(row.created_at)}
    if moderator:
        out.update(hidden=bool(row.hidden), deleted=bool(row.deleted))
    return out


def post_reply(conn: Connection, user: User, thread_id: int, body: str) -> dict[str, Any]:
    """Answer in a thread (refused once it is closed)."""
    user.require_active()
    check_body(body, "body", MAX_BODY)
    row = _thread_row(conn, thread_id)
    if row.closed:
        raise UsageError(f"thread {thread_id} is closed", thread=thread_id, reason="closed")
    is_pub = speaks_for(conn, user, int(row.namespace_pk)) is not None
    now = _db.utcnow()
    pk = conn.execute(posts.insert().values(thread_pk=thread_id, user_pk=user.pk, body=body,
                                            is_publisher=is_pub, created_at=now)
                      ).inserted_primary_key[0]  # type: ignore[index]
    conn.execute(threads.update().where(threads.c.pk == thread_id).values(updated_at=now))
    prow = conn.execute(sa.select(posts, users.c.name.label("user"))
                        .join(users, users.c.pk == posts.c.user_pk)
                        .where(posts.c.pk == pk)).one()
    return _post_dict(prow, row.accepted_post_pk)


def _may_steer(conn: Connection, user: User, row: Any) -> None:
    """The thread's author, the plugin's publisher or a moderator."""
    if user.pk == int(row.user_pk) or user.is_admin:
        return
    if speaks_for(conn, user, int(row.namespace_pk)) is not None:
        return
    raise PermissionDenied(f"only the author of thread {int(row.pk)}, the plugin's publisher "
                           "or a moderator may do that", permission="thread")


def accept_answer(conn: Connection, user: User, thread_id: int,
                  post_id: int | None) -> dict[str, Any]:
    """Mark ``post_id`` as the accepted answer (None: no accepted answer)."""
    user.require_active()
    row = _thread_row(conn, thread_id)
    _may_steer(conn, user, row)
    if post_id is not None:
        po = posts
        found = conn.execute(sa.select(po.c.pk).where(
            (po.c.pk == post_id) & (po.c.thread_pk == thread_id) & (po.c.hidden == sa.false())
            & (po.c.deleted == sa.false()))).first()
        if found is None:
            raise NotFoundError(f"thread {thread_id} has no post {post_id}", post=post_id)
    conn.execute(threads.update().where(threads.c.pk == thread_id)
                 .values(accepted_post_pk=post_id))
    return get_thread(conn, thread_id)


def close_thread(conn: Connection, user: User, thread_id: int,
                 closed: bool = True) -> dict[str, Any]:
    """Close (or reopen) a thread."""
    user.require_active()
    row = _thread_row(conn, thread_id)
    _may_steer(conn, user, row)
    conn.execute(threads.update().where(threads.c.pk == thread_id).values(closed=closed))
    return get_thread(conn, thread_id)
