"""API tokens of users: ``cru_<token_id>_<secret>``, only the secret's sha256 stored.

A user lists and revokes only their own tokens: another user's token id is
answered exactly as an unknown one (404), so ids cannot be probed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, UsageError

from .. import _db
from .._accounts import as_utc
from .._db import user_tokens
from .._errors import Unauthenticated

__all__ = ["MAX_TOKENS", "create_token", "is_user_token", "list_tokens", "revoke_token",
           "token_user_pk"]

MAX_TOKENS: Final = 50
_TOKEN_RE: Final = re.compile(r"^cru_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_user_token(value: str | None) -> bool:
    """Whether ``value`` is shaped like a user token (``cru_...``)."""
    return bool(value) and str(value).startswith("cru_")


def create_token(conn: Connection, user_pk: int, *, description: str = "",
                 expires_in: dt.timedelta | None = dt.timedelta(days=90)) -> dict[str, Any]:
    """Issue a token; the plaintext is in the answer once and never stored."""
    t = user_tokens
    live = conn.execute(sa.select(sa.func.count()).where(
        (t.c.user_pk == user_pk) & (t.c.revoked == sa.false()))).scalar_one()
    if int(live) >= MAX_TOKENS:
        raise UsageError(f"an account holds at most {MAX_TOKENS} live tokens; revoke one")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    now = _db.utcnow()
    expires = None if expires_in is None else now + expires_in
    conn.execute(t.insert().values(token_id=token_id, secret_sha256=_hash(secret),
                                   user_pk=user_pk, description=description,
                                   created_at=now, expires_at=expires))
    return {"token": f"cru_{token_id}_{secret}", "token_id": token_id,
            "description": description, "created_at": now.isoformat(),
            "expires_at": expires.isoformat() if expires else None}


def list_tokens(conn: Connection, user_pk: int) -> list[dict[str, Any]]:
    """The user's tokens (ids and descriptions; never a secret)."""
    t = user_tokens
    rows = conn.execute(sa.select(t).where(t.c.user_pk == user_pk).order_by(t.c.pk)).all()
    return [{"token_id": r.token_id, "description": r.description,
             "created_at": as_utc(r.created_at).isoformat(),
             "expires_at": as_utc(r.expires_at).isoformat() if r.expires_at else None,
             "revoked": bool(r.revoked)} for r in rows]


def revoke_token(conn: Connection, user_pk: int, token_id: str) -> None:
    """Revoke one of the user's own tokens (another's is "no such token")."""
    t = user_tokens
    done = conn.execute(t.update().where((t.c.token_id == token_id) & (t.c.user_pk == user_pk))
                        .values(revoked=True))
    if done.rowcount == 0:
        raise NotFoundError(f"you have no token {token_id!r}", token=token_id)


def token_user_pk(conn: Connection, token: str) -> int:
    """The user a live token belongs to (raises Unauthenticated otherwise)."""
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        raise Unauthenticated("malformed user token (expected cru_<id>_<secret>)")
    token_id, secret = match.groups()
    t = user_tokens
    row = conn.execute(sa.select(t.c.secret_sha256, t.c.user_pk, t.c.revoked, t.c.expires_at)
                       .where(t.c.token_id == token_id)).first()
    stored = row.secret_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(_hash(secret), stored) or row is None:
        raise Unauthenticated("invalid user token")
    if row.revoked:
        raise Unauthenticated(f"user token {token_id} was revoked", token=token_id)
    if row.expires_at is not None and as_utc(row.expires_at) <= _db.utcnow():
        raise Unauthenticated(f"user token {token_id} has expired", token=token_id)
    return int(row.user_pk)
