"""Publishers, namespaces, membership roles and API tokens.

A token reads ``crl_<token_id>_<secret>``: ``token_id`` (public, 12 hex
characters) finds the row, the secret (32 random bytes, URL-safe base64) is
never stored: only its sha256 is, compared in constant time.  A token has
scopes (``publish``, ``yank``, ``admin``) and usually an expiry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, PermissionDenied, UsageError

from . import _db
from ._errors import Unauthenticated
from ._names import skeleton

__all__ = [
    "ROLES",
    "SCOPES",
    "Principal",
    "add_member",
    "authenticate",
    "create_namespace",
    "create_publisher",
    "create_token",
    "namespace_role",
    "publisher_pk",
    "revoke_token",
    "verify_publisher",
]

SCOPES: Final = ("publish", "yank", "admin")
ROLES: Final = ("owner", "maintainer")
_NAME_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
_TOKEN_RE: Final = re.compile(r"^crl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@final
@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: the token's publisher and the token's scopes."""

    publisher_pk: int
    publisher: str
    scopes: frozenset[str]
    token_id: str

    def require(self, scope: str) -> None:
        """Raise unless the token carries ``scope`` (``admin`` carries every scope)."""
        if scope not in self.scopes and "admin" not in self.scopes:
            raise PermissionDenied(
                f"token {self.token_id} lacks the {scope!r} scope", permission=f"scope:{scope}"
            )


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; they were written as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"{what} {name!r} must be 1-64 lowercase letters, digits, '-' or '_'", field=what
        )
    return name


def publisher_pk(conn: Connection, name: str) -> int:
    """The primary key of publisher ``name``."""
    pk = conn.execute(
        sa.select(_db.publishers.c.pk).where(_db.publishers.c.name == name)
    ).scalar()
    if pk is None:
        raise NotFoundError(f"no publisher {name!r}", publisher=name)
    return int(pk)


def create_publisher(
    conn: Connection,
    name: str,
    *,
    email: str | None = None,
    display_name: str = "",
    verified: bool = False,
) -> int:
    """Create a publisher account; return its primary key."""
    _check_name(name, "publisher")
    exists = conn.execute(
        sa.select(_db.publishers.c.pk).where(_db.publishers.c.name == name)
    ).scalar()
    if exists is not None:
        raise UsageError(f"publisher {name!r} already exists", publisher=name)
    result = conn.execute(
        _db.publishers.insert().values(
            name=name,
            email=email,
            display_name=display_name or name,
            verified=verified,
            created_at=_db.utcnow(),
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def verify_publisher(conn: Connection, name: str, verified: bool = True) -> None:
    """Mark a publisher verified (or not)."""
    pk = publisher_pk(conn, name)
    conn.execute(
        _db.publishers.update().where(_db.publishers.c.pk == pk).values(verified=verified)
    )


def create_namespace(conn: Connection, name: str, owner: str) -> int:
    """Create namespace ``name`` owned by publisher ``owner``; refuse look-alikes."""
    _check_name(name, "namespace")
    owner_pk = publisher_pk(conn, name=owner)
    row = conn.execute(
        sa.select(_db.namespaces.c.name).where(_db.namespaces.c.skeleton == skeleton(name))
    ).first()
    if row is not None:
        if row.name == name:
            raise UsageError(f"namespace {name!r} already exists", namespace=name)
        raise UsageError(
            f"namespace {name!r} reads like the existing namespace {row.name!r}",
            namespace=name,
            confusable_with=row.name,
        )
    result = conn.execute(
        _db.namespaces.insert().values(
            name=name, skeleton=skeleton(name), created_at=_db.utcnow()
        )
    )
    ns_pk = int(result.inserted_primary_key[0])  # type: ignore[index]
    conn.execute(
        _db.namespace_members.insert().values(
            namespace_pk=ns_pk, publisher_pk=owner_pk, role="owner"
        )
    )
    return ns_pk


def add_member(conn: Connection, namespace: str, publisher: str, role: str = "maintainer") -> None:
    """Add (or re-role) a publisher in a namespace."""
    if role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}, got {role!r}", role=role)
    ns_pk = conn.execute(
        sa.select(_db.namespaces.c.pk).where(_db.namespaces.c.name == namespace)
    ).scalar()
    if ns_pk is None:
        raise NotFoundError(f"no namespace {namespace!r}", namespace=namespace)
    pub_pk = publisher_pk(conn, publisher)
    members = _db.namespace_members
    where = (members.c.namespace_pk == ns_pk) & (members.c.publisher_pk == pub_pk)
    if conn.execute(sa.select(members.c.role).where(where)).first() is None:
        conn.execute(members.insert().values(namespace_pk=ns_pk, publisher_pk=pub_pk, role=role))
    else:
        conn.execute(members.update().where(where).values(role=role))


def namespace_role(conn: Connection, namespace: str, pub_pk: int) -> str | None:
    """The publisher's role in ``namespace``, or None when not a member."""
    members = _db.namespace_members
    role = conn.execute(
        sa.select(members.c.role)
        .join(_db.namespaces, _db.namespaces.c.pk == members.c.namespace_pk)
        .where((_db.namespaces.c.name == namespace) & (members.c.publisher_pk == pub_pk))
    ).scalar()
    return None if role is None else str(role)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    conn: Connection,
    publisher: str,
    *,
    scopes: Iterable[str] = ("publish",),
    expires_in: dt.timedelta | None = dt.timedelta(days=90),
    description: str = "",
) -> str:
    """Issue a token for ``publisher``; the plaintext is returned once and never stored."""
    pub_pk = publisher_pk(conn, publisher)
    wanted = sorted(set(scopes))
    bad = [s for s in wanted if s not in SCOPES]
    if bad or not wanted:
        raise UsageError(
            f"token scopes must be among {', '.join(SCOPES)}, got {wanted!r}", scopes=wanted
        )
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = _db.utcnow()
    conn.execute(
        _db.tokens.insert().values(
            token_id=token_id,
            secret_sha256=_hash(secret),
            publisher_pk=pub_pk,
            scopes=" ".join(wanted),
            description=description,
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
        )
    )
    return f"crl_{token_id}_{secret}"


def revoke_token(conn: Connection, token_id: str) -> None:
    """Revoke a token by its public id (the part after ``crl_``)."""
    result = conn.execute(
        _db.tokens.update().where(_db.tokens.c.token_id == token_id).values(revoked=True)
    )
    if result.rowcount == 0:
        raise NotFoundError(f"no token {token_id!r}", token=token_id)


def authenticate(conn: Connection, token: str | None) -> Principal:
    """The principal a bearer token stands for.

    Raises:
        Unauthenticated: no token, a malformed or unknown one, a wrong secret,
            or a revoked or expired token (each says which).
    """
    if not token:
        raise Unauthenticated("this needs an API token (Authorization: Bearer crl_...)")
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        raise Unauthenticated("malformed API token (expected crl_<id>_<secret>)")
    token_id, secret = match.groups()
    row = conn.execute(
        sa.select(
            _db.tokens.c.secret_sha256,
            _db.tokens.c.scopes,
            _db.tokens.c.expires_at,
            _db.tokens.c.revoked,
            _db.publishers.c.pk,
            _db.publishers.c.name,
        )
        .join(_db.publishers, _db.publishers.c.pk == _db.tokens.c.publisher_pk)
        .where(_db.tokens.c.token_id == token_id)
    ).first()
    # Hash even when the id is unknown, so timing does not tell ids apart.
    presented = _hash(secret)
    stored = row.secret_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(presented, stored) or row is None:
        raise Unauthenticated("invalid API token")
    if row.revoked:
        raise Unauthenticated(f"API token {token_id} was revoked", token=token_id)
    if row.expires_at is not None and as_utc(row.expires_at) <= _db.utcnow():
        raise Unauthenticated(f"API token {token_id} has expired", token=token_id)
    return Principal(
        publisher_pk=int(row.pk),
        publisher=str(row.name),
        scopes=frozenset(str(row.scopes).split()),
        token_id=token_id,
    )
