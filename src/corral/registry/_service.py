"""The registry itself: accounts, publish, yank, info, resolve, download, search.

:class:`Registry` is what the HTTP layer and the admin CLI call; it owns a
database engine and an :class:`~._artifacts.ArtifactStore`.  It imports only
corral's model layer (manifest, archive, validation), never the host runtime.

Publishing is all or nothing: the archive is checked exactly as ``corral
validate`` checks it, the namespace and version rules are enforced, then the
blob is stored and the rows written in one transaction; if anything fails after
the blob was stored, the blob is removed again.

Publish and yank are atomic with the signed TUF metadata through an outbox: the
transaction that writes a version (``pending``, hidden from every listing and
download), a yank, or an admin change to a publisher's verified state or keys also
records an intent in ``tuf_outbox``; :meth:`Registry.reconcile`
then signs the targets and only afterwards reveals the version and deletes the
intent.  Intents a crash or a failed write left behind are signed at start-up
(:meth:`Registry.housekeep`), by a timer in ``serve`` and by the publisher's retry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import sqlalchemy as sa
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from rapidfuzz.distance import OSA
from sqlalchemy.engine import Connection, Engine

from corral._disk.archive import extract_archive
from corral._errors import (
    InvalidPluginError,
    NotFoundError,
    PermissionDenied,
    PolicyDenied,
    UsageError,
)
from corral._model.manifest import Manifest, load_manifest
from corral._pdk.checks import validate_plugin
from corral._version import __version__

from . import _accounts, _db, _keys
from ._accounts import Principal
from ._artifacts import ArtifactError, ArtifactStore, FilesystemArtifactStore
from ._community import ratings
from ._counts import DownloadCounter
from ._errors import UploadTooLarge, VersionExists
from ._insights.stats import record_rating
from ._names import control_char_error, normalise_name, skeleton, words
from ._search import NameIndex, SearchParams, refold_skeletons, search

__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "Download",
    "Registry",
    "default_data_dir",
    "index_text",
    "plugin_fields",
]

DEFAULT_MAX_UPLOAD: Final = 50 * 1024 * 1024
#: Temp files at least this old are swept even while another server shares the data dir.
STALE_TEMP_SECONDS: Final = 3600.0
_log = logging.getLogger("corral.registry")


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
        self._claim_fd: int | None = None
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()
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
            FilesystemArtifactStore(root / "artifacts"),
            tmp_dir=tmp,
            max_upload_bytes=max_upload_bytes,
        )
        reg.data_dir = root
        return reg

    def close(self) -> None:
        """Write pending download counts and release database connections."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=30)
            self._timer = None
        self.downloads.close()
        self.engine.dispose()
        if self._claim_fd is not None:
            os.close(self._claim_fd)
            self._claim_fd = None

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
        """Mark a publisher verified (shown on every plugin it publishes); re-sign its plugins."""
        with self.write() as conn:
            _accounts.verify_publisher(conn, name, verified)
            changed = _enqueue_all(conn, _keys.signed_plugins(conn, name), "publisher")
        self._resign(changed)

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
        """Register a signing key (base64 raw or PEM) for ``publisher`` (see ``_keys``).

        Plugins already uploaded signed by that key are re-signed in TUF, so
        clients see them as the publisher's at once.
        """
        with self.write() as conn:
            key = _keys.add_publisher_key(conn, publisher, public_key)
            changed = _enqueue_all(conn, _keys.signed_plugins(conn, publisher, key["keyid"]),
                                   "key")
        self._resign(changed)
        return key

    def revoke_publisher_key(self, publisher: str, keyid: str) -> dict[str, Any]:
        """Revoke one of ``publisher``'s signing keys; re-sign the plugins it signed."""
        with self.write() as conn:
            key = _keys.revoke_publisher_key(conn, publisher, keyid)
            changed = _enqueue_all(conn, _keys.signed_plugins(conn, publisher, key["keyid"]),
                                   "key")
        self._resign(changed)
        return key

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

    def _plugin_row(self, conn: Connection, plugin_id: str,
                    include_pending: bool = False) -> Any:
        p = _db.plugins
        row = conn.execute(
            sa.select(p, _db.publishers.c.name.label("publisher"), _db.publishers.c.verified,
                      _db.namespaces.c.name.label("namespace"))
            .join(_db.publishers, _db.publishers.c.pk == p.c.publisher_pk)
            .join(_db.namespaces, _db.namespaces.c.pk == p.c.namespace_pk)
            .where(p.c.id == plugin_id.strip().lower())
        ).first()
        if row is not None and row.closed:
            raise NotFoundError(f"{row.id} was closed by the registry's moderators",
                                plugin_id=row.id, reason="closed")
        if row is not None and row.latest_version is None and not include_pending:
            v = _db.versions
            shown = conn.execute(sa.select(v.c.pk).where(
                (v.c.plugin_pk == row.pk) & (v.c.pending == sa.false())).limit(1)).first()
            if shown is None:  # a new plugin whose first version is not signed yet
                row = None
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

    def _versions(self, conn: Connection, plugin_pk: int,
                  include_pending: bool = False, include_quarantined: bool = False) -> list[Any]:
        """A plugin's versions, newest first; unsigned (pending) or quarantined ones if asked."""
        where = _db.versions.c.plugin_pk == plugin_pk
        if not include_pending:
            where = where & (_db.versions.c.pending == sa.false())
        if not include_quarantined:
            where = where & (_db.versions.c.quarantined == sa.false())
        rows = conn.execute(
            sa.select(_db.versions, _keys.publisher_verified_column()).where(where)
        ).all()
        return sorted(rows, key=lambda r: Version(r.version), reverse=True)

    def info(self, plugin_id: str, *, include_pending: bool = False) -> dict[str, Any]:
        """Everything about one plugin, with every version newest first.

        ``include_pending`` adds versions not signed yet (what the TUF signer needs).
        """
        with self.read() as conn:
            row = self._plugin_row(conn, plugin_id, include_pending)
            vers = self._versions(conn, row.pk, include_pending)
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
            "bayes_rating": round(float(row.bayes_rating), 3),
            "review_count": int(row.review_count),
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

    def publish(self, archive: Path, principal: Principal, *,
                _again: bool = False) -> dict[str, Any]:
        """Validate and publish an archive; return the new version's info and warnings.

        Raises:
            PermissionDenied: missing scope, or not a member of the id's namespace.
            UploadTooLarge: over :attr:`max_upload_bytes`.
            InvalidPluginError: the archive fails ``corral validate``.
            VersionExists: that version was published before (yanked or not) with
                other bytes; the same bytes again are a retry and answer
                ``created: False`` with the version as stored.
            PolicyDenied: the id reads like another publisher's id.
            ArtifactError: the blob or the signed metadata could not be written; the
                version stays invisible until a retry or start-up signs it.
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
        created = True
        confusable: list[str] = []
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
                if existing is not None and conn.execute(
                        sa.select(_db.plugins.c.closed)
                        .where(_db.plugins.c.pk == existing)).scalar():
                    raise PolicyDenied(f"{manifest.id} was closed by the registry's "
                                       "moderators; it takes no new versions",
                                       plugin_id=manifest.id, reason="closed")
                if existing is not None:
                    for v in self._versions(conn, int(existing), include_pending=True,
                                            include_quarantined=True):
                        if _same_version(v.version, manifest.version) and v.sha256 == digest:
                            created = False  # the same bytes again: a retry, not a change
                            break
                        if _same_version(v.version, manifest.version):
                            raise VersionExists(
                                f"{manifest.id} {v.version} is already published; "
                                "versions are never replaced, publish a new one",
                                plugin_id=manifest.id,
                                version=v.version,
                            )
                if created:
                    confusable = self._confusables(conn, manifest.id, principal)
                    _keys.refuse_revoked_signer(conn, principal.publisher_pk, signer, manifest)
                    self._write_version(
                        conn, manifest, principal, digest, size, existing, confusable
                    )
                    _keys.record_signature(conn, manifest.id, manifest.version, signer)
                    _enqueue(conn, manifest.id, "publish")
        except sa.exc.IntegrityError as exc:
            # another server process published the same id or version first
            stored = self._stored_digest(manifest.id, manifest.version)
            if stored is None and not _again:
                # it created the plugin with another version: publish once more into it
                try:
                    return self.publish(archive, principal, _again=True)
                except BaseException:
                    if stored_new:
                        self._drop_if_unreferenced(digest)
                    raise
            if stored != digest:
                if stored_new:
                    self._drop_if_unreferenced(digest)
                raise VersionExists(
                    f"{manifest.id} {manifest.version} was published concurrently; "
                    "versions are never replaced",
                    plugin_id=manifest.id,
                    version=manifest.version,
                ) from exc
            created = False  # the same bytes won the race: this is a retry
        except BaseException:
            if stored_new:
                self._drop_if_unreferenced(digest)
            raise
        self.reconcile([manifest.id])  # sign, then reveal (a retry signs what is left)
        try:  # intents others' crashes or failures left behind; never fails this publish
            self.reconcile(older_than=60.0, limit=20)
        except Exception as exc:
            _log.warning("registry housekeeping: %s", exc)
        out = self.version_info(manifest.id, manifest.version)
        out["created"] = created
        if confusable:
            warnings.append({
                "key": "plugin.id",
                "message": f"{manifest.id} reads like {', '.join(confusable)}; "
                "it is flagged as a look-alike",
            })
        out["confusable_with"] = confusable
        out["warnings"] = warnings
        return out

    def _stored_digest(self, plugin_id: str, version: str) -> str | None:
        """The sha256 stored for ``plugin_id`` ``version`` (pending or not), if any."""
        with self.read() as conn:
            pk = conn.execute(sa.select(_db.plugins.c.pk)
                              .where(_db.plugins.c.id == plugin_id)).scalar()
            if pk is None:
                return None
            for v in self._versions(conn, int(pk), include_pending=True,
                                    include_quarantined=True):
                if _same_version(v.version, version):
                    return str(v.sha256) if v.sha256 else None
        return None

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
            pending=True,
        ))

    def _describe(self, conn: Connection, plugin_pk: int, plugin_id: str,
                  manifest_json: str) -> None:
        """Make the newest release's manifest describe the plugin (fields, tags, text)."""
        p = _db.plugins
        fields = plugin_fields(Manifest.from_dict(json.loads(manifest_json)))
        conn.execute(p.update().where(p.c.pk == plugin_pk).values(updated_at=_db.utcnow(),
                                                                  **fields))
        conn.execute(_db.plugin_tags.delete().where(_db.plugin_tags.c.plugin_pk == plugin_pk))
        for tag in fields["tags"].split():
            conn.execute(_db.plugin_tags.insert().values(plugin_pk=plugin_pk, tag=tag))
        index_text(conn, plugin_pk, plugin_id, fields)

    def _refresh_latest(self, conn: Connection, plugin_pk: int) -> str | None:
        rows = conn.execute(
            sa.select(_db.versions.c.version, _db.versions.c.yanked)
            .where((_db.versions.c.plugin_pk == plugin_pk)
                   & (_db.versions.c.pending == sa.false())
                   & (_db.versions.c.quarantined == sa.false()))
        ).all()
        closed = conn.execute(sa.select(_db.plugins.c.closed)
                              .where(_db.plugins.c.pk == plugin_pk)).scalar()
        latest = None if closed else _latest([(str(v), bool(y)) for v, y in rows])
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
            _enqueue(conn, row.id, "yank" if yanked else "unyank")
        self.reconcile([row.id])
        return self.version_info(plugin_id, version)

    def set_quarantined_in(self, conn: Connection, plugin_id: str, version: str,
                           quarantined: bool) -> str:
        """Quarantine (or release) a version in the caller's transaction; returns the version.

        A quarantined version is kept but hidden from info, resolve, download,
        search's ``latest`` and the signed TUF targets; the caller runs
        :meth:`reconcile` after committing, so that TUF clients stop seeing it.
        """
        p, v = _db.plugins, _db.versions
        pk = conn.execute(sa.select(p.c.pk).where(p.c.id == plugin_id.strip().lower())).scalar()
        if pk is None:
            raise NotFoundError(f"no plugin {plugin_id!r}", plugin_id=plugin_id)
        match = [r for r in self._versions(conn, int(pk), include_quarantined=True)
                 if _same_version(r.version, version)]
        if not match:
            raise NotFoundError(f"{plugin_id} has no version {version!r}", plugin_id=plugin_id)
        conn.execute(v.update().where(v.c.pk == match[0].pk).values(quarantined=quarantined))
        self._refresh_latest(conn, int(pk))
        _enqueue(conn, plugin_id.strip().lower(), "quarantine")
        return str(match[0].version)

    def set_closed_in(self, conn: Connection, plugin_id: str, closed: bool) -> None:
        """Close (or reopen) a plugin in the caller's transaction (then :meth:`reconcile`).

        A closed plugin is gone from search, info, resolve, download and TUF, and
        takes no new versions; its rows and archives are kept.
        """
        p = _db.plugins
        pk = conn.execute(sa.select(p.c.pk).where(p.c.id == plugin_id.strip().lower())).scalar()
        if pk is None:
            raise NotFoundError(f"no plugin {plugin_id!r}", plugin_id=plugin_id)
        conn.execute(p.update().where(p.c.pk == pk).values(closed=closed))
        self._refresh_latest(conn, int(pk))
        _enqueue(conn, plugin_id.strip().lower(), "close" if closed else "reopen")

    def _resign(self, plugin_ids: list[str]) -> None:
        """Sign the intents just recorded for ``plugin_ids`` (a failure leaves them queued)."""
        for start in range(0, len(plugin_ids), 500):  # reconcile handles up to 1000 a pass
            self.reconcile(plugin_ids[start:start + 500])

    def _tuf_changed(self, plugin_ids: list[str]) -> None:
        """Re-sign the TUF targets of ``plugin_ids`` (committed already) if TUF is set up."""
        if self.data_dir is not None and (self.data_dir / "tuf" / "config.json").is_file():
            from ._tuf import after_change

            after_change(self, plugin_ids)

    # -- signing outbox and recovery -----------------------------------------

    def reconcile(self, plugin_ids: Sequence[str] | None = None, *,
                  older_than: float | None = None, limit: int = 1000) -> list[str]:
        """Sign what ``tuf_outbox`` records, then reveal the versions it signed.

        ``plugin_ids`` limits the pass to those plugins, ``older_than`` (seconds)
        to intents at least that old.  A pending version whose blob is gone is
        removed (it was never visible).  Returns the plugin ids handled.

        Raises:
            ArtifactError: the TUF metadata could not be written; the intents stay.
        """
        o, v, p = _db.tuf_outbox, _db.versions, _db.plugins
        with self.read() as conn:
            q = sa.select(o.c.plugin_id, sa.func.max(o.c.pk)).group_by(o.c.plugin_id)
            if plugin_ids is not None:
                q = q.where(o.c.plugin_id.in_([i.strip().lower() for i in plugin_ids]))
            if older_than is not None:
                q = q.where(o.c.created_at < _db.utcnow() - dt.timedelta(seconds=older_than))
            upto = {str(pid): int(pk) for pid, pk in conn.execute(q.limit(limit))}
            if not upto:
                return []
            rows = conn.execute(
                sa.select(v.c.pk, v.c.plugin_pk, v.c.version, v.c.sha256, v.c.manifest)
                .join(p, p.c.pk == v.c.plugin_pk)
                .where((v.c.pending == sa.true()) & p.c.id.in_(list(upto)))
            ).all()
        lost = [r for r in rows if r.sha256 is not None and not self.store.exists(r.sha256)]
        if lost:
            self._drop_pending([int(r.pk) for r in lost])
        shown = [r for r in rows if r not in lost]
        try:
            self._tuf_changed(sorted(upto))
        except Exception as exc:
            raise ArtifactError(
                f"could not sign the TUF metadata of {', '.join(sorted(upto))}: {exc}; the "
                "change stays unpublished until signing succeeds (retry, or restart)"
            ) from exc
        with self.write() as conn:
            if shown:
                conn.execute(v.update().where(v.c.pk.in_([int(r.pk) for r in shown]))
                             .values(pending=False))
            for plugin_pk in {int(r.plugin_pk) for r in shown}:
                latest = self._refresh_latest(conn, plugin_pk)
                new = [r for r in shown if r.plugin_pk == plugin_pk and r.version == latest]
                if new:
                    pid = conn.execute(sa.select(p.c.id).where(p.c.pk == plugin_pk)).scalar_one()
                    self._describe(conn, plugin_pk, str(pid), str(new[0].manifest))
            for pid, last in upto.items():
                conn.execute(o.delete().where((o.c.plugin_id == pid) & (o.c.pk <= last)))
        return sorted(upto)

    def _drop_pending(self, version_pks: list[int]) -> None:
        """Remove pending versions (never shown) and plugins left with no version."""
        v, p = _db.versions, _db.plugins
        with self.write() as conn:
            plugin_pks = set(conn.execute(sa.select(v.c.plugin_pk).where(
                v.c.pk.in_(version_pks) & (v.c.pending == sa.true()))).scalars())
            conn.execute(v.delete().where(v.c.pk.in_(version_pks) & (v.c.pending == sa.true())))
            for plugin_pk in plugin_pks:
                left = conn.execute(sa.select(v.c.pk).where(v.c.plugin_pk == plugin_pk)
                                    .limit(1)).first()
                if left is None:
                    conn.execute(_db.plugin_tags.delete().where(
                        _db.plugin_tags.c.plugin_pk == plugin_pk))
                    conn.execute(p.delete().where(p.c.pk == plugin_pk))

    def housekeep(self) -> dict[str, Any]:
        """Start-up repair for ``serve``: sweep crashed temp files, sign every open intent.

        While no other server holds the data directory, every temp file and
        every blob no version references is removed; otherwise only temp files
        older than :data:`STALE_TEMP_SECONDS`.  The directory stays claimed (a
        shared lock) until :meth:`close`.
        """
        sole = self.claim()
        age = None if sole else STALE_TEMP_SECONDS
        swept = 0
        if self.data_dir is not None:
            from ._tuf import sweep_temp

            swept += _sweep_dir(self.data_dir / "tmp", age)
            swept += sweep_temp(self.data_dir, age)
        if isinstance(self.store, FilesystemArtifactStore):
            swept += self.store.sweep_temp(age)
            if sole:
                with self.read() as conn:
                    used = set(conn.execute(sa.select(_db.versions.c.sha256).distinct()
                                            .where(_db.versions.c.sha256.is_not(None)))
                               .scalars())
                swept += self.store.sweep_unreferenced(used)
        signed = self.reconcile()
        return {"swept": swept, "signed": signed, "sole": sole}

    def claim(self) -> bool:
        """Hold a shared lock on the data dir; True if no other server held it first."""
        if self.data_dir is None:
            return False
        if self._claim_fd is None:
            self._claim_fd = os.open(self.data_dir / ".serve.lock",
                                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._claim_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            sole = True
        except BlockingIOError:
            sole = False
        fcntl.flock(self._claim_fd, fcntl.LOCK_SH)
        return sole

    def start_housekeeping(self, interval: float = 30.0) -> None:
        """Sign intents older than ``interval`` every ``interval`` seconds (a daemon thread)."""
        if self._timer is not None:
            return
        stop = self._stop

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.reconcile(older_than=interval)
                except Exception as exc:  # keep trying: the next pass may succeed
                    _log.warning("registry housekeeping: %s", exc)

        self._timer = threading.Thread(target=loop, name="registry-housekeeping", daemon=True)
        self._timer.start()

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
            record_rating(conn, int(row.pk), stars)  # the rating trend of community stats
            total, count = conn.execute(
                sa.select(sa.func.sum(r.c.stars), sa.func.count()).where(r.c.plugin_pk == row.pk)
            ).one()
            conn.execute(_db.plugins.update().where(_db.plugins.c.pk == row.pk).values(
                rating_sum=int(total), rating_count=int(count), rating=int(total) / int(count)))
            ratings.refresh(conn)
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


def _enqueue(conn: Connection, plugin_id: str, kind: str) -> None:
    """Record, in the caller's transaction, that ``plugin_id``'s signed targets must change."""
    conn.execute(_db.tuf_outbox.insert().values(plugin_id=plugin_id, kind=kind,
                                                created_at=_db.utcnow()))


def _enqueue_all(conn: Connection, plugin_ids: list[str], kind: str) -> list[str]:
    """:func:`_enqueue` each of ``plugin_ids``; returns them."""
    for plugin_id in plugin_ids:
        _enqueue(conn, plugin_id, kind)
    return plugin_ids


def _sweep_dir(folder: Path, older_than: float | None) -> int:
    """Remove every entry of ``folder`` (only those older than ``older_than`` s, if given)."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than if older_than is not None else None
    n = 0
    for entry in folder.iterdir():
        try:
            if cutoff is not None and entry.lstat().st_mtime > cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            n += 1
        except OSError as exc:
            _log.warning("registry housekeeping: cannot remove %s: %s", entry, exc)
    return n


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

