"""Publishers' signing keys, and the signature check every upload goes through.

A publisher registers the Ed25519 public keys it signs with.  On publish the
archive's ``corral.sig`` is verified (:func:`corral._distribution.signing.verify_archive`):

- ``modified`` or ``invalid``: refused (:class:`~corral._errors.SignatureInvalid`);
- signed by a key the publisher revoked: refused;
- signed by any other key: stored as ``signature = "signed"`` with the key id
  in ``signer``;
- no ``corral.sig``: stored as ``"unsigned"``.

A version is ``publisher_verified`` when its signer is a live key of its
publisher and the publisher is verified; this is computed when read, so
revoking a key or unverifying a publisher takes effect at once in the API, and
:func:`signed_plugins` names the plugins whose signed TUF index must follow.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from corral._errors import NotFoundError, SignatureInvalid, UsageError
from corral._model.manifest import Manifest

from . import _accounts, _db

__all__ = [
    "add_publisher_key",
    "check_upload_signature",
    "list_publisher_keys",
    "publisher_verified_column",
    "record_signature",
    "refuse_revoked_signer",
    "revoke_publisher_key",
    "signed_plugins",
]


def _key_dict(row: Any) -> dict[str, Any]:
    return {
        "keyid": row.keyid,
        "public_key": row.public_key,
        "created_at": _accounts.as_utc(row.created_at).isoformat(),
        "revoked": bool(row.revoked),
    }


def add_publisher_key(conn: Connection, publisher: str, public_key: str) -> dict[str, Any]:
    """Register ``public_key`` (base64 raw or PEM) for ``publisher``; idempotent.

    Raises:
        NotFoundError: no such publisher.
        UsageError: not an Ed25519 public key, or the key was revoked before.
    """
    from corral._distribution.signing import keyid_of, parse_public_key

    pub_pk = _accounts.publisher_pk(conn, publisher)
    raw = parse_public_key(public_key)
    keyid = keyid_of(raw)
    k = _db.publisher_keys
    row = conn.execute(
        sa.select(k).where((k.c.publisher_pk == pub_pk) & (k.c.keyid == keyid))
    ).first()
    if row is not None:
        if row.revoked:
            raise UsageError(
                f"key {keyid} of publisher {publisher!r} was revoked; it cannot be added again",
                publisher=publisher,
                keyid=keyid,
            )
        return _key_dict(row)
    conn.execute(k.insert().values(
        publisher_pk=pub_pk, keyid=keyid, public_key=base64.b64encode(raw).decode("ascii"),
        created_at=_db.utcnow(), revoked=False,
    ))
    row = conn.execute(
        sa.select(k).where((k.c.publisher_pk == pub_pk) & (k.c.keyid == keyid))
    ).one()
    return _key_dict(row)


def revoke_publisher_key(conn: Connection, publisher: str, keyid: str) -> dict[str, Any]:
    """Revoke one of ``publisher``'s keys (its signatures stop counting as verified)."""
    pub_pk = _accounts.publisher_pk(conn, publisher)
    k = _db.publisher_keys
    where = (k.c.publisher_pk == pub_pk) & (k.c.keyid == keyid.strip().lower())
    if conn.execute(k.update().where(where).values(revoked=True)).rowcount == 0:
        raise NotFoundError(f"publisher {publisher!r} has no key {keyid!r}",
                            publisher=publisher, keyid=keyid)
    return _key_dict(conn.execute(sa.select(k).where(where)).one())


def list_publisher_keys(conn: Connection, publisher: str) -> list[dict[str, Any]]:
    """``publisher``'s keys, oldest first, revoked ones included."""
    pub_pk = _accounts.publisher_pk(conn, publisher)
    k = _db.publisher_keys
    rows = conn.execute(
        sa.select(k).where(k.c.publisher_pk == pub_pk).order_by(k.c.created_at, k.c.pk)
    ).all()
    return [_key_dict(r) for r in rows]


def check_upload_signature(archive: Path, manifest: Manifest) -> str | None:
    """The signer key id of an upload (None if unsigned); refuse a broken signature."""
    from corral._distribution.signing import verify_archive

    status = verify_archive(archive)
    if status.state in ("modified", "invalid"):
        shown = "; ".join(status.problems[:5])
        raise SignatureInvalid(
            f"{manifest.id} {manifest.version}: the archive's signature is {status.state}: "
            f"{shown}",
            plugin_id=manifest.id,
            version=manifest.version,
            state=status.state,
            keyid=status.keyid,
            problems=list(status.problems),
        )
    return status.keyid if status.state == "signed" else None


def refuse_revoked_signer(
    conn: Connection, publisher_pk: int, keyid: str | None, manifest: Manifest
) -> None:
    """Refuse an upload signed by a key its own publisher revoked."""
    if keyid is None:
        return
    k = _db.publisher_keys
    revoked = conn.execute(
        sa.select(k.c.revoked).where((k.c.publisher_pk == publisher_pk) & (k.c.keyid == keyid))
    ).scalar()
    if revoked:
        raise SignatureInvalid(
            f"{manifest.id} {manifest.version} is signed by key {keyid}, which its publisher "
            "revoked",
            plugin_id=manifest.id,
            version=manifest.version,
            state="signed",
            keyid=keyid,
        )


def record_signature(conn: Connection, plugin_id: str, version: str, keyid: str | None) -> None:
    """Store a just-written version's signature state and signer."""
    if keyid is None:
        return
    v, p = _db.versions, _db.plugins
    plugin_pk = sa.select(p.c.pk).where(p.c.id == plugin_id).scalar_subquery()
    conn.execute(
        v.update()
        .where((v.c.plugin_pk == plugin_pk) & (v.c.version == version))
        .values(signature="signed", signer=keyid)
    )


def publisher_verified_column() -> Any:
    """A ``publisher_verified`` column for selects over ``versions``.

    True when the signer is a non-revoked key of the version's publisher and
    that publisher is verified.
    """
    v, k, pub = _db.versions, _db.publisher_keys, _db.publishers
    own_key = sa.exists().where(
        (k.c.publisher_pk == v.c.publisher_pk) & (k.c.keyid == v.c.signer)
        & (k.c.revoked == sa.false())
    )
    verified = sa.exists().where((pub.c.pk == v.c.publisher_pk) & (pub.c.verified == sa.true()))
    return sa.case((v.c.signer.is_not(None) & own_key & verified, True),
                   else_=False).label("publisher_verified")


def signed_plugins(conn: Connection, publisher: str, keyid: str | None = None) -> list[str]:
    """Plugins with a version ``publisher`` uploaded signed (by ``keyid``, if given).

    These are the plugins whose ``publisher_verified`` changes when the
    publisher is (un)verified or the key is added or revoked.
    """
    v, p = _db.versions, _db.plugins
    where = (v.c.publisher_pk == _accounts.publisher_pk(conn, publisher)) \
        & v.c.signer.is_not(None) & v.c.sha256.is_not(None)
    if keyid is not None:
        where = where & (v.c.signer == keyid.strip().lower())
    rows = conn.execute(sa.select(p.c.id).distinct()
                        .join(v, v.c.plugin_pk == p.c.pk).where(where)).scalars()
    return sorted(str(r) for r in rows)
