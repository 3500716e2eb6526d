"""The registry itself: accounts, publish, yank, info, resolve, download, search.

:class:`Registry` is what the HTTP layer and the admin CLI call; it owns a
database engine and an :class:`~._store.ArtifactStore`.  It imports only
corral's model layer (manifest, archive, validation), never the host runtime.

Publishing is all or nothing: the archive is checked exactly as ``corral
validate`` checks it, the namespace and version rules are enforced, then the
blob is stored and the rows written in one transaction; if anything fails after
the blob was stored, the blob is removed again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import sqlalchemy as sa
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from rapidfuzz.distance import OSA
from sqlalchemy.engine import Connection, Engine

from corral._archive import extract_archive
from corral._errors import (
    InvalidPluginError,
    NotFoundError,
    PermissionDenied,
    PolicyDenied,
    UsageError,
)
from corral._manifest import Manifest, load_manifest
from corral._validate import validate_plugin
from corral._version import __version__

from . import _accounts, _db, _keys
from ._accounts import Principal
from ._counts import DownloadCounter
from ._errors import UploadTooLarge, VersionExists
from ._names import control_char_error, normalise_name, skeleton, words
from ._search import NameIndex, SearchParams, refold_skeletons, search
from ._store import ArtifactStore, FilesystemStore

__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "Download",
    "Registry",
    "default_data_dir",
    "index_text",
    "plugin_fields",
]

DEFAULT_MAX_UPLOAD: Final = 50 * 1024 * 1024


def default_data_dir() -> Path:
    """``$CORRAL_REGISTRY_DATA``, else ``registry/`` in the corral home."""
    env = os.environ.get("CORRAL_REGISTRY_DATA")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("CORRAL_HOME")
    if home:
        return Path(home).expanduser() / "registry"
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg or Path.home() / ".local" / "share") / "corral" / "registry"


@final
@dataclass(frozen=True, slots=True)
class Download:
    """An artifact ready to send: where it is and what it must hash to."""

    plugin_id: str
    version: str
    sha256: str
    size: int
    path: Path

    @property
    def filename(self) -> str:
        """The archive's file name as offered to the client."""
        return f"{self.plugin_id}-{self.version}.corral"


def plugin_fields(manifest: Manifest) -> dict[str, Any]:
    """Searchable plugin columns derived from a manifest."""
    local = manifest.id.split(".", 1)[1]
    tags = list(dict.fromkeys(t.lower() for t in manifest.tags))
    return {
        "name": manifest.name,
        "norm_name": normalise_name(local),
        "summary": manifest.description,
        "category": manifest.category.lower() if manifest.category else None,
        "tags": " ".join(tags),
        "author": ", ".join(a.name for a in manifest.authors),
    }


def _latest(version_rows: list[tuple[str, bool]]) -> str | None:
    """The newest version that is not yanked (PEP 592), by PEP 440 order."""
    live = [v for v, yanked in version_rows if not yanked]
    if not live:
        return None
    final_ = [v for v in live if not Version(v).is_prerelease]
    return max(final_ or live, key=Version)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return _accounts.as_utc(value).isoformat()


class Registry:
    """A plugin registry over one database and one artifact store."""

    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        *,
        tmp_dir: Path | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    ) -> None:
        self.engine = engine
        self.store = store
        self.tmp_dir = tmp_dir
        self.max_upload_bytes = max_upload_bytes
        self.names = NameIndex()
        #: Download counts, written in batches off the request path.
        self.downloads = DownloadCounter(engine)
        #: The data directory (``Registry.open``); TUF metadata lives in ``tuf/`` under it.
        self.data_dir: Path | None = None
        _db.migrate(engine)

    @classmethod
    def open(
        cls,
        data: Path | str | None = None,
        db: str | None = None,
        *,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    ) -> Registry:
        """Open (creating or migrating) the registry under ``data``, or at ``db``.

        ``data`` holds ``registry.db`` (unless ``db`` names another database),
        ``artifacts/`` and ``tmp/``.
        """
        root = Path(data).expanduser() if data is not None else default_data_dir()
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / "tmp"
        tmp.mkdir(exist_ok=True)
        url = db or f"sqlite:///{(root / 'registry.db').absolute()}"
        reg = cls(
            _db.open_engine(url),
            FilesystemStore(root / "artifacts"),
            tmp_dir=tmp,
            max_upload_bytes=max_upload_bytes,
        )
        reg.data_dir = root
        return reg

    def close(self) -> None:
        """Write pending download counts and release database connections."""
        self.downloads.close()
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (on SQLite it takes the write lock up front)."""
        with self.engine.connect() as raw:
            conn = raw.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- accounts (the admin CLI calls these) -------------------------------

    def create_publisher(
        self, name: str, *, email: str | None = None, display_name: str = "",
        verified: bool = False,
    ) -> None:
        """Create a publisher account."""
        with self.write() as conn:
            _accounts.create_publisher(
                conn, name, email=email, display_name=display_name, verified=verified
            )

    def verify_publisher(self, name: str, verified: bool = True) -> None:
        """Mark a publisher verified (shown on every plugin it publishes)."""
        with self.write() as conn:
            _accounts.verify_publisher(conn, name, verified)

    def create_namespace(self, name: str, owner: str) -> None:
        """Create a namespace owned by ``owner``."""
        with self.write() as conn:
            _accounts.create_namespace(conn, name, owner)

    def add_member(self, namespace: str, publisher: str, role: str = "maintainer") -> None:
        """Give ``publisher`` a role (owner or maintainer) in ``namespace``."""
        with self.write() as conn:
            _accounts.add_member(conn, namespace, publisher, role)

    def create_token(
        self,
        publisher: str,
        *,
        scopes: tuple[str, ...] = ("publish",),
        expires_in: dt.timedelta | None = dt.timedelta(days=90),
        description: str = "",
    ) -> str:
        """Issue an API token; the plaintext is returned once."""
        with self.write() as conn:
            return _accounts.create_token(
                conn, publisher, scopes=scopes, expires_in=expires_in, description=description
            )

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token by its public id."""
        with self.write() as conn:
            _accounts.revoke_token(conn, token_id)

    def add_publisher_key(self, publisher: str, public_key: str) -> dict[str, Any]:
        """Register a signing key (base64 raw or PEM) for ``publisher`` (see ``_keys``)."""
        with self.write() as conn:
            return _keys.add_publisher_key(conn, publisher, public_key)

    def revoke_publisher_key(self, publisher: str, keyid: str) -> dict[str, Any]:
        """Revoke one of ``publisher``'s signing keys."""
        with self.write() as conn:
            return _keys.revoke_publisher_key(conn, publisher, keyid)

    def list_publisher_keys(self, publisher: str) -> list[dict[str, Any]]:
        """``publisher``'s signing keys, revoked ones included."""
        with self.read() as conn:
            return _keys.list_publisher_keys(conn, publisher)

    def authenticate(self, token: str | None) -> Principal:
        """Who ``token`` stands for (raises :class:`~._errors.Unauthenticated`)."""
        with self.read() as conn:
            return _accounts.authenticate(conn, token)

    # -- reading ------------------------------------------------------------

    def warm(self) -> None:
        """Load the name index now rather than on the first search (a few seconds at 100k).

        Skeletons stored under an older folding rule are rewritten first.
        """
        with self.read() as conn:
            stale = refold_skeletons(conn, write=False)
        if stale:
            with self.write() as conn:
                refold_skeletons(conn)
        with self.read() as conn:
            self.names.refresh(conn)

    def search(self, params: SearchParams) -> dict[str, Any]:
        """Search the catalogue (see :mod:`._search`)."""
        with self.read() as conn:
            return search(conn, self.names, params)

    def _plugin_row(self, conn: Connection, plugin_id: str) -> Any:
        p = _db.plugins
        row = conn.execute(
            sa.select(p, _db.publishers.c.name.label("publisher"), _db.publishers.c.verified,
                      _db.namespaces.c.name.label("namespace"))
            .join(_db.publishers, _db.publishers.c.pk == p.c.publisher_pk)
            .join(_db.namespaces, _db.namespaces.c.pk == p.c.namespace_pk)
            .where(p.c.id == plugin_id.strip().lower())
        ).first()
        if row is None:
            local = normalise_name(plugin_id.rsplit(".", 1)[-1])
            near = conn.execute(
                sa.select(p.c.id).where(p.c.norm_name == local).order_by(p.c.downloads.desc())
                .limit(3)
            ).scalars().all()
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise NotFoundError(
                f"no plugin {plugin_id!r} in this registry{hint}",
                plugin_id=plugin_id,
                did_you_mean=list(near) or None,
            )
        return row

    @staticmethod
    def _version_dict(row: Any) -> dict[str, Any]:
        manifest = json.loads(row.manifest)
        return {
            "version": row.version,
            "yanked": bool(row.yanked),
            "yanked_reason": row.yanked_reason,
            "sha256": row.sha256,
            "size": row.size,
            "signature": row.signature,
            "signer": row.signer,
            "publisher_verified": bool(getattr(row, "publisher_verified", False)),
            "downloads": int(row.downloads),
            "published_at": _iso(row.published_at),
            "requires_corral": manifest.get("plugin", {}).get("requires-corral", ""),
            "permissions": manifest.get("permissions", {}),
            "manifest": manifest,
        }

    def _counted(self, row: Any) -> dict[str, Any]:
        """:meth:`_version_dict` with the downloads not yet written added in."""
        out = self._version_dict(row)
        out["downloads"] += self.downloads.pending_version(row.pk)
        return out

    def _versions(self, conn: Connection, plugin_pk: int) -> list[Any]:
        rows = conn.execute(
            sa.select(_db.versions, _keys.publisher_verified_column())
            .where(_db.versions.c.plugin_pk == plugin_pk)
        ).all()
        return sorted(rows, key=lambda r: Version(r.version), reverse=True)

    def info(self, plugin_id: str) -> dict[str, Any]:
        """Everything about one plugin, with every version newest first."""
        with self.read() as conn:
            row = self._plugin_row(conn, plugin_id)
            vers = self._versions(conn, row.pk)
        return {
            "id": row.id,
            "name": row.name,
            "namespace": row.namespace,
            "summary": row.summary,
            "category": row.category,
            "tags": row.tags.split(),
            "author": row.author,
            "publisher": row.publisher,
            "verified": bool(row.verified),
            "version": row.latest_version,
            "latest_version": row.latest_version,
            "downloads": int(row.downloads) + self.downloads.pending_plugin(row.pk),
            "rating": round(float(row.rating), 2),
            "rating_count": int(row.rating_count),
            "confusable_with": row.confusable_with.split() if row.confusable_with else [],
            "source": row.source,
            "created": _iso(row.created_at),
            "updated": _iso(row.updated_at),
            "versions": [self._counted(v) for v in vers],
        }

    def version_info(self, plugin_id: str, version: str) -> dict[str, Any]:
        """One version of one plugin (yanked versions included: an exact pin)."""
        with self.read() as conn:
            row = self._plugin_row(conn, plugin_id)
            for v in self._versions(conn, row.pk):
                if _same_version(v.version, version):
                    return {"id": row.id, **self._counted(v)}
        raise NotFoundError(f"{plugin_id} has no version {version!r}", plugin_id=plugin_id)

    def resolve(self, plugin_id: str, spec: str = "") -> dict[str, Any]:
        """The version an installer should take for ``spec`` (PEP 440 specifiers).

        Yanked versions are skipped unless ``spec`` pins one exactly
        (``==1.2.0``), as PEP 592 says.
        """
        try:
            specifier = SpecifierSet(spec)
        except InvalidSpecifier:
            raise UsageError(f"not a version specifier: {spec!r}", field="spec") from None
        pinned = [s.version for s in specifier if s.operator in ("==", "===")
                  and "*" not in s.version]
        with self.read() as conn:
            row = self._plugin_row(conn, plugin_id)
            vers = self._versions(conn, row.pk)
        allowed = [v for v in vers if not v.yanked or (pinned and _same_version(v.version,
                                                                                pinned[0]))]
        matching = list(specifier.filter([v.version for v in allowed]))
        if not matching:
            raise NotFoundError(
                f"no version of {row.id} matches {spec or 'any'!r}"
                + (" (yanked versions need an exact pin)" if any(v.yanked for v in vers) else ""),
                plugin_id=row.id,
                spec=spec,
            )
        best = max(matching, key=Version)
        chosen = next(v for v in vers if v.version == best)
        return {"id": row.id, **self._version_dict(chosen)}

    def download(self, plugin_id: str, version: str | None = None) -> Download:
        """Find an artifact and count the download (latest non-yanked if no version).

        A read: the count is buffered (:class:`~._counts.DownloadCounter`), so
        downloads neither wait for the write lock nor fail on a full disk.
        """
        with self.read() as conn:
            row = self._plugin_row(conn, plugin_id)
            vers = self._versions(conn, row.pk)
            if version is None:
                if row.latest_version is None:
                    raise NotFoundError(f"every version of {row.id} is yanked; pin one",
                                        plugin_id=row.id)
                version = row.latest_version
            match = [v for v in vers if _same_version(v.version, version)]
            if not match:
                raise NotFoundError(f"{row.id} has no version {version!r}", plugin_id=row.id)
            ver = match[0]
            if ver.sha256 is None:
                raise NotFoundError(
                    f"{row.id} {ver.version} is a catalogue entry without an archive",
                    plugin_id=row.id,
                )
            path = self.store.local_path(ver.sha256)
            if path is None:
                raise NotFoundError(f"artifact of {row.id} {ver.version} is missing",
                                    plugin_id=row.id)
        self.downloads.add(int(row.pk), int(ver.pk))
        return Download(row.id, ver.version, ver.sha256, int(ver.size), path)

    # -- writing ------------------------------------------------------------

    def publish(self, archive: Path, principal: Principal) -> dict[str, Any]:
        """Validate and publish an archive; return the new version's info and warnings.

        Raises:
            PermissionDenied: missing scope, or not a member of the id's namespace.
            UploadTooLarge: over :attr:`max_upload_bytes`.
            InvalidPluginError: the archive fails ``corral validate``.
            VersionExists: that version was published before (yanked or not).
            PolicyDenied: the id reads like another publisher's id.
        """
        principal.require("publish")
        archive = Path(archive)
        size = archive.stat().st_size
        if size > self.max_upload_bytes:
            raise UploadTooLarge(
                f"upload is {size} bytes, the limit is {self.max_upload_bytes}",
                limit=self.max_upload_bytes,
            )
        digest = _sha256(archive)
        manifest, warnings = self._check_archive(archive)
        signer = _keys.check_upload_signature(archive, manifest)
        namespace = manifest.id.split(".", 1)[0]
        stored_new = False
        try:
            # copy and fsync the blob before taking the write lock: the lock is held
            # only for the rows (an unreferenced blob is removed again on failure)
            stored_new = self.store.put_file(archive, digest)
            with self.write() as conn:
                if conn.execute(sa.select(_db.namespaces.c.pk)
                                .where(_db.namespaces.c.name == namespace)).first() is None:
                    raise PermissionDenied(
                        f"namespace {namespace!r} is not registered; a registry admin creates "
                        f"it (corral registry admin create-namespace {namespace} --owner ...)",
                        permission=f"namespace:{namespace}",
                        plugin_id=manifest.id,
                    )
                if _accounts.namespace_role(conn, namespace, principal.publisher_pk) is None:
                    raise PermissionDenied(
                        f"publisher {principal.publisher!r} may not publish into namespace "
                        f"{namespace!r} (not an owner or maintainer of it)",
                        permission=f"namespace:{namespace}",
                        plugin_id=manifest.id,
                    )
                existing = conn.execute(
                    sa.select(_db.plugins.c.pk).where(_db.plugins.c.id == manifest.id)
                ).scalar()
                if existing is not None:
                    for v in self._versions(conn, int(existing)):
                        if _same_version(v.version, manifest.version):
                            raise VersionExists(
                                f"{manifest.id} {v.version} is already published; "
                                "versions are never replaced, publish a new one",
                                plugin_id=manifest.id,
                                version=v.version,
                            )
                confusable = self._confusables(conn, manifest.id, principal)
                _keys.refuse_revoked_signer(conn, principal.publisher_pk, signer, manifest)
                self._write_version(
                    conn, manifest, principal, digest, size, existing, confusable
                )
                _keys.record_signature(conn, manifest.id, manifest.version, signer)
        except sa.exc.IntegrityError as exc:
            # another server process published the same id or version first
            if stored_new:
                self._drop_if_unreferenced(digest)
            raise VersionExists(
                f"{manifest.id} {manifest.version} was published concurrently; "
                "versions are never replaced",
                plugin_id=manifest.id,
                version=manifest.version,
            ) from exc
        except BaseException:
            if stored_new:
                self._drop_if_unreferenced(digest)
            raise
        self._tuf_changed(manifest.id)
        out = self.version_info(manifest.id, manifest.version)
        if confusable:
            warnings.append({
                "key": "plugin.id",
                "message": f"{manifest.id} reads like {', '.join(confusable)}; "
                "it is flagged as a look-alike",
            })
        out["confusable_with"] = confusable
        out["warnings"] = warnings
        return out

    def _check_archive(self, archive: Path) -> tuple[Manifest, list[dict[str, str]]]:
        """Run ``corral validate``'s checks on an archive; return its manifest."""
        tmp = Path(tempfile.mkdtemp(prefix="publish-", dir=self.tmp_dir))
        try:
            plugin_dir = extract_archive(archive, tmp / "plugin")
            report = validate_plugin(plugin_dir, host_version=__version__, known={})
            if not report["ok"]:
                first = report["errors"][0]
                raise InvalidPluginError(
                    f"the archive fails validation: {first.get('message')}",
                    plugin_id=report["plugin"],
                    errors=report["errors"],
                )
            manifest = load_manifest(plugin_dir)
            bad = control_char_error(manifest.to_dict(), "manifest", free_text=True)
            if bad is not None:
                raise InvalidPluginError(f"the archive's {bad[1]}", plugin_id=manifest.id,
                                         field=bad[0])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        warnings = [w for w in report["warnings"] if not w["key"].startswith("dependencies.")]
        return manifest, warnings

    def _confusables(self, conn: Connection, plugin_id: str, principal: Principal) -> list[str]:
        """Ids that read like ``plugin_id``; refuse when one belongs to someone else."""
        p = _db.plugins
        skel = skeleton(plugin_id)
        flagged: list[str] = []
        same = conn.execute(
            sa.select(p.c.id, _db.namespaces.c.name)
            .join(_db.namespaces, _db.namespaces.c.pk == p.c.namespace_pk)
            .where((p.c.skeleton == skel) & (p.c.id != plugin_id))
        ).all()
        for other_id, other_ns in same:
            if _accounts.namespace_role(conn, other_ns, principal.publisher_pk) is None:
                raise PolicyDenied(
                    f"{plugin_id} reads like {other_id}, which another publisher owns; "
                    "choose a name that cannot be mistaken for it",
                    plugin_id=plugin_id,
                    confusable_with=other_id,
                )
            flagged.append(other_id)
        # the local name alone, across namespaces: one or no edit apart after folding
        local = normalise_name(plugin_id.split(".", 1)[1])
        self.names.refresh(conn)
        local_skel = skeleton(local)
        for pk in self.names.similar_skeletons(local, limit=10):
            other = conn.execute(sa.select(p.c.id, p.c.norm_name).where(p.c.pk == pk)).first()
            if other is None or other.id == plugin_id or other.id in flagged:
                continue
            # the same skeleton reads alike at any length; one edit apart only when long
            distance = OSA.distance(local_skel, skeleton(other.norm_name))
            if (distance == 0 and len(local_skel) >= 3) or (distance == 1 and len(local_skel) >= 5):
                flagged.append(str(other.id))
        return flagged

    def _write_version(
        self,
        conn: Connection,
        manifest: Manifest,
        principal: Principal,
        digest: str,
        size: int,
        existing: int | None,
        confusable: list[str],
    ) -> None:
        now = _db.utcnow()
        fields = plugin_fields(manifest)
        namespace = manifest.id.split(".", 1)[0]
        ns_pk = conn.execute(
            sa.select(_db.namespaces.c.pk).where(_db.namespaces.c.name == namespace)
        ).scalar_one()
        p = _db.plugins
        if existing is None:
            plugin_pk = int(conn.execute(p.insert().values(
                id=manifest.id, namespace_pk=ns_pk, publisher_pk=principal.publisher_pk,
                skeleton=skeleton(manifest.id), latest_version=None,
                confusable_with=" ".join(confusable) or None, source="upload",
                created_at=now, updated_at=now, **fields,
            )).inserted_primary_key[0])  # type: ignore[index]
        else:
            plugin_pk = existing
        conn.execute(_db.versions.insert().values(
            plugin_pk=plugin_pk, version=manifest.version,
            manifest=json.dumps(manifest.to_dict(), sort_keys=True), sha256=digest, size=size,
            signature="unsigned", publisher_pk=principal.publisher_pk, published_at=now,
        ))
        latest = self._refresh_latest(conn, plugin_pk)
        if latest == manifest.version:  # the newest release describes the plugin
            conn.execute(p.update().where(p.c.pk == plugin_pk).values(updated_at=now, **fields))
            conn.execute(_db.plugin_tags.delete().where(_db.plugin_tags.c.plugin_pk == plugin_pk))
            for tag in fields["tags"].split():
                conn.execute(_db.plugin_tags.insert().values(plugin_pk=plugin_pk, tag=tag))
            index_text(conn, plugin_pk, manifest.id, fields)

    def _refresh_latest(self, conn: Connection, plugin_pk: int) -> str | None:
        rows = conn.execute(
            sa.select(_db.versions.c.version, _db.versions.c.yanked)
            .where(_db.versions.c.plugin_pk == plugin_pk)
        ).all()
        latest = _latest([(str(v), bool(y)) for v, y in rows])
        conn.execute(_db.plugins.update().where(_db.plugins.c.pk == plugin_pk)
                     .values(latest_version=latest))
        return latest

    def _drop_if_unreferenced(self, digest: str) -> None:
        with self.read() as conn:
            used = conn.execute(
                sa.select(_db.versions.c.pk).where(_db.versions.c.sha256 == digest).limit(1)
            ).first()
        if used is None:
            self.store.delete(digest)

    def set_yanked(
        self, plugin_id: str, version: str, principal: Principal, *, yanked: bool,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Yank (hide from resolution) or unyank a version; namespace members only."""
        principal.require("yank")
        with self.write() as conn:
            row = self._plugin_row(conn, plugin_id)
            if _accounts.namespace_role(conn, row.namespace, principal.publisher_pk) is None:
                raise PermissionDenied(
                    f"publisher {principal.publisher!r} is not a member of namespace "
                    f"{row.namespace!r}",
                    permission=f"namespace:{row.namespace}",
                    plugin_id=row.id,
                )
            match = [v for v in self._versions(conn, row.pk) if _same_version(v.version, version)]
            if not match:
                raise NotFoundError(f"{row.id} has no version {version!r}", plugin_id=row.id)
            conn.execute(_db.versions.update().where(_db.versions.c.pk == match[0].pk).values(
                yanked=yanked, yanked_reason=(reason or "") if yanked else None))
            self._refresh_latest(conn, row.pk)
        self._tuf_changed(row.id)
        return self.version_info(plugin_id, version)

    def _tuf_changed(self, plugin_id: str) -> None:
        """Re-sign the TUF targets of ``plugin_id`` (committed already) if TUF is set up."""
        if self.data_dir is not None and (self.data_dir / "tuf").is_dir():
            from ._tuf import after_change

            after_change(self, plugin_id)

    def rate(self, plugin_id: str, principal: Principal, stars: int) -> dict[str, Any]:
        """Record one publisher's 1-5 star rating (a second one replaces the first)."""
        if not isinstance(stars, int) or not 1 <= stars <= 5:
            raise UsageError(f"stars must be an integer from 1 to 5, got {stars!r}",
                             field="stars")
        with self.write() as conn:
            row = self._plugin_row(conn, plugin_id)
            r = _db.ratings
            where = (r.c.plugin_pk == row.pk) & (r.c.publisher_pk == principal.publisher_pk)
            if conn.execute(sa.select(r.c.stars).where(where)).first() is None:
                conn.execute(r.insert().values(plugin_pk=row.pk,
                                               publisher_pk=principal.publisher_pk, stars=stars))
            else:
                conn.execute(r.update().where(where).values(stars=stars))
            total, count = conn.execute(
                sa.select(sa.func.sum(r.c.stars), sa.func.count()).where(r.c.plugin_pk == row.pk)
            ).one()
            conn.execute(_db.plugins.update().where(_db.plugins.c.pk == row.pk).values(
                rating_sum=int(total), rating_count=int(count), rating=int(total) / int(count)))
        return {"id": row.id, "rating": round(int(total) / int(count), 2),
                "rating_count": int(count)}


def index_text(conn: Connection, plugin_pk: int, plugin_id: str, fields: dict[str, Any]) -> None:
    """(Re)write a plugin's full-text entry (SQLite; PostgreSQL computes its own)."""
    if conn.dialect.name != "sqlite":
        return
    name_words = " ".join(dict.fromkeys(words(f"{fields['norm_name']} {fields['name']}")))
    conn.execute(sa.text("DELETE FROM plugin_fts WHERE rowid = :pk"), {"pk": plugin_pk})
    conn.execute(
        sa.text("INSERT INTO plugin_fts(rowid, name_words, summary, tags) "
                "VALUES (:pk, :n, :s, :t)"),
        {"pk": plugin_pk, "n": name_words, "s": fields["summary"], "t": fields["tags"]},
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _same_version(a: str, b: str) -> bool:
    """PEP 440 equality (``1.0 == 1.0.0``); unparsable strings compare as text."""
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b

