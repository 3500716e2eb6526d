"""The registry's TUF repository: roles, keys, signing, rotation.

Layout under ``<data dir>/tuf/``::

    metadata/1.root.json, 2.root.json, ..., root.json   (root: offline keys)
    metadata/N.targets.json                             (targets: offline key)
    metadata/N.bin-XX.json                              (hash bins: online "bins" key)
    metadata/N.snapshot.json, timestamp.json            (online keys)
    targets/index/<sha256>.<id>.json                    (per-plugin release index)
    keys/{snapshot,timestamp,bins}.pem                  (online keys, 0600)
    config.json                                         (bins, expiry in days)

``targets`` delegates every path to succinct hash bins; each published version
adds ``plugins/<id>/<id>-<version>.corral`` (served from the artifact store)
and rewrites ``index/<id>.json``.  Every write goes bins -> snapshot ->
timestamp, each file renamed into place, under a file lock, so a reader only
ever sees a consistent set.  Online roles are re-signed when less than half of
their lifetime is left.  See ``docs/tuf.md`` for the key ceremony.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

# the defining modules: the packages' __init__ re-exports are implicit (mypy strict)
from securesystemslib.signer._crypto_signer import CryptoSigner
from securesystemslib.signer._key import Key
from securesystemslib.signer._signer import Signer
from tuf.api._payload import (
    Delegations,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from corral._disk.files import exclusive, write_atomic
from corral._errors import NotFoundError, SignatureInvalid, UsageError
from corral._model.manifest import Sandbox

if TYPE_CHECKING:
    from ._service import Registry

__all__ = [
    "DEFAULT_EXPIRY",
    "ONLINE_ROLES",
    "TufConfig",
    "TufRepository",
    "after_change",
    "archive_target_path",
    "generate_key",
    "index_target_path",
    "load_key",
    "sweep_temp",
]

#: Days each role's signature lasts by default.
DEFAULT_EXPIRY: Final[Mapping[str, int]] = {
    "root": 365, "targets": 365, "bins": 30, "snapshot": 7, "timestamp": 1,
}
#: Roles whose keys live on the server.
ONLINE_ROLES: Final = ("snapshot", "timestamp", "bins")
_META_NAME: Final = re.compile(r"^(?:timestamp|root|[1-9][0-9]{0,9}\.(?:root|targets|snapshot|"
                               r"bin-[0-9a-f]{1,8}))\.json$")
_T = TypeVar("_T", Root, Timestamp, Snapshot, Targets)
#: Files up to this size are served from memory (metadata, indexes, small archives).
CACHE_FILE_LIMIT: Final = 512 * 1024
#: Bytes the served-file cache holds at most, per repository object.
CACHE_TOTAL_LIMIT: Final = 32 * 1024 * 1024


class FileCache:
    """Small served files kept in memory, re-read whenever their stat changes.

    Every repository write renames a new file into place, so (inode, mtime,
    size) changes whenever content does; a hit costs one ``stat``.  The
    bytes sent are always those of the file as it is on disk now.
    """

    def __init__(self, total: int = CACHE_TOTAL_LIMIT, per_file: int = CACHE_FILE_LIMIT) -> None:
        self.total = total
        self.per_file = per_file
        self._entries: OrderedDict[Path, tuple[tuple[int, int, int], bytes]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def read(self, path: Path) -> bytes | None:
        """The bytes of ``path``; ``None`` when it is too big to cache (stream it instead).

        Raises:
            OSError: the file cannot be read (e.g. removed meanwhile).
        """
        st = os.stat(path)
        if st.st_size > self.per_file:
            return None
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None and hit[0] == (st.st_ino, st.st_mtime_ns, st.st_size):
                self._entries.move_to_end(path)
                return hit[1]
        with path.open("rb") as fp:  # key and bytes from the same open file
            fst = os.fstat(fp.fileno())
            data = fp.read(self.per_file + 1)
        if len(data) != fst.st_size or len(data) > self.per_file:
            return None  # growing or replaced while read: do not cache, stream it
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None:
                self._size -= len(old[1])
            self._entries[path] = ((fst.st_ino, fst.st_mtime_ns, fst.st_size), data)
            self._size += len(data)
            while self._size > self.total and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._size -= len(dropped)
        return data


def _archive_paths(registry: Registry, plugin_id: str) -> list[str]:
    """The target paths of every archive ``plugin_id`` has, whatever its versions' state."""
    import sqlalchemy as sa

    from . import _db

    p, v = _db.plugins, _db.versions
    with registry.read() as conn:
        found = conn.execute(sa.select(v.c.version).join(p, p.c.pk == v.c.plugin_pk).where(
            (p.c.id == plugin_id) & v.c.sha256.is_not(None))).scalars().all()
    return [archive_target_path(plugin_id, str(version)) for version in found]


def archive_target_path(plugin_id: str, version: str) -> str:
    """The TUF target path of one version's ``.corral`` archive."""
    return f"plugins/{plugin_id}/{plugin_id}-{version}.corral"


def index_target_path(plugin_id: str) -> str:
    """The TUF target path of a plugin's release index."""
    return f"index/{plugin_id}.json"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=mode)


def generate_key(path: Path) -> CryptoSigner:
    """Create an Ed25519 key, save it (PKCS#8 PEM, 0600) at ``path``; return its signer."""
    signer = CryptoSigner.generate_ed25519()
    _write_atomic(path, signer.private_bytes, 0o600)
    return signer


def load_key(path: Path) -> CryptoSigner:
    """Load a PEM private key written by :func:`generate_key`.

    Raises:
        NotFoundError: no key at ``path``.
        UsageError: the file is not a PEM private key.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no TUF key at {path}", file=str(path)) from None
    try:
        return CryptoSigner(load_pem_private_key(data, None))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not an unencrypted PEM private key ({exc})",
                         file=str(path)) from exc


def _load_keys(directory: Path, role: str) -> list[CryptoSigner]:
    """Every ``<role>*.pem`` key in ``directory`` (offline key folders)."""
    paths = sorted(directory.glob(f"{role}*.pem"))
    if not paths:
        raise NotFoundError(f"no {role} key ({role}*.pem) in {directory}", file=str(directory))
    return [load_key(p) for p in paths]


@dataclass(frozen=True)
class TufConfig:
    """Repository settings kept in ``tuf/config.json``."""

    bins: int = 16
    expiry: Mapping[str, int] | None = None

    def days(self, role: str) -> int:
        """The lifetime of ``role`` (``bins`` for any hash bin) in days."""
        merged = {**DEFAULT_EXPIRY, **(self.expiry or {})}
        return int(merged["bins" if role.startswith("bin-") else role])

    @property
    def bit_length(self) -> int:
        """log2 of the number of bins."""
        return self.bins.bit_length() - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"bins": self.bins, "expiry": {**DEFAULT_EXPIRY, **(self.expiry or {})}}


class TufRepository:
    """The TUF metadata of one registry data directory.

    Create it with :meth:`initialise` (the key ceremony), then call
    :meth:`update_plugins` after every publish/yank, and :meth:`refresh`
    (done on every timestamp request) to keep online signatures fresh.
    """

    def __init__(self, data_dir: Path) -> None:
        self.root_dir = Path(data_dir) / "tuf"
        self.metadata_dir = self.root_dir / "metadata"
        self.targets_dir = self.root_dir / "targets"
        self.keys_dir = self.root_dir / "keys"
        self._serializer = JSONSerializer(compact=False)
        self._checked_at = 0.0
        #: Served files (metadata, indexes, small archives) kept in memory.
        self.served = FileCache()

    # -- opening ------------------------------------------------------------

    @staticmethod
    def exists(data_dir: Path) -> bool:
        """Whether ``data_dir`` holds an initialised TUF repository."""
        return (Path(data_dir) / "tuf" / "metadata" / "timestamp.json").is_file()

    @classmethod
    def open(cls, data_dir: Path) -> TufRepository:
        """The repository in ``data_dir``.

        Raises:
            NotFoundError: not initialised (``corral registry tuf init``).
        """
        if not cls.exists(data_dir):
            raise NotFoundError(
                f"the registry in {data_dir} publishes no TUF metadata; "
                "run corral registry tuf init --offline-keys DIR"
            )
        return cls(data_dir)

    @property
    def config(self) -> TufConfig:
        """Settings written at init."""
        raw = json.loads((self.root_dir / "config.json").read_text())
        return TufConfig(bins=int(raw["bins"]), expiry=raw.get("expiry"))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One writer at a time, across server processes."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.root_dir / ".lock", mode=0o644):
            yield

    # -- reading and writing metadata ----------------------------------------

    def _read(self, name: str, cls: type[_T]) -> Metadata[_T]:
        md = Metadata[_T].from_file(str(self.metadata_dir / name))
        if not isinstance(md.signed, cls):
            raise SignatureInvalid(f"{self.metadata_dir / name}: not {cls.type} metadata",
                                   file=name)
        return md

    def root(self) -> Metadata[Root]:
        """The current root."""
        return self._read("root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        """The current timestamp."""
        return self._read("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        """The snapshot the current timestamp names."""
        version = self.timestamp().signed.snapshot_meta.version
        return self._read(f"{version}.snapshot.json", Snapshot)

    def targets_role(self, name: str, snapshot: Snapshot | None = None) -> Metadata[Targets]:
        """``targets`` or a bin, at the version the current snapshot names."""
        snap = snapshot or self.snapshot().signed
        return self._read(f"{snap.meta[f'{name}.json'].version}.{name}.json", Targets)

    def _online_signer(self, role: str) -> CryptoSigner:
        return load_key(self.keys_dir / f"{role}.pem")

    def _sign(self, signed: _T, signers: list[Signer]) -> Metadata[_T]:
        md = Metadata(signed)
        for signer in signers:
            md.sign(signer, append=True)
        return md

    def _bytes(self, md: Metadata[Any]) -> bytes:
        return md.to_bytes(self._serializer)

    def _write(self, name: str, md: Metadata[Any]) -> bytes:
        data = self._bytes(md)
        _write_atomic(self.metadata_dir / name, data)
        return data

    def _expires(self, role: str) -> dt.datetime:
        return _now() + dt.timedelta(days=self.config.days(role))

    def metafile(self, data: bytes, version: int) -> MetaFile:
        """A snapshot/timestamp entry with length and sha256 (bounds what a client reads)."""
        return MetaFile(version=version, length=len(data),
                        hashes={"sha256": hashlib.sha256(data).hexdigest()})

    # -- the key ceremony ----------------------------------------------------

    @classmethod
    def initialise(
        cls,
        registry: Registry,
        data_dir: Path,
        offline_dir: Path,
        *,
        bins: int = 16,
        root_keys: int = 1,
        root_threshold: int = 1,
        expiry: Mapping[str, int] | None = None,
    ) -> TufRepository:
        """Create keys and the first metadata, with targets for everything published.

        Root and targets keys go to ``offline_dir`` (move them offline after);
        snapshot, timestamp and bins keys to ``<data>/tuf/keys``.

        Raises:
            UsageError: already initialised, bad bin count or threshold.
        """
        if bins < 2 or bins > 2**16 or bins & (bins - 1):
            raise UsageError(f"bins must be a power of two from 2 to 65536, got {bins}",
                             field="bins")
        if not 1 <= root_threshold <= root_keys:
            raise UsageError(f"root threshold {root_threshold} needs 1..{root_keys} keys",
                             field="root-threshold")
        for role, days in (expiry or {}).items():
            if role not in DEFAULT_EXPIRY or int(days) < 1:
                raise UsageError(f"expiry: {role}={days} is not a role with >= 1 day",
                                 field="expiry")
        repo = cls(data_dir)
        if cls.exists(data_dir) or (repo.metadata_dir / "1.root.json").exists():
            raise UsageError(f"{repo.root_dir} is already initialised; rotate keys instead")
        offline_dir = Path(offline_dir)
        if any(offline_dir.glob("*.pem")):
            raise UsageError(f"{offline_dir} already holds keys; use an empty folder",
                             file=str(offline_dir))
        with repo._lock():
            _write_atomic(repo.root_dir / "config.json",
                          json.dumps(TufConfig(bins, expiry).to_dict(), indent=1).encode())
            root_signers = [generate_key(offline_dir / f"root-{i + 1}.pem")
                            for i in range(root_keys)]
            targets_signer = generate_key(offline_dir / "targets.pem")
            online = {r: generate_key(repo.keys_dir / f"{r}.pem") for r in ONLINE_ROLES}
            root = Root(expires=repo._expires("root"), consistent_snapshot=True)
            for s in root_signers:
                root.add_key(s.public_key, "root")
            root.roles["root"].threshold = root_threshold
            root.add_key(targets_signer.public_key, "targets")
            root.add_key(online["snapshot"].public_key, "snapshot")
            root.add_key(online["timestamp"].public_key, "timestamp")
            root_md = repo._sign(root, list(root_signers))
            repo._write("1.root.json", root_md)
            repo._write("root.json", root_md)
            targets = Targets(expires=repo._expires("targets"))
            succinct = SuccinctRoles([online["bins"].public_key.keyid], 1,
                                     TufConfig(bins).bit_length, "bin")
            targets.delegations = Delegations(
                keys={online["bins"].public_key.keyid: online["bins"].public_key},
                roles=None, succinct_roles=succinct)
            meta: dict[str, MetaFile] = {}
            data = repo._write("1.targets.json", repo._sign(targets, [targets_signer]))
            meta["targets.json"] = repo.metafile(data, 1)
            for name in succinct.get_roles():
                data = repo._write(f"1.{name}.json", repo._sign(
                    Targets(expires=repo._expires("bins")), [online["bins"]]))
                meta[f"{name}.json"] = repo.metafile(data, 1)
            snap = Snapshot(expires=repo._expires("snapshot"), meta=meta)
            data = repo._write("1.snapshot.json", repo._sign(snap, [online["snapshot"]]))
            ts = Timestamp(expires=repo._expires("timestamp"),
                           snapshot_meta=repo.metafile(data, 1))
            repo._write("timestamp.json", repo._sign(ts, [online["timestamp"]]))
        repo.sync(registry)
        return repo

    # -- targets -------------------------------------------------------------

    def _succinct(self, targets: Targets) -> SuccinctRoles:
        assert targets.delegations is not None
        assert targets.delegations.succinct_roles is not None
        return targets.delegations.succinct_roles

    def _plugin_targets(self, registry: Registry, plugin_id: str) -> dict[str, TargetFile]:
        """The targets one plugin should have now (empty: it has no archive)."""
        from corral._model.release import Release

        try:
            info = registry.info(plugin_id, include_pending=True)  # signed before shown
        except NotFoundError:
            return {}
        out: dict[str, TargetFile] = {}
        releases = []
        for v in info["versions"]:
            if not v.get("sha256"):
                continue
            manifest = v.get("manifest") or {}
            releases.append(Release(
                id=info["id"], version=v["version"],
                dependencies=dict(manifest.get("dependencies") or {}),
                requires_corral=v.get("requires_corral") or "",
                yanked=bool(v.get("yanked")), sha256=v["sha256"], size=int(v["size"]),
                permissions=dict(v.get("permissions") or {}), publisher=info.get("publisher"),
                signer=v.get("signer"), publisher_verified=bool(v.get("publisher_verified",
                                                                      False)),
                isolation=_isolation(manifest),
            ))
            out[archive_target_path(info["id"], v["version"])] = TargetFile(
                length=int(v["size"]), hashes={"sha256": v["sha256"]},
                path=archive_target_path(info["id"], v["version"]))
        if not releases:
            return {}
        index = json.dumps({"id": info["id"], "releases": [r.to_dict() for r in releases]},
                           sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(index).hexdigest()
        path = index_target_path(info["id"])
        stored = self.targets_dir / "index" / f"{digest}.{info['id']}.json"
        if not stored.is_file():
            _write_atomic(stored, index)
        out[path] = TargetFile(length=len(index), hashes={"sha256": digest}, path=path)
        return out

    def update_plugins(self, registry: Registry, plugin_ids: list[str]) -> list[str]:
        """Bring the targets of ``plugin_ids`` in line with the catalogue; sign what changed.

        Returns the bins that got a new version.
        """
        plugin_ids = sorted({p.strip().lower() for p in plugin_ids})
        with self._lock():
            snapshot = self.snapshot()
            targets = self.targets_role("targets", snapshot.signed).signed
            succinct = self._succinct(targets)
            bins: dict[str, Metadata[Targets]] = {}
            changed: set[str] = set()
            for pid in plugin_ids:
                wanted = self._plugin_targets(registry, pid)
                # every archive the plugin ever had: a quarantined or closed one's bin too
                for path in [*wanted, index_target_path(pid), *_archive_paths(registry, pid)]:
                    name = succinct.get_role_for_target(path)
                    if name not in bins:
                        bins[name] = self.targets_role(name, snapshot.signed)
                for name, md in bins.items():
                    current = md.signed.targets
                    for path in list(current):
                        mine = path == index_target_path(pid) or path.startswith(
                            f"plugins/{pid}/")
                        if mine and path not in wanted:
                            del current[path]
                            changed.add(name)
                for path, tf in wanted.items():
                    md = bins[succinct.get_role_for_target(path)]
                    old = md.signed.targets.get(path)
                    if old is None or old.to_dict() != tf.to_dict():
                        md.signed.targets[path] = tf
                        changed.add(succinct.get_role_for_target(path))
            if changed:
                self._publish_bins({n: bins[n].signed for n in changed}, snapshot)
        return sorted(changed)

    def sync(self, registry: Registry) -> list[str]:
        """Rebuild the targets of every plugin that has an archive (init, repair)."""
        import sqlalchemy as sa

        from . import _db

        with registry.read() as conn:
            ids = conn.execute(
                sa.select(_db.plugins.c.id).distinct()
                .join(_db.versions, _db.versions.c.plugin_pk == _db.plugins.c.pk)
                .where(_db.versions.c.sha256.is_not(None))
            ).scalars().all()
        indexed: set[str] = set()
        snap = self.snapshot().signed
        for name in snap.meta:
            if name.startswith("bin-"):
                bin_md = self.targets_role(name[:-5], snap).signed
                indexed.update(p[6:-5] for p in bin_md.targets if p.startswith("index/"))
        return self.update_plugins(registry, [*ids, *indexed]) if ids or indexed else []

    def _publish_bins(self, changed: dict[str, Targets], snapshot: Metadata[Snapshot],
                      extra_signers: Mapping[str, list[Signer]] | None = None,
                      targets_md: Metadata[Targets] | None = None) -> None:
        """Write new versions of ``changed`` bins, then snapshot, then timestamp (locked)."""
        extra = extra_signers or {}
        bins_signers: list[Signer] = [self._online_signer("bins"), *extra.get("bins", [])]
        snap = snapshot.signed
        for name, signed in sorted(changed.items()):
            signed.version = snap.meta[f"{name}.json"].version + 1
            signed.expires = self._expires(name)
            data = self._write(f"{signed.version}.{name}.json", self._sign(signed, bins_signers))
            snap.meta[f"{name}.json"] = self.metafile(data, signed.version)
        if targets_md is not None:
            tv = targets_md.signed.version
            data = self._write(f"{tv}.targets.json", targets_md)
            snap.meta["targets.json"] = self.metafile(data, tv)
        self._publish_snapshot(snap, extra)

    def _publish_snapshot(self, snap: Snapshot,
                          extra: Mapping[str, list[Signer]] | None = None) -> None:
        extra = extra or {}
        snap.version += 1
        snap.expires = self._expires("snapshot")
        data = self._write(f"{snap.version}.snapshot.json", self._sign(
            snap, [self._online_signer("snapshot"), *extra.get("snapshot", [])]))
        ts = self.timestamp().signed
        ts.version += 1
        ts.expires = self._expires("timestamp")
        ts.snapshot_meta = self.metafile(data, snap.version)
        self._write("timestamp.json", self._sign(
            ts, [self._online_signer("timestamp"), *extra.get("timestamp", [])]))

    # -- keeping signatures fresh --------------------------------------------

    def _stale(self, signed: Signed, role: str, now: dt.datetime) -> bool:
        """Less than half of the role's lifetime is left."""
        return signed.expires - now < dt.timedelta(days=self.config.days(role)) / 2

    def refresh(self, *, force: bool = False) -> dict[str, int]:
        """Re-sign bins, snapshot and timestamp that are past half their lifetime.

        Returns ``{role: new version}`` for what was re-signed.
        """
        with self._lock():
            now = _now()
            snapshot = self.snapshot()
            stale_bins: dict[str, Targets] = {}
            for name in snapshot.signed.meta:
                if name.startswith("bin-"):
                    md = self.targets_role(name[:-5], snapshot.signed)
                    if force or self._stale(md.signed, "bins", now):
                        stale_bins[name[:-5]] = md.signed
            out: dict[str, int] = {}
            if stale_bins:
                self._publish_bins(stale_bins, snapshot)
                out.update({n: s.version for n, s in stale_bins.items()})
            elif force or self._stale(snapshot.signed, "snapshot", now):
                self._publish_snapshot(snapshot.signed)
            else:
                ts = self.timestamp().signed
                if not self._stale(ts, "timestamp", now):
                    return {}
                ts.version += 1
                ts.expires = self._expires("timestamp")
                self._write("timestamp.json", self._sign(ts, [self._online_signer("timestamp")]))
                return {"timestamp": ts.version}
            out["snapshot"] = self.snapshot().signed.version
            out["timestamp"] = self.timestamp().signed.version
            return out

    def refresh_due(self, min_interval: float = 60.0) -> bool:
        """Whether :meth:`refresh_if_due` would look at the timestamp now (no I/O)."""
        import time

        return not self._checked_at or time.monotonic() - self._checked_at >= min_interval

    def refresh_if_due(self, min_interval: float = 60.0) -> None:
        """:meth:`refresh`, at most once per ``min_interval`` seconds (the request path)."""
        import time

        if not self.refresh_due(min_interval):
            return
        mono = time.monotonic()
        self._checked_at = mono
        ts = self.timestamp().signed
        if self._stale(ts, "timestamp", _now()):
            self.refresh()

    # -- rotation --------------------------------------------------------------

    def rotate_root(self, old_dir: Path, new_dir: Path, *, threshold: int | None = None,
                    new_keys: int = 1) -> int:
        """Root N+1 with the root keys in ``new_dir`` (made if it has none), signed by both.

        Returns the new root version.

        Raises:
            SignatureInvalid: the keys in ``old_dir`` do not meet the current threshold.
        """
        old = _load_keys(Path(old_dir), "root")
        self._check_threshold(self.root().signed, "root", old)  # before making new keys
        new_dir = Path(new_dir)
        if not any(new_dir.glob("root*.pem")):
            for i in range(new_keys):
                generate_key(new_dir / f"root-{i + 1}.pem")
        new = _load_keys(new_dir, "root")
        with self._lock():
            current = self.root()
            root = current.signed
            self._check_threshold(root, "root", old)
            for keyid in list(root.roles["root"].keyids):
                root.revoke_key(keyid, "root")
            for s in new:
                root.add_key(s.public_key, "root")
            root.roles["root"].threshold = threshold or 1
            if root.roles["root"].threshold > len(new):
                raise UsageError(f"threshold {threshold} is more than {len(new)} new keys")
            root.version += 1
            root.expires = self._expires("root")
            md = self._sign(root, [*old, *new])
            self._write(f"{root.version}.root.json", md)
            self._write("root.json", md)
            return root.version

    def _check_threshold(self, root: Root, role: str, signers: list[CryptoSigner]) -> None:
        keyids = set(root.roles[role].keyids)
        have = sum(1 for s in signers if s.public_key.keyid in keyids)
        if have < root.roles[role].threshold:
            raise SignatureInvalid(
                f"the {role} keys given ({have} of them current) do not meet the {role} "
                f"threshold of {root.roles[role].threshold}", role=role)

    def rotate_online(self, offline_dir: Path) -> int:
        """New snapshot, timestamp and bins keys; new root and targets signed offline.

        During the switch, metadata is signed with both old and new online keys,
        so clients holding either root accept it.  Returns the new root version.
        """
        offline_dir = Path(offline_dir)
        root_signers = _load_keys(offline_dir, "root")
        targets_signer = _load_keys(offline_dir, "targets")
        with self._lock():
            root_md = self.root()
            root = root_md.signed
            self._check_threshold(root, "root", root_signers)
            self._check_threshold(root, "targets", targets_signer)
            old = {r: self._online_signer(r) for r in ONLINE_ROLES}
            fresh = {r: CryptoSigner.generate_ed25519() for r in ONLINE_ROLES}
            for r in ("snapshot", "timestamp"):
                for keyid in list(root.roles[r].keyids):
                    root.revoke_key(keyid, r)
                root.add_key(fresh[r].public_key, r)
            root.version += 1
            root.expires = self._expires("root")
            snapshot = self.snapshot()
            targets_md = self.targets_role("targets", snapshot.signed)
            targets = targets_md.signed
            succinct = self._succinct(targets)
            bins_key: Key = fresh["bins"].public_key
            assert targets.delegations is not None
            targets.delegations.keys = {bins_key.keyid: bins_key}
            succinct.keyids = [bins_key.keyid]
            targets.version += 1
            targets.expires = self._expires("targets")
            new_targets = self._sign(targets, list(targets_signer))
            all_bins = {n: self.targets_role(n, snapshot.signed).signed
                        for n in succinct.get_roles()}
            # the new keys sign, the old ones too until the new root is out
            for r in ONLINE_ROLES:
                _write_atomic(self.keys_dir / f"{r}.pem", fresh[r].private_bytes, 0o600)
            self._publish_bins(all_bins, snapshot,
                               extra_signers={r: [old[r]] for r in ONLINE_ROLES},
                               targets_md=new_targets)
            md = self._sign(root, list(root_signers))
            self._write(f"{root.version}.root.json", md)
            self._write("root.json", md)
            return root.version

    # -- serving ---------------------------------------------------------------

    def metadata_path(self, name: str) -> Path:
        """The file to send for ``GET /tuf/metadata/{name}``.

        Raises:
            NotFoundError: not a metadata name, or no such version.
        """
        if not _META_NAME.match(name):
            raise NotFoundError(f"no TUF metadata file {name!r}", file=name)
        if name == "timestamp.json":
            self.refresh_if_due()
        path = self.metadata_dir / name
        if not path.is_file():
            raise NotFoundError(f"no TUF metadata file {name!r}", file=name)
        return path

    def target_path(self, registry: Registry, path: str) -> Path:
        """The file to send for ``GET /tuf/targets/{dir}/{sha256}.{name}``.

        Raises:
            NotFoundError: no such target.
        """
        dirname, _, base = path.rpartition("/")
        digest, dot, name = base.partition(".")
        if not dot or not re.fullmatch(r"[0-9a-f]{64}", digest) or ".." in path.split("/"):
            raise NotFoundError(f"no TUF target {path!r}", file=path)
        if dirname == "index":
            found = self.targets_dir / "index" / base
            if found.is_file():
                return found
        elif dirname.startswith("plugins/") and name.endswith(".corral"):
            local = registry.store.local_path(digest)
            if local is not None:
                return local
        raise NotFoundError(f"no TUF target {path!r}", file=path)


def after_change(registry: Registry, plugin_ids: list[str]) -> None:
    """Hook for the service: update TUF targets of ``plugin_ids`` if TUF is set up.

    Set up means ``tuf init`` began (``config.json``): from then on missing or
    unwritable metadata is an error, never a reason to skip signing.
    """
    data = getattr(registry, "data_dir", None)
    if data is None or not (Path(data) / "tuf" / "config.json").is_file():
        return
    TufRepository(data).update_plugins(registry, plugin_ids)


_TEMP_NAME: Final = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # corral._disk.files.write_atomic's


def sweep_temp(data_dir: Path, older_than: float | None = None) -> int:
    """Remove temp files an interrupted signing left in ``tuf/`` (older than ``older_than`` s).

    Only the ``write_atomic`` temp names are touched; signed files never match.
    """
    import time

    root = Path(data_dir) / "tuf"
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than if older_than is not None else None
    n = 0
    for folder in (root, root / "metadata", root / "keys", root / "targets" / "index"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not _TEMP_NAME.match(entry.name):
                continue
            try:
                if cutoff is None or entry.lstat().st_mtime <= cutoff:
                    entry.unlink()
                    n += 1
            except (FileNotFoundError, IsADirectoryError):
                pass
    return n


def _isolation(manifest: dict[str, Any]) -> str | None:
    """A stored manifest's isolation (its default when it has no ``[sandbox]`` table)."""
    if not manifest:
        return None
    default = Sandbox().isolation  # the manifest model's, one place for it
    sandbox = manifest.get("sandbox")
    value = sandbox.get("isolation", default) if isinstance(sandbox, dict) else default
    return value if isinstance(value, str) else None
