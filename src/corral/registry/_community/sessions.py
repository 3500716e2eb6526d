"""Server-side sign-in sessions and their CSRF tokens.

A session id reads ``crs_<43 random characters>``; only its sha256 is stored.
Sessions expire (:data:`SESSION_TTL`), are replaced by a new id at every sign-in
(:func:`rotate`: an id planted before sign-in is worth nothing after it) and
revoked at sign-out or ban.  The CSRF token of a session is an HMAC keyed by a
random secret of that session, so a token from one session never passes
:func:`check_csrf` for another.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final, final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import _db
from .._accounts import as_utc
from .._db import user_sessions
from .._errors import Unauthenticated

__all__ = ["SESSION_TTL", "Session", "check_csrf", "create_session", "csrf_token", "end_session",
           "is_session_id", "rotate", "session_user_pk"]

SESSION_TTL: Final = dt.timedelta(days=14)
_SESSION_RE: Final = re.compile(r"^crs_[A-Za-z0-9_-]{43}$")


@final
@dataclass(frozen=True, slots=True)
class Session:
    """A new session: its id (the cookie value, shown once), CSRF token and expiry."""

    id: str
    csrf_token: str
    expires_at: dt.datetime
    user_pk: int

    def to_dict(self) -> dict[str, object]:
        """The API spelling (the id is the bearer credential of the session)."""
        return {"session": self.id, "csrf_token": self.csrf_token,
                "expires_at": self.expires_at.isoformat()}


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def is_session_id(value: str | None) -> bool:
    """Whether ``value`` is shaped like a session id."""
    return bool(value) and _SESSION_RE.fullmatch(value or "") is not None


def _csrf(secret: str, session_id: str) -> str:
    return hmac.new(bytes.fromhex(secret), b"csrf:" + _digest(session_id).encode(),
                    hashlib.sha256).hexdigest()


def create_session(conn: Connection, user_pk: int, ttl: dt.timedelta = SESSION_TTL) -> Session:
    """Open a session for ``user_pk``."""
    session_id = "crs_" + secrets.token_urlsafe(32)
    secret = secrets.token_hex(32)
    now = _db.utcnow()
    conn.execute(user_sessions.insert().values(
        id_sha256=_digest(session_id), user_pk=user_pk, csrf_secret=secret,
        created_at=now, expires_at=now + ttl))
    return Session(session_id, _csrf(secret, session_id), now + ttl, user_pk)


def _live_row(conn: Connection, session_id: str | None) -> sa.Row[tuple[int, int, str]]:
    if not session_id or not is_session_id(session_id):
        raise Unauthenticated("not signed in (no session, or a malformed one)")
    s = user_sessions
    row = conn.execute(sa.select(s.c.pk, s.c.user_pk, s.c.csrf_secret, s.c.expires_at,
                                 s.c.revoked).where(s.c.id_sha256 == _digest(session_id))
                       ).first()
    if row is None or row.revoked:
        raise Unauthenticated("the session has ended; sign in again")
    if as_utc(row.expires_at) <= _db.utcnow():
        raise Unauthenticated("the session has expired; sign in again")
    return row  # type: ignore[return-value]


def session_user_pk(conn: Connection, session_id: str | None) -> int:
    """The user a live session belongs to (raises Unauthenticated otherwise)."""
    return int(_live_row(conn, session_id).user_pk)


def csrf_token(conn: Connection, session_id: str) -> str:
    """The CSRF token of a live session (the same for its whole life)."""
    row = _live_row(conn, session_id)
    return _csrf(str(row.csrf_secret), session_id)


def check_csrf(conn: Connection, session_id: str | None, token: str | None) -> bool:
    """Whether ``token`` is the CSRF token of this live session (constant-time compare)."""
    try:
        row = _live_row(conn, session_id)
    except Unauthenticated:
        return False
    want = _csrf(str(row.csrf_secret), str(session_id))
    return bool(token) and hmac.compare_digest(want, str(token))


def end_session(conn: Connection, session_id: str | None) -> None:
    """Revoke a session (sign-out); an unknown or ended one is ignored."""
    if session_id and is_session_id(session_id):
        conn.execute(user_sessions.update()
                     .where(user_sessions.c.id_sha256 == _digest(session_id))
                     .values(revoked=True))


def rotate(conn: Connection, session_id: str) -> Session:
    """Replace a live session by a fresh one of the same user; the old id stops working."""
    user_pk = session_user_pk(conn, session_id)
    end_session(conn, session_id)
    return create_session(conn, user_pk)
