"""Install proof: installs recorded against a user's token.

A download made with a user's bearer token, or ``POST /v1/plugins/{id}/installs``
with one, records ``(user, plugin, version)``; only a user with a recorded
install of a plugin may review it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from packaging.version import InvalidVersion, Version
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError

from .. import _db
from .._db import installs
from .plugins import plugin_ref

__all__ = ["has_installed", "installed_version", "record_install"]


def _published(conn: Connection, plugin_pk: int, version: str | None,
               latest: str | None) -> str:
    v = _db.versions
    rows = conn.execute(sa.select(v.c.version).where(
        (v.c.plugin_pk == plugin_pk) & (v.c.pending == sa.false())
        & (v.c.quarantined == sa.false()))).scalars().all()
    wanted = version or latest
    for found in rows:
        try:
            if wanted is not None and Version(found) == Version(wanted):
                return str(found)
        except InvalidVersion:
            if found == wanted:
                return str(found)
    raise NotFoundError(f"no installable version {wanted!r} of this plugin",
                        version=wanted)


def record_install(conn: Connection, user_pk: int, plugin_id: str,
                   version: str | None = None) -> dict[str, Any]:
    """Record that the user installed ``plugin_id`` ``version`` (default: the latest)."""
    plugin = plugin_ref(conn, plugin_id)
    latest = conn.execute(sa.select(_db.plugins.c.latest_version)
                          .where(_db.plugins.c.pk == plugin.pk)).scalar()
    exact = _published(conn, int(plugin.pk), version, latest)
    i = installs
    where = (i.c.user_pk == user_pk) & (i.c.plugin_pk == plugin.pk) & (i.c.version == exact)
    if conn.execute(sa.select(i.c.user_pk).where(where)).first() is None:
        conn.execute(i.insert().values(user_pk=user_pk, plugin_pk=plugin.pk, version=exact,
                                       created_at=_db.utcnow()))
    return {"id": plugin.id, "version": exact, "installed": True}


def installed_version(conn: Connection, user_pk: int, plugin_pk: int) -> str | None:
    """The newest version of the plugin the user has a recorded install of, if any."""
    found = conn.execute(sa.select(installs.c.version).where(
        (installs.c.user_pk == user_pk) & (installs.c.plugin_pk == plugin_pk))).scalars().all()
    if not found:
        return None
    try:
        return str(max(found, key=Version))
    except InvalidVersion:
        return str(found[-1])


def has_installed(conn: Connection, user_pk: int, plugin_pk: int) -> bool:
    """Whether the user has any recorded install of the plugin."""
    return installed_version(conn, user_pk, plugin_pk) is not None
