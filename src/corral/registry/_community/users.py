"""User accounts: sign-up, passwords (scrypt), the publishers a user acts for, roles, bans.

A user is a person who reviews, discusses and flags; a publisher is who owns
plugins.  A user acts for a publisher once linked (by presenting one of the
publisher's tokens, or by an admin).  Passwords are hashed with scrypt
(``n=2**14, r=8, p=1``, a 16-byte salt per user) and compared in constant time;
a sign-in for an unknown name hashes too, so that timing does not tell names apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final, final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, PermissionDenied, UsageError

from .. import _db
from .._db import user_publishers, user_sessions, users
from .._errors import Unauthenticated
from .text import check_password, check_user_name

__all__ = ["User", "check_credentials", "get_user", "hash_password", "link_publisher",
           "load_user", "set_banned", "signup", "verify_password"]

_N: Final = 2 ** 14
_R: Final = 8
_P: Final = 1
#: A hash checked against when the name is unknown (same cost as a real check).
_DUMMY: Final = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "="


@final
@dataclass(frozen=True, slots=True)
class User:
    """A signed-in person, as the service sees them."""

    pk: int
    name: str
    is_admin: bool
    banned: bool
    trust_level: int
    flags_agreed: int
    flags_disagreed: int
    publishers: tuple[str, ...]  # the publishers this user acts for

    @property
    def accuracy(self) -> float:
        """Past flag accuracy, ``(agreed + 1) / (agreed + disagreed + 2)``."""
        return (self.flags_agreed + 1) / (self.flags_agreed + self.flags_disagreed + 2)

    def public(self) -> dict[str, object]:
        """What anyone may see of this user."""
        return {"name": self.name, "is_admin": self.is_admin, "banned": self.banned,
                "trust_level": self.trust_level, "publishers": list(self.publishers)}

    def require_active(self) -> None:
        """Raise unless the account may act (banned accounts may not)."""
        if self.banned:
            raise PermissionDenied(f"account {self.name!r} is banned", permission="account")


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password`` with a fresh salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(want) or 32)
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(got, want)


def signup(conn: Connection, name: str, password: str) -> int:
    """Create a user; return its primary key."""
    check_user_name(name)
    check_password(password)
    if conn.execute(sa.select(users.c.pk).where(users.c.name == name)).first() is not None:
        raise UsageError(f"the user name {name!r} is taken", field="name")
    result = conn.execute(users.insert().values(
        name=name, password_hash=hash_password(password), created_at=_db.utcnow()))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def check_credentials(conn: Connection, name: str, password: str) -> int | None:
    """The user's primary key when ``password`` is theirs, else None (same cost either way)."""
    row = conn.execute(sa.select(users.c.pk, users.c.password_hash)
                       .where(users.c.name == name)).first()
    ok = verify_password(password, row.password_hash if row is not None else _DUMMY)
    return int(row.pk) if ok and row is not None else None


def load_user(conn: Connection, pk: int) -> User:
    """The user with primary key ``pk``."""
    row = conn.execute(sa.select(users).where(users.c.pk == pk)).first()
    if row is None:
        raise Unauthenticated("that account no longer exists")
    pubs = conn.execute(
        sa.select(_db.publishers.c.name)
        .join(user_publishers, user_publishers.c.publisher_pk == _db.publishers.c.pk)
        .where(user_publishers.c.user_pk == pk).order_by(_db.publishers.c.name)
    ).scalars().all()
    return User(pk=int(row.pk), name=str(row.name), is_admin=bool(row.is_admin),
                banned=bool(row.banned), trust_level=int(row.trust_level),
                flags_agreed=int(row.flags_agreed), flags_disagreed=int(row.flags_disagreed),
                publishers=tuple(str(p) for p in pubs))


def get_user(conn: Connection, name: str) -> User:
    """The user called ``name``."""
    pk = conn.execute(sa.select(users.c.pk).where(users.c.name == name)).scalar()
    if pk is None:
        raise NotFoundError(f"no user {name!r}", user=name)
    return load_user(conn, int(pk))


def set_banned(conn: Connection, user_pk: int, banned: bool) -> None:
    """Ban or unban; a ban also ends every session (tokens stop working while banned)."""
    conn.execute(users.update().where(users.c.pk == user_pk).values(banned=banned))
    if banned:
        conn.execute(user_sessions.update().where(user_sessions.c.user_pk == user_pk)
                     .values(revoked=True))


def link_publisher(conn: Connection, user_pk: int, publisher_pk: int) -> None:
    """Let the user act for the publisher (idempotent)."""
    up = user_publishers
    where = (up.c.user_pk == user_pk) & (up.c.publisher_pk == publisher_pk)
    if conn.execute(sa.select(up.c.user_pk).where(where)).first() is None:
        conn.execute(up.insert().values(user_pk=user_pk, publisher_pk=publisher_pk))
