"""The plugins the community talks about, and who speaks for each one's publisher.

A user speaks for a plugin's publisher when linked to a publisher that is an
owner or maintainer of the plugin's namespace (computed here, never taken
from the request).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError

from .. import _db
from .._db import user_publishers
from .users import User

__all__ = ["plugin_ref", "speaks_for"]


def plugin_ref(conn: Connection, plugin_id: str, *, allow_closed: bool = False) -> Any:
    """``(pk, id, namespace_pk, closed)`` of a listed plugin (closed ones only if asked)."""
    p = _db.plugins
    row = conn.execute(sa.select(p.c.pk, p.c.id, p.c.namespace_pk, p.c.closed)
                       .where(p.c.id == plugin_id.strip().lower())).first()
    if row is None or (row.closed and not allow_closed):
        raise NotFoundError(f"no plugin {plugin_id!r} in this registry", plugin_id=plugin_id)
    return row


def speaks_for(conn: Connection, user: User, namespace_pk: int) -> int | None:
    """The publisher (pk) through which ``user`` is a member of the namespace, if any."""
    m, up = _db.namespace_members, user_publishers
    pk = conn.execute(
        sa.select(m.c.publisher_pk)
        .join(up, up.c.publisher_pk == m.c.publisher_pk)
        .where((up.c.user_pk == user.pk) & (m.c.namespace_pk == namespace_pk))
        .order_by(m.c.publisher_pk).limit(1)
    ).scalar()
    return None if pk is None else int(pk)
