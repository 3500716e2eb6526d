"""The atomic installer: a content-addressed store, numbered generations and ``corral.lock``.

An operation (install, uninstall, update, rollback) runs under ``<home>/install.lock``:

1. repair: make the host database follow ``corral.lock`` (a crash between the
   switch and the database update is finished here), drop half-written files;
2. plan: resolve versions against a :class:`~corral._model.release.Source`;
3. fetch each new archive, check its sha256, extract it, check its signature
   and policy, seal it read-only and rename it into ``<home>/store/<sha256>/``;
4. check the whole new set (host version, dependency ranges, hand-registered
   plugins), run an update's ``self-test`` export in a throwaway host;
5. switch: write ``generations/<N>.json``, then rename ``corral.lock`` (one
   atomic step), then re-point the host database.

Any failure before step 5 leaves the previous generation exactly as it was:
new store trees are removed, the lock and the database are untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from corral._disk.files import exclusive, fsync_dir, sha256_file, write_atomic
from corral._disk.layout import MANIFEST_NAME
from corral._disk.tree import copy_plugin_dir
from corral._distribution.generations import (
    LOCK_NAME,
    Generation,
    diff_plugins,
    read_lock,
    sync_filesystem,
)
from corral._errors import (
    ConflictError,
    CorralError,
    InvalidPluginError,
    LifecycleError,
    NotFoundError,
    PluginError,
    PolicyDenied,
    SignatureInvalid,
    TransferError,
    UnavailableError,
    UsageError,
)
from corral._model.release import Release, Requirement, Source, parse_requirement
from corral._version import __version__

if TYPE_CHECKING:
    from corral._distribution.trust import TrustStore
    from corral._host import Host
    from corral._model.manifest import Manifest

__all__ = [
    "Change",
    "DirectorySource",
    "Installer",
    "Progress",
    "UpdateResult",
    "full_grants",
    "open_source",
    "permission_changes",
]

#: ``progress(label, done, total)``: bytes of a download, or plugins of an install step.
Progress = Callable[[str, int, int], None]

_CHUNK: Final = 1 << 16
_STRENGTH: Final = {"none": 0, "limited": 1, "strict": 2}


# -- a folder of archives ------------------------------------------------------


def _archive_manifest(archive: Path) -> Manifest:
    """The manifest inside a ``.corral`` zip (root or single top folder), unpacking nothing."""
    from corral._model.manifest import parse_manifest

    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.rstrip("/").split("/")[-1] == MANIFEST_NAME]
            names = [n for n in names if n.count("/") <= 1]
            if not names:
                raise InvalidPluginError(
                    f"{archive}: no {MANIFEST_NAME} at the root", file=str(archive)
                )
            name = min(names, key=len)
            raw = zf.read(name)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidPluginError(f"{archive}: not a readable archive ({exc})",
                                 file=str(archive)) from exc
    return parse_manifest(raw, file=f"{archive}!{name}")


@final
class DirectorySource:
    """A folder of ``.corral`` archives as a :class:`~corral._model.release.Source` (air-gapped).

    Each archive's manifest and sha256 are read once and cached by file name,
    size and mtime.  :meth:`fetch` copies the archive, hashing as it goes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self.location = str(self.path)
        self._cache: dict[str, tuple[int, int, Release]] = {}
        self._files: dict[tuple[str, str, str | None], Path] = {}

    def _scan(self) -> list[Release]:
        if not self.path.is_dir():
            raise TransferError(f"{self.path}: no such source folder", source=self.location)
        out: list[Release] = []
        try:
            entries = sorted(self.path.glob("*.corral"))
        except OSError as exc:
            raise TransferError(f"{self.path}: cannot list ({exc})", source=self.location) from exc
        for archive in entries:
            try:
                st = archive.stat()
            except OSError:
                continue
            cached = self._cache.get(archive.name)
            if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
                rel = cached[2]
            else:
                manifest = _archive_manifest(archive)
                digest, size = sha256_file(archive)
                rel = Release(
                    id=manifest.id,
                    version=manifest.version,
                    dependencies=dict(manifest.dependencies),
                    requires_corral=manifest.requires_corral,
                    sha256=digest,
                    size=size,
                    permissions=manifest.permissions.to_dict(),
                )
                self._cache[archive.name] = (st.st_mtime_ns, st.st_size, rel)
            self._files[(rel.id, rel.version, rel.sha256)] = archive
            out.append(rel)
        return out

    def releases(self, plugin_id: str) -> Sequence[Release]:
        """Every archive of ``plugin_id`` in the folder, by file name."""
        found = [r for r in self._scan() if r.id == plugin_id]
        if not found:
            raise NotFoundError(
                f"no plugin {plugin_id!r} in {self.location}", plugin_id=plugin_id,
                source=self.location,
            )
        return found

    def fetch(
        self, release: Release, dest_dir: Path, progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Copy the archive into ``dest_dir``, checking sha256 and size as the bytes go."""
        src = self._files.get((release.id, release.version, release.sha256))
        if src is None:
            self._scan()
            src = self._files.get((release.id, release.version, release.sha256))
        if src is None:
            raise NotFoundError(
                f"{release.id} {release.version} is no longer in {self.location}",
                plugin_id=release.id, source=self.location,
            )
        dest = Path(dest_dir) / f"{release.id}-{release.version}.corral"
        h = hashlib.sha256()
        done = 0
        total = release.size or 0
        try:
            with src.open("rb") as f_in, dest.open("xb") as f_out:
                while chunk := f_in.read(_CHUNK):
                    done += len(chunk)
                    if release.size is not None and done > release.size:
                        raise SignatureInvalid(
                            f"{release.id} {release.version}: {src} is larger than the "
                            f"{release.size} bytes announced", plugin_id=release.id,
                            file=str(src),
                        )
                    h.update(chunk)
                    f_out.write(chunk)
                    if progress is not None:
                        progress(done, total)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise TransferError(f"{release.id}: reading {src} failed ({exc})",
                                plugin_id=release.id, source=self.location) from exc
        if release.sha256 is not None and h.hexdigest() != release.sha256:
            raise SignatureInvalid(
                f"{release.id} {release.version}: {src} has sha256 {h.hexdigest()}, "
                f"expected {release.sha256}", plugin_id=release.id, file=str(src),
            )
        return dest


def open_source(location: str, home: Path | None = None) -> Source:
    """A source from a folder path or a registry URL (read through TUF).

    Raises:
        UsageError: a URL, but the TUF registry client is not available.
    """
    if "://" in location:
        try:
            from corral._distribution.registry_source import RegistrySource
        except ImportError:
            raise UsageError(
                f"{location}: registry sources need corral._distribution.registry_source "
                "(not available in this build); use --source DIR", source=location,
            ) from None
        if home is None:
            from corral._disk.layout import default_home

            home = default_home()
        src: Source = RegistrySource(location, Path(home))
        return src
    return DirectorySource(location)


# -- results ---------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What one operation did: the generation now current and the differences."""

    generation: int
    action: str
    changed: bool
    changes: Mapping[str, Sequence[Mapping[str, str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON data for ``--json``."""
        return {
            "generation": self.generation,
            "action": self.action,
            "changed": self.changed,
            **{k: [dict(x) for x in v] for k, v in self.changes.items()},
        }


@dataclass(frozen=True)
class UpdateResult:
    """Updates found (``available``), held for wider permissions (``held``), and the change.

    ``skipped`` lists ``{"id", "version", "reason"}`` of versions left out
    because they failed their self-test or start-up before.  A held plugin
    new to the home has ``"new": true``, its full permissions and isolation,
    and ``required_by``; an update held for bringing it has ``new_dependencies``.
    ``notes`` says what else the user should know (a self-test not run).
    """

    available: Sequence[Mapping[str, Any]]
    held: Sequence[Mapping[str, Any]]
    change: Change | None
    skipped: Sequence[Mapping[str, str]] = ()
    notes: Sequence[str] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON data for ``--json``."""
        return {
            "available": [dict(x) for x in self.available],
            "held": [dict(x) for x in self.held],
            "skipped": [dict(x) for x in self.skipped],
            "notes": list(self.notes),
            "applied": None if self.change is None else self.change.to_dict(),
        }


def full_grants(manifest: Manifest) -> dict[str, list[str]]:
    """Every grant of ``manifest`` and its isolation: what a plugin new to the home asks for."""
    return {**permission_changes({}, manifest.permissions.to_dict()),
            "isolation": [manifest.sandbox.isolation]}


def _same_location(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def permission_changes(
    old: Mapping[str, Any], new: Mapping[str, Any],
    old_isolation: str | None = None, new_isolation: str | None = None,
) -> dict[str, list[str]]:
    """Grants ``new`` adds to ``old`` per permission key, and a weaker isolation if any."""
    out: dict[str, list[str]] = {}
    for key in sorted(new):
        added = [g for g in new[key] if g not in old.get(key, ())]
        if added:
            out[key] = added
    if old_isolation and new_isolation and (
        _STRENGTH.get(new_isolation, 2) < _STRENGTH.get(old_isolation, 2)
    ):
        out["isolation"] = [f"{old_isolation} -> {new_isolation}"]
    return out


# -- the store -----------------------------------------------------------------


def _make_writable(path: Path) -> None:
    for folder, dirs, _ in os.walk(path):
        for d in [folder, *(os.path.join(folder, x) for x in dirs)]:
            with contextlib.suppress(OSError):
                os.chmod(d, 0o755)  # noqa: S103 (our own tree, about to be deleted)


def _remove_tree(path: Path) -> None:
    """Delete a sealed (read-only) store tree."""
    if path.is_dir() and not path.is_symlink():
        _make_writable(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _seal(tree: Path) -> dict[str, str]:
    """Hash every file, make files 0o444 and folders 0o555 (not the root: it moves next).

    Durability comes from one :func:`sync_filesystem` before the switch.
    """
    files: dict[str, str] = {}
    for folder, dirs, names in os.walk(tree, topdown=False):
        here = Path(folder)
        for name in names:
            path = here / name
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                h = hashlib.sha256()
                while chunk := os.read(fd, _CHUNK):
                    h.update(chunk)
                os.fchmod(fd, 0o444)
            finally:
                os.close(fd)
            files[path.relative_to(tree).as_posix()] = h.hexdigest()
        if here != tree:
            here.chmod(0o555)
        del dirs
    return dict(sorted(files.items()))


def _tree_files(tree: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for folder, _, names in os.walk(tree):
        for name in names:
            path = Path(folder) / name
            files[path.relative_to(tree).as_posix()] = sha256_file(path)[0]
    return files


def _intact(tree: Path, record: Mapping[str, Any]) -> bool:
    """The files under ``tree`` are exactly those of its store record (hashed again)."""
    try:
        return _tree_files(tree) == record.get("files")
    except OSError:
        return False


def _no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _resolve(
    requirements: Sequence[Requirement],
    source: Source,
    *,
    locked: Mapping[str, str],
    upgrade: Sequence[str],
) -> dict[str, Release]:
    from corral._distribution.resolver import resolve

    return resolve(requirements, source, host_version=__version__, locked=locked,
                   upgrade=upgrade)


# -- the installer ---------------------------------------------------------------


@final
class Installer:
    """Installs, updates, uninstalls and rolls back plugins of one home, atomically.

    ``source`` is where releases come from (not needed for uninstall, rollback,
    history or verify).  ``host`` is re-pointed after each switch; without one a
    :class:`~corral._host.Host` is opened for the operation.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        source: Source | None = None,
        *,
        allow_unsigned: bool = False,
        progress: Progress | None = None,
        host: Host | None = None,
    ) -> None:
        self.home = Path(home).expanduser().absolute()
        self.source = source
        self.allow_unsigned = allow_unsigned
        self.progress = progress
        self._host = host
        self.store_dir = self.home / "store"
        self.generations_dir = self.home / "generations"
        self.lock_path = self.home / LOCK_NAME
        self._checked: set[str] = set()  # digests whose signature this operation checked
        self._matched: set[str] = set()  # digests whose tree this operation found intact
        self._repairs: list[dict[str, str]] = []  # store trees this operation re-fetched

    # -- reading --------------------------------------------------------------

    def current(self) -> Generation | None:
        """The current generation (what ``corral.lock`` says), or ``None``."""
        return read_lock(self.lock_path)

    def generation(self, number: int) -> Generation:
        """Generation ``number`` from ``generations/<N>.json``."""
        path = self.generations_dir / f"{number}.json"
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no generation {number} ({path})", generation=number) from None
        except json.JSONDecodeError as exc:
            raise InvalidPluginError(f"{path}: not JSON ({exc})", file=str(path)) from None
        return Generation.from_dict(data, file=str(path))

    def tree(self, sha256: str) -> Path:
        """The store folder of the archive with this digest."""
        return self.store_dir / sha256

    def history(self) -> list[dict[str, Any]]:
        """Generations newest first, each with what changed from its parent."""
        cur = self.current()
        if cur is None:
            return []
        out = []
        for n in range(cur.number, 0, -1):
            try:
                gen = self.generation(n)
            except NotFoundError:
                continue
            parent: Mapping[str, Mapping[str, Any]] = {}
            if gen.parent is not None:
                with contextlib.suppress(NotFoundError):
                    parent = self.generation(gen.parent).plugins
            out.append({
                "generation": gen.number, "created": gen.created, "action": gen.action,
                "parent": gen.parent, "current": gen.number == cur.number,
                "plugins": {k: v["version"] for k, v in sorted(gen.plugins.items())},
                "failed": gen.failed,
                "failed_updates": [dict(x) for x in gen.failed_updates],
                **diff_plugins(parent, gen.plugins),
            })
        return out

    def verify(self) -> list[dict[str, Any]]:
        """Re-check every installed plugin's files against its store record and signature.

        Each result has ``state``: ``ok``, ``modified`` (files changed, added or
        removed, or the signature no longer verifies), ``revoked`` (signed by a
        key the trust store now revokes) or ``missing``.
        """
        from corral._distribution.trust import TrustStore

        with self._operation():
            cur = self.current()
            trust = TrustStore(self.home)
            results = []
            for pid, entry in sorted((cur.plugins if cur else {}).items()):
                results.append(self._verify_one(pid, entry, trust))
            return results

    def _verify_one(self, pid: str, entry: Mapping[str, Any], trust: TrustStore,
                    ) -> dict[str, Any]:
        out: dict[str, Any] = {"id": pid, "version": entry["version"], "sha256": entry["sha256"]}
        tree = self.tree(entry["sha256"])
        record = self._record(entry["sha256"])
        if not tree.is_dir() or record is None:
            return {**out, "state": "missing", "problems": [f"{tree} is gone"]}
        want: dict[str, str] = record["files"]
        have = _tree_files(tree)
        problems = [f"{f}: modified" for f in sorted(want) if f in have and have[f] != want[f]]
        problems += [f"{f}: removed" for f in sorted(set(want) - set(have))]
        problems += [f"{f}: added" for f in sorted(set(have) - set(want))]
        from corral._distribution.signing import verify_directory

        status = verify_directory(tree, strict=True)
        signature = {"state": status.state, "keyid": status.keyid, "signer": status.signer}
        recorded = (entry.get("signature") or {}).get("state", "unsigned")
        if status.state in ("modified", "invalid") or status.state != recorded:
            problems += [f"signature: {p}" for p in status.problems] or [
                f"signature: {status.state} (was {recorded})"]
        state = "modified" if problems else "ok"
        if status.state == "signed" and status.keyid and trust.state(status.keyid) == "revoked":
            problems.append(f"signature: key {status.keyid} ({status.signer}) is revoked")
            state = "revoked" if state == "ok" else state
        return {**out, "state": state, "problems": problems, "signature": signature}

    def _record(self, sha256: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.store_dir / f"{sha256}.json").read_bytes())
        except (OSError, json.JSONDecodeError):
            return None
        return data

    # -- the operation frame ----------------------------------------------------

    @contextlib.contextmanager
    def _operation(self) -> Iterator[Host]:
        """Take the install lock, repair what a crash left, yield the host to re-point."""
        from corral._host import Host

        for folder in (self.home, self.store_dir, self.generations_dir):
            folder.mkdir(parents=True, exist_ok=True)
        with exclusive(self.home / "install.lock", mode=0o644):
            host = self._host if self._host is not None else Host(home=self.home)
            self._checked.clear()
            self._matched.clear()
            self._repairs.clear()
            try:
                for stale in self.store_dir.glob(".tmp-*"):
                    _remove_tree(stale)
                cur = self.current()
                if cur is not None:
                    for extra in self.generations_dir.glob("*.json"):
                        if extra.stem.isdigit() and int(extra.stem) > cur.number:
                            extra.unlink()
                self._reconcile(host, cur)
                yield host
            finally:
                if self._host is None:
                    host.close()

    def _reconcile(self, host: Host, gen: Generation | None) -> None:
        plugins = {} if gen is None else {
            pid: self.tree(e["sha256"]) for pid, e in gen.plugins.items()
        }
        host.adopt_installed(plugins)

    def _need_source(self) -> Source:
        if self.source is None:
            raise UsageError("no source: pass --source DIR_OR_URL or set CORRAL_REGISTRY")
        return self.source

    # -- install ----------------------------------------------------------------

    def install(
        self, requirements: Sequence[str | Requirement] = (), *,
        from_lock: str | os.PathLike[str] | None = None,
        enable: bool = False,
        accept_permissions: bool = False,
        allow_source_change: bool = False,
    ) -> Change:
        """Install plugins (``ID``, ``ID@1.2``, ``ID@>=1,<2``) with their dependencies.

        ``from_lock`` installs exactly the versions and hashes of a ``corral.lock``
        (a different hash at the source raises :class:`SignatureInvalid`).
        ``enable`` also enables what was asked for (dependencies first); a plugin
        that fails to start rolls the install back, as a failed update does.

        Raises:
            PolicyDenied: a new version of an installed plugin brings a plugin
                new to the home (unless ``accept_permissions``: review its
                permissions first), or an installed plugin would change source
                or signing key (unless ``allow_source_change``).
        """
        reqs = [parse_requirement(r) if isinstance(r, str) else r for r in requirements]
        if not reqs and from_lock is None:
            raise UsageError("install needs ID[@SPEC]... or --from corral.lock")
        with self._operation() as host:
            cur = self.current()
            old = dict(cur.plugins) if cur else {}
            created: list[Path] = []
            try:
                if from_lock is not None:
                    wanted = self._from_lock(Path(from_lock), created)
                    action = f"install --from {from_lock}"
                else:
                    wanted = self._plan_install(old, reqs, created)
                    action = "install " + " ".join(str(r) for r in reqs)
                    if not accept_permissions:
                        self._hold_new_dependencies(old, reqs, wanted)
                self._admit(wanted, old)
                if from_lock is None and not allow_source_change:
                    self._pin_sources(old, wanted)
                self._check(host, wanted)
                change = self._commit(host, cur, wanted, action, created)
            except BaseException:
                for path in created:
                    _remove_tree(path)
                raise
            if enable:
                try:
                    for r in reqs:
                        host.enable(r.id)
                except CorralError as exc:
                    self._roll_back_failed(host, cur, [], exc, old, wanted)
                    raise
            if not self._repairs:
                return change
            return Change(change.generation, change.action, change.changed,
                          {**change.changes, "repaired": list(self._repairs)})

    def _plan_install(
        self, old: Mapping[str, Mapping[str, Any]], reqs: Sequence[Requirement],
        created: list[Path],
    ) -> dict[str, dict[str, Any]]:
        source = self._need_source()
        specs = {pid: str(e.get("spec", "")) for pid, e in old.items() if e.get("requested")}
        for r in reqs:
            specs[r.id] = r.spec
        asked = {r.id for r in reqs}
        locked = {pid: str(e["version"]) for pid, e in old.items() if pid not in asked}
        releases = _resolve([Requirement(p, s) for p, s in specs.items()], source,
                            locked=locked, upgrade=sorted(asked))
        return self._materialise(releases, source, old, specs, created)

    def _hold_new_dependencies(
        self, old: Mapping[str, Mapping[str, Any]], reqs: Sequence[Requirement],
        wanted: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Refuse an install whose new version of an installed plugin brings a new plugin.

        The user asked for that plugin, not for what its new version pulls in:
        like an update, it waits until its permissions were seen.

        Raises:
            PolicyDenied: listing each new plugin, its permissions and isolation.
        """
        manifests = self._manifests(wanted)
        upgraded = [r.id for r in reqs
                    if r.id in old and old[r.id]["sha256"] != wanted[r.id]["sha256"]]
        held: list[dict[str, Any]] = []
        for nid in sorted(p for p in wanted if p not in old and p not in {r.id for r in reqs}):
            by = sorted(p for p in upgraded if nid in _closure([p], manifests))
            if by:
                held.append({"id": nid, "version": str(wanted[nid]["version"]), "new": True,
                             "required_by": by, "permissions": full_grants(manifests[nid])})
        if held:
            listed = "; ".join(f"{h['id']} {h['version']} (required by "
                               f"{', '.join(h['required_by'])}: {_grants(h['permissions'])})"
                               for h in held)
            raise PolicyDenied(
                f"held: the new version brings plugins new to this home: {listed}; review "
                "their permissions and run again with --accept-permissions to install",
                plugin_id=held[0]["id"], held=held)

    def _pin_sources(self, old: Mapping[str, Mapping[str, Any]],
                     wanted: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse to move an installed plugin to another source or signing key.

        A same-named plugin at another source (or signed by another key) is
        how dependency confusion replaces a plugin; it takes an explicit flag.

        Raises:
            PolicyDenied: naming the plugin, both sources and both keys.
        """
        for pid, e in sorted(wanted.items()):
            prev = old.get(pid)
            if prev is None or prev.get("sha256") == e["sha256"]:
                continue
            was, now = str(prev.get("source") or ""), str(e.get("source") or "")
            was_sig, now_sig = prev.get("signature") or {}, e.get("signature") or {}
            was_key, now_key = was_sig.get("keyid"), now_sig.get("keyid")
            was_pub, now_pub = prev.get("publisher"), e.get("publisher")
            if was and not _same_location(was, now):
                problem = f"it was installed from {was}, version {e['version']} comes from {now}"
            elif was_pub and now_pub != was_pub:
                problem = (f"it was published by {was_pub}, version {e['version']} by "
                           f"{now_pub or 'an unknown publisher'}")
            elif was_key and now_key != was_key:
                signed = (f"by key {now_key} ({now_sig.get('signer')})" if now_key
                          else "by no key (unsigned)")
                problem = (f"it was signed by key {was_key} ({was_sig.get('signer')}), "
                           f"version {e['version']} is signed {signed}")
            else:
                continue
            raise PolicyDenied(
                f"{pid} {prev['version']}: {problem}; corral does not switch an installed "
                "plugin to another source or signing key on its own (a same-named plugin "
                "elsewhere may be an impostor); run again with --allow-source-change if you "
                "mean it", plugin_id=pid, installed_source=was, offered_source=now,
                installed_keyid=was_key, offered_keyid=now_key, installed_publisher=was_pub,
                offered_publisher=now_pub)

    def _from_lock(self, path: Path, created: list[Path]) -> dict[str, dict[str, Any]]:
        lock = read_lock(path)
        if lock is None:
            raise NotFoundError(f"{path}: no such lock file", file=str(path))
        sources: dict[str, Source] = {}
        releases: dict[str, Release] = {}
        by_source: dict[str, Source] = {}
        for pid, entry in lock.plugins.items():
            if self._stored(Release(pid, entry["version"], sha256=entry["sha256"])):
                releases[pid] = Release(pid, entry["version"], sha256=entry["sha256"])
                by_source[pid] = self.source or _Offline(str(entry.get("source", "")))
                continue
            source = self.source
            if source is None:
                loc = str(entry.get("source", ""))
                if not loc:
                    raise UsageError(f"{path}: {pid} has no source; pass --source")
                source = sources.setdefault(loc, open_source(loc, self.home))
            match = [r for r in source.releases(pid) if r.version == entry["version"]]
            if not match:
                raise NotFoundError(
                    f"{pid} {entry['version']} (pinned by {path}) is not in {source.location}",
                    plugin_id=pid,
                )
            good = [r for r in match if r.sha256 == entry["sha256"]]
            if not good:
                raise SignatureInvalid(
                    f"{pid} {entry['version']}: {source.location} offers sha256 "
                    f"{match[0].sha256}, {path} pins {entry['sha256']}",
                    plugin_id=pid, file=str(path),
                )
            releases[pid] = good[0]
            by_source[pid] = source
        out: dict[str, dict[str, Any]] = {}
        for pid, rel in releases.items():
            entry = lock.plugins[pid]
            spec = {pid: str(entry.get("spec", ""))} if entry.get("requested") else {}
            out.update(self._materialise({pid: rel}, by_source[pid], {}, spec, created))
        return out

    def _materialise(
        self,
        releases: Mapping[str, Release],
        source: Source,
        old: Mapping[str, Mapping[str, Any]],
        specs: Mapping[str, str],
        created: list[Path],
    ) -> dict[str, dict[str, Any]]:
        """Put every release in the store (fetching what is missing); the new plugin entries."""
        out: dict[str, dict[str, Any]] = {}
        todo = [r for r in releases.values() if not self._stored(r)]
        fetched = self._fetch_all(todo, source)
        try:
            for i, rel in enumerate(todo):
                tmp, archive = fetched[i]
                self._add_to_store(rel, source, created, tmp, archive)
                if self.progress is not None:
                    self.progress("install", i + 1, len(todo))
        finally:
            for tmp, _ in fetched:
                _remove_tree(tmp)
        for pid, rel in releases.items():
            assert rel.sha256 is not None
            record = self._record(rel.sha256) or {}
            prev = old.get(pid, {})
            same = prev.get("sha256") == rel.sha256
            out[pid] = {
                "version": rel.version,
                "sha256": rel.sha256,
                "source": prev.get("source", source.location) if same else source.location,
                "signature": record.get("signature", {"state": "unsigned", "keyid": None,
                                                      "signer": None}),
                "requested": pid in specs,
                "spec": specs.get(pid, ""),
            }
            publisher = prev.get("publisher") if same else rel.publisher
            if publisher:  # the registry account that published it, when the source says
                out[pid]["publisher"] = publisher
        return out

    def _stored(self, rel: Release) -> bool:
        """The release's store tree is there and its files match its record (hashed)."""
        if not rel.sha256:
            return False
        tree, record = self.tree(rel.sha256), self._record(rel.sha256)
        return tree.is_dir() and record is not None and self._matches(rel.sha256, tree, record)

    def _matches(self, sha: str, tree: Path, record: Mapping[str, Any]) -> bool:
        """:func:`_intact`, hashed once per operation and digest."""
        if sha not in self._matched:
            if not _intact(tree, record):
                return False
            self._matched.add(sha)
        return True

    def _fetch_all(self, todo: Sequence[Release], source: Source) -> list[tuple[Path, Path]]:
        """Download each release of ``todo`` into its own ``store/.tmp-*``: ``(tmp, archive)``.

        Concurrent when the source says it may be (``max_parallel_fetches``
        above 1).  If any download fails, the others are cancelled or waited
        for, every temporary folder is removed, and the failure of the first
        release in ``todo`` order that failed is raised: nothing is left behind.
        """
        workers = min(len(todo), max(1, int(getattr(source, "max_parallel_fetches", 1) or 1)))
        progress = self.progress
        if progress is not None and workers > 1:
            lock = threading.Lock()
            inner = progress

            def progress(label: str, done: int, total: int) -> None:
                with lock:  # one redraw at a time
                    inner(label, done, total)

        tmps: list[Path] = []
        try:
            for _ in todo:
                tmps.append(Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.store_dir)))
            if workers <= 1:
                return [(tmp, self._fetch_one(rel, source, tmp, progress))
                        for rel, tmp in zip(todo, tmps, strict=True)]
            from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

            pool = ThreadPoolExecutor(workers, thread_name_prefix="corral-fetch")
            try:
                futures = [pool.submit(self._fetch_one, rel, source, tmp, progress)
                           for rel, tmp in zip(todo, tmps, strict=True)]
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                # after a failure (or an interrupt) downloads not yet started are dropped
                pool.shutdown(wait=True, cancel_futures=True)
            # every download has finished or never started
            for f in futures:
                if not f.cancelled() and f.exception() is not None:
                    f.result()
            return [(tmp, f.result()) for tmp, f in zip(tmps, futures, strict=True)]
        except BaseException:
            for tmp in tmps:
                _remove_tree(tmp)
            raise

    def _fetch_one(self, rel: Release, source: Source, tmp: Path,
                   progress: Progress | None) -> Path:
        """``source.fetch`` into ``tmp``, reporting bytes (its own failures: TransferError)."""
        label = f"download {rel.id} {rel.version}"

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress(label, done, total)

        try:
            return source.fetch(rel, tmp, report)
        except CorralError:
            raise
        except OSError as exc:
            if _no_space(exc):
                raise self._no_space_error(rel, exc) from exc
            raise
        except Exception as exc:  # a source's own failure: the transfer's fault
            raise TransferError(f"{rel.id} {rel.version}: fetching from "
                                f"{source.location} failed ({type(exc).__name__}: {exc})",
                                plugin_id=rel.id) from exc

    def _add_to_store(self, rel: Release, source: Source, created: list[Path], tmp: Path,
                      archive: Path) -> None:
        """Check, extract, verify and seal one fetched release (``archive`` in ``tmp``)."""
        from corral._disk.archive import extract_archive
        from corral._model.manifest import load_manifest

        try:
            digest, _ = sha256_file(archive)
            if rel.sha256 is not None and digest != rel.sha256:
                raise SignatureInvalid(
                    f"{rel.id} {rel.version}: archive {archive.name} has sha256 {digest}, "
                    f"{source.location} announced {rel.sha256}", plugin_id=rel.id,
                    file=archive.name,
                )
            tree = extract_archive(archive, tmp / "tree")
            manifest = load_manifest(tree)
            if (manifest.id, manifest.version) != (rel.id, rel.version):
                raise InvalidPluginError(
                    f"{archive.name}: holds {manifest.id} {manifest.version}, "
                    f"expected {rel.id} {rel.version}", plugin_id=rel.id, file=archive.name,
                )
            signature = self._check_signature(tree, rel)
            self._checked.add(digest)
            files = _seal(tree)
            final = self.tree(digest)
            record = {"id": rel.id, "version": rel.version, "sha256": digest,
                      "signature": signature, "files": files,
                      "publisher_verified": rel.publisher_verified}
            record_path = self.store_dir / f"{digest}.json"
            known = self._record(digest) is not None
            aside = None
            if final.exists():
                # A tree left by a crash before its record, or one whose files no
                # longer match it: move it aside, put the new one in, delete the old.
                aside = self.store_dir / f".tmp-aside-{os.urandom(6).hex()}"
                os.rename(final, aside)
            try:
                write_atomic(record_path,
                             json.dumps(record, sort_keys=True, indent=1).encode(),
                             durable=False)
                if not known:  # a record some generation may use stays on failure
                    created.append(record_path)
                os.rename(tree, final)
            except BaseException:
                if aside is not None and not final.exists():
                    os.rename(aside, final)
                raise
            if not known:
                created.append(final)
            final.chmod(0o555)
            self._matched.add(digest)  # sealed from these very files just now
            if aside is not None:
                _remove_tree(aside)
                if known:
                    self._repairs.append({"id": rel.id, "version": rel.version})
        except OSError as exc:
            if _no_space(exc):
                raise self._no_space_error(rel, exc) from exc
            raise
        finally:
            _remove_tree(tmp)

    def _no_space_error(self, rel: Release, exc: OSError) -> CorralError:
        return UnavailableError(
            f"{rel.id} {rel.version}: no space left on the device of {self.home} "
            f"(nothing was changed): {exc}", plugin_id=rel.id, reason="no_space")

    def _check_signature(self, tree: Path, rel: Release) -> dict[str, Any]:
        from corral._distribution.signing import verify_directory
        from corral._distribution.trust import TrustStore, check_signature, load_policy

        status = verify_directory(tree, strict=True)
        check_signature(
            status, plugin_id=rel.id, version=rel.version, trust=TrustStore(self.home),
            publisher_verified=rel.publisher_verified, allow_unsigned=self.allow_unsigned,
            policy=load_policy(self.home),
        )
        return {"state": status.state, "keyid": status.keyid, "signer": status.signer}

    def _admit(self, wanted: Mapping[str, Mapping[str, Any]],
               before: Mapping[str, Mapping[str, Any]], *, every: bool = False) -> None:
        """Check each plugin entering the new generation against today's trust store and policy.

        A plugin enters when its digest differs from ``before`` (all of them
        with ``every``).  Trees checked as they entered the store in this
        operation are not checked twice.  The tree must still match its record.

        Raises:
            SignatureInvalid: a tree no longer matches its record, or the
                signature is refused (a revoked key, a stricter policy, unsigned).
        """
        for pid, e in sorted(wanted.items()):
            sha = str(e["sha256"])
            if sha in self._checked or (not every and before.get(pid, {}).get("sha256") == sha):
                continue
            tree, record = self.tree(sha), self._record(sha)
            if not tree.is_dir() or record is None:
                raise NotFoundError(f"{pid} {e['version']}: store tree {tree} is gone; "
                                    "install it again", plugin_id=pid)
            if not self._matches(sha, tree, record):
                raise SignatureInvalid(
                    f"{pid} {e['version']}: the files of {tree} no longer match its record "
                    f"{sha}.json; repair it with corral install --from {self.lock_path} "
                    "--source ...", plugin_id=pid, file=str(tree))
            self._check_signature(tree, Release(
                pid, str(e["version"]), sha256=sha,
                publisher_verified=bool(record.get("publisher_verified"))))
            self._checked.add(sha)

    # -- checks and the switch ---------------------------------------------------

    def _manifests(self, plugins: Mapping[str, Mapping[str, Any]]) -> dict[str, Manifest]:
        from corral._model.manifest import load_manifest

        return {pid: load_manifest(self.tree(e["sha256"])) for pid, e in plugins.items()}

    def _check(self, host: Host, wanted: Mapping[str, Mapping[str, Any]]) -> None:
        """Host version, every dependency range, and hand-registered plugins, over the new set."""
        from corral._model.deps import check_dependencies, check_requires_corral
        from corral._model.manifest import Manifest

        for pid, e in wanted.items():
            if not self.tree(e["sha256"]).is_dir():
                raise NotFoundError(
                    f"{pid} {e['version']}: store tree {self.tree(e['sha256'])} is gone; "
                    "install it again", plugin_id=pid,
                )
        manifests = self._manifests(wanted)
        by_hand: dict[str, Manifest] = {}
        for info in host.list(discovered=False):
            if info.source == "installed":
                continue
            if info.id in wanted:
                raise InvalidPluginError(
                    f"{info.id} is registered by hand (corral add) from {info.path}; "
                    f"remove it before installing it", plugin_id=info.id, path=info.path,
                )
            by_hand[info.id] = Manifest.from_dict(info.manifest)
        known = {**by_hand, **manifests}
        for m in manifests.values():
            check_requires_corral(m, __version__)
            check_dependencies(m, known)
        for m in by_hand.values():
            if any(dep in manifests or dep not in by_hand for dep in m.dependencies):
                check_dependencies(m, known)

    def _commit(
        self,
        host: Host,
        cur: Generation | None,
        plugins: Mapping[str, Mapping[str, Any]],
        action: str,
        created: list[Path],
        *,
        force: bool = False,
    ) -> Change:
        old = dict(cur.plugins) if cur else {}
        if cur is not None and not force and _same(old, plugins):
            return Change(cur.number, action, False, diff_plugins(old, old))
        if cur is None and not plugins and not force:
            return Change(0, action, False, diff_plugins({}, {}))
        number = (cur.number if cur else 0) + 1
        gen = Generation(
            number=number,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            action=action,
            parent=cur.number if cur else None,
            plugins={k: dict(v) for k, v in plugins.items()},
        )
        try:
            if created or self._repairs:  # new trees, durable before anything uses them
                sync_filesystem(self.store_dir)
            write_atomic(self.generations_dir / f"{number}.json", gen.encode())
            write_atomic(self.lock_path, gen.encode(lock=True))  # the switch
        except OSError as exc:
            with contextlib.suppress(OSError):
                (self.generations_dir / f"{number}.json").unlink()
            if _no_space(exc):
                raise UnavailableError(f"no space left on the device of {self.home} "
                                       "(nothing was changed)", reason="no_space") from exc
            raise
        created.clear()  # from here on the new trees belong to a generation
        self._reconcile(host, gen)
        return Change(number, action, True, diff_plugins(old, plugins))

    # -- uninstall --------------------------------------------------------------

    def uninstall(self, ids: Sequence[str]) -> Change:
        """Remove plugins, and the dependencies nothing else needs any more.

        Raises:
            NotFoundError: an id is not installed.
            LifecycleError: another installed plugin still needs one of them.
        """
        if not ids:
            raise UsageError("uninstall needs at least one plugin id")
        with self._operation() as host:
            cur = self.current()
            old = dict(cur.plugins) if cur else {}
            for pid in ids:
                if pid not in old:
                    raise NotFoundError(f"{pid} is not installed", plugin_id=pid)
            manifests = self._manifests(old)
            roots = [p for p, e in old.items() if e.get("requested") and p not in ids]
            keep = _closure(roots, manifests)
            needed = {p: sorted(q for q in keep if p in manifests[q].dependencies)
                      for p in ids if p in keep}
            if needed:
                pid, by = next(iter(needed.items()))
                raise LifecycleError(f"cannot uninstall {pid}: needed by {', '.join(by)}",
                                     plugin_id=pid, dependents=by)
            wanted = {p: old[p] for p in sorted(keep)}
            self._check(host, wanted)
            return self._commit(host, cur, wanted, "uninstall " + " ".join(ids), [])

    # -- rollback ---------------------------------------------------------------

    def rollback(self, to: int | None = None) -> Change:
        """Make a new generation equal to generation ``to``.

        Without ``to``: the nearest ancestor (following ``parent``) that did not
        fail its health check and differs from the current set; the action
        names the failed generations it skipped.  Needs no network: every
        generation's store trees are kept.  Every plugin of the target is
        checked again against today's trust store and policy.

        Raises:
            SignatureInvalid: a plugin of the target is signed by a key revoked
                since (or the policy now refuses it); the message names it.
        """
        with self._operation() as host:
            cur = self.current()
            if cur is None:
                raise UsageError("nothing is installed; there is nothing to roll back")
            skipped: list[int] = []
            target = self._rollback_target(cur, skipped) if to is None else to
            if target == 0:
                plugins: Mapping[str, Mapping[str, Any]] = {}
            else:
                plugins = self.generation(target).plugins
            try:
                self._admit(plugins, cur.plugins, every=True)
            except SignatureInvalid as exc:
                raise SignatureInvalid(f"cannot roll back to generation {target}: {exc.message}",
                                       plugin_id=exc.plugin_id,
                                       **{**exc.details, "generation": target}) from exc
            self._check(host, plugins)
            action = f"rollback to {target}"
            if skipped:
                action += f" (skipped failed generation {', '.join(map(str, skipped))})"
            return self._commit(host, cur, plugins, action, [], force=True)

    def _rollback_target(self, cur: Generation, skipped: list[int]) -> int:
        """The nearest ancestor of ``cur`` not failed and not equal to it (0: nothing)."""
        number = cur.parent
        seen: set[int] = set()
        while number is not None and number not in seen:
            seen.add(number)
            if number == 0:
                return 0
            try:
                gen = self.generation(number)
            except NotFoundError:
                break
            if gen.failed is not None:
                skipped.append(number)
            elif not _same(gen.plugins, cur.plugins):
                return number
            number = gen.parent
        raise UsageError(f"generation {cur.number} has no earlier generation to roll back to"
                         + (f" (skipped failed generation {', '.join(map(str, skipped))})"
                            if skipped else ""))

    # -- update -----------------------------------------------------------------

    def update(
        self, ids: Sequence[str] = (), *, check: bool = False, accept_permissions: bool = False,
        retry_failed: bool = False, allow_source_change: bool = False,
    ) -> UpdateResult:
        """Find newer versions and apply them (all plugins, or ``ids``).

        A version whose permissions grant more (a new entry in any list, or a
        weaker isolation) is held unless ``accept_permissions``; so is a version
        that brings a plugin new to the home (held with it, its full permissions
        listed): none of the held code runs.  A version with a ``self-test``
        export must pass it in a throwaway host first, always in a sandbox.  A
        version that failed its self-test or start-up before is skipped (listed
        in ``skipped``) unless ``retry_failed``.  Without a source, the one
        recorded in ``corral.lock`` is used.  ``check`` only lists.

        Raises:
            PolicyDenied: a plugin would come from another source or signing
                key than it was installed from (unless ``allow_source_change``).
        """
        with self._operation() as host, contextlib.ExitStack() as stack:
            cur = self.current()
            old = dict(cur.plugins) if cur else {}
            for pid in ids:
                if pid not in old:
                    raise NotFoundError(f"{pid} is not installed", plugin_id=pid)
            if cur is None or not old:
                return UpdateResult([], [], None)
            source = self._update_source(old, stack)
            upgrade = sorted(ids or old)
            specs = {p: str(e.get("spec", "")) for p, e in old.items() if e.get("requested")}
            reqs = [Requirement(p, s) for p, s in specs.items()]
            locked = {p: str(e["version"]) for p, e in old.items()}
            releases = _resolve(reqs, source, locked=locked, upgrade=upgrade)
            skipped: list[dict[str, str]] = []
            failed = {} if retry_failed else self._failed_versions()
            skipped = [{"id": p, "version": r.version, "reason": failed[(p, r.version)]}
                       for p, r in sorted(releases.items()) if (p, r.version) in failed
                       and old.get(p, {}).get("version") != r.version]
            if skipped:
                releases, reqs = self._avoid(failed, old, reqs, source, locked, upgrade)
            old_manifests = self._manifests(old)
            available: list[dict[str, Any]] = []
            for pid, rel in sorted(releases.items()):
                if pid in old and old[pid]["sha256"] == rel.sha256:
                    continue
                om = old_manifests.get(pid)
                available.append({
                    "id": pid, "installed": old[pid]["version"] if pid in old else None,
                    "available": rel.version,
                    "permissions": permission_changes(
                        om.permissions.to_dict() if om else {}, rel.permissions),
                })
            if check or not available:
                return UpdateResult(available, [], None, skipped)
            created: list[Path] = []
            notes: list[str] = []
            try:
                wanted = self._materialise(releases, source, old, specs, created)
                held: list[dict[str, Any]] = []
                while True:  # each round holds at least one more plugin, or ends
                    review = self._review(available, old, old_manifests, wanted)
                    fresh = [] if accept_permissions else [
                        r for r in review if r["id"] not in {h["id"] for h in held}]
                    if not fresh:
                        break
                    held += fresh
                    wanted = self._without(held, reqs, locked, upgrade, source, old, specs,
                                           created)
                if any(h["id"] in wanted and old.get(h["id"], {}).get("sha256")
                       != wanted[h["id"]]["sha256"] for h in held):
                    wanted = {p: dict(e) for p, e in old.items()}  # no plan leaves them out
                self._admit(wanted, old)
                if not allow_source_change:
                    self._pin_sources(old, wanted)
                self._check(host, wanted)
                for pid, e in wanted.items():
                    if old.get(pid, {}).get("sha256") != e["sha256"]:
                        try:
                            note = self._self_test(pid, wanted)
                            if note:
                                notes.append(note)
                        except PluginError as exc:
                            self._remember_failure(cur.number, [(pid, str(e["version"]))],
                                                   exc.message)
                            raise
                names = [r["id"] for r in available if r not in held
                         and wanted.get(r["id"], {}).get("sha256") != old.get(r["id"], {})
                         .get("sha256")]
                enabled = [i.id for i in host.list(discovered=False) if i.state == "enabled"]
                try:
                    change = self._commit(host, cur, wanted, "update " + " ".join(names),
                                          created)
                    self._health(host, old, wanted, enabled)
                except CorralError as exc:
                    self._roll_back_failed(host, cur, enabled, exc, old, wanted)
                    raise
            except BaseException:
                for path in created:
                    _remove_tree(path)
                raise
            return UpdateResult(available, held, change if change.changed else None, skipped,
                                notes)

    def _review(
        self, available: list[dict[str, Any]], old: Mapping[str, Mapping[str, Any]],
        old_manifests: Mapping[str, Manifest], wanted: Mapping[str, Mapping[str, Any]],
    ) -> list[dict[str, Any]]:
        """The rows of ``available`` a plan would need reviewed: wider permissions, new plugins.

        Sets each row's ``permissions`` (a new plugin: all it asks for, with its
        isolation); an update that brings a new plugin is listed with it.  A new
        plugin missing from ``available`` (another plan found it) gets a row.
        """
        manifests = self._manifests(wanted)
        rows = {r["id"]: r for r in available}
        changed = [p for p in sorted(wanted)
                   if old.get(p, {}).get("sha256") != wanted[p]["sha256"]]
        out: list[dict[str, Any]] = []
        for pid in changed:
            om, nm = old_manifests.get(pid), manifests[pid]
            row = rows.get(pid)
            if row is None:
                row = {"id": pid, "installed": old[pid]["version"] if pid in old else None,
                       "available": str(wanted[pid]["version"])}
                available.append(row)
                rows[pid] = row
            if om is None:
                row["permissions"] = full_grants(nm)
                row["new"] = True
                row["required_by"] = sorted(p for p in changed if p in old
                                            and pid in _closure([p], manifests))
                out.append(row)
                continue
            row["permissions"] = permission_changes(
                om.permissions.to_dict(), nm.permissions.to_dict(),
                om.sandbox.isolation, nm.sandbox.isolation)
            brings = sorted(p for p in _closure([pid], manifests) if p not in old)
            if brings:
                row["new_dependencies"] = brings
            if row["permissions"] or brings:
                out.append(row)
        return out

    def _update_source(self, plugins: Mapping[str, Mapping[str, Any]],
                       stack: contextlib.ExitStack) -> Source:
        """The installer's source, else the one ``corral.lock`` records for every plugin.

        Raises:
            UsageError: no source anywhere, or the plugins come from several.
        """
        if self.source is not None:
            return self.source
        by_source: dict[str, list[str]] = {}
        for pid, e in sorted(plugins.items()):
            by_source.setdefault(str(e.get("source") or ""), []).append(pid)
        by_source.pop("", None)
        if not by_source:
            return self._need_source()
        if len(by_source) > 1:
            named = "; ".join(f"{', '.join(p)} from {loc}" for loc, p in sorted(by_source.items()))
            raise UsageError(
                f"{self.lock_path} records several sources ({named}); pass --source "
                "DIR_OR_URL or set CORRAL_REGISTRY", sources=sorted(by_source),
            )
        source = open_source(next(iter(by_source)), self.home)
        close = getattr(source, "close", None)
        if close is not None:
            stack.callback(close)
        return source

    def _failed_versions(self) -> dict[tuple[str, str], str]:
        """``(id, version) -> reason`` of every version a generation file says failed."""
        out: dict[tuple[str, str], str] = {}
        for path in self.generations_dir.glob("*.json"):
            if not path.stem.isdigit():
                continue
            with contextlib.suppress(CorralError):
                for x in self.generation(int(path.stem)).failed_updates:
                    out[(x.get("id", ""), x.get("version", ""))] = x.get("reason", "")
        return out

    def _avoid(
        self, failed: Mapping[tuple[str, str], str], old: Mapping[str, Mapping[str, Any]],
        reqs: list[Requirement], source: Source, locked: dict[str, str], upgrade: list[str],
    ) -> tuple[dict[str, Release], list[Requirement]]:
        """Resolve again without the failed versions (else keep those plugins where they are)."""
        out: dict[str, list[str]] = {}
        for pid, version in sorted(failed):
            if pid in old and old[pid]["version"] != version:
                out.setdefault(pid, []).append(f"!={version}")
        more = [*reqs, *(Requirement(p, ",".join(v)) for p, v in out.items())]
        try:
            return _resolve(more, source, locked=locked, upgrade=upgrade), more
        except ConflictError:
            pins = [*reqs, *(Requirement(p, f"=={old[p]['version']}") for p in out)]
            return _resolve(pins, source, locked=locked, upgrade=upgrade), pins

    def _remember_failure(self, number: int, pairs: Sequence[tuple[str, str]], reason: str,
                          *, failed: bool = False) -> None:
        """Record in ``generations/<number>.json`` versions that failed (and the generation)."""
        with contextlib.suppress(CorralError, OSError):
            gen = self.generation(number)
            seen = {(x.get("id"), x.get("version")) for x in gen.failed_updates}
            extra = tuple({"id": p, "version": v, "reason": reason} for p, v in pairs
                          if (p, v) not in seen)
            gen = dataclasses.replace(gen, failed_updates=(*gen.failed_updates, *extra),
                                      failed=reason if failed else gen.failed)
            write_atomic(self.generations_dir / f"{number}.json", gen.encode())

    def _health(
        self, host: Host, old: Mapping[str, Mapping[str, Any]],
        new: Mapping[str, Mapping[str, Any]], enabled: Sequence[str],
    ) -> None:
        """Start, on its new version, every updated plugin that was enabled (the health check).

        An embedded host was re-enabled by the reconcile already; the host this
        installer opened for itself starts them here.
        """
        if self._host is not None:
            return
        for pid in enabled:
            if pid in new and old.get(pid, {}).get("sha256") != new[pid]["sha256"]:
                host.enable(pid)

    def _roll_back_failed(
        self, host: Host, cur: Generation | None, enabled: Sequence[str], exc: CorralError,
        old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """After a switch whose health check failed: mark it failed, back to ``cur``, raise.

        The failed generation records the failing versions (the plugin that
        failed, or every updated one when the error names none of them).
        """
        now = self.current()
        if now is None or (cur is not None and now.number == cur.number):
            return  # not switched: nothing to undo
        back_to = cur.number if cur is not None else 0  # 0: the empty generation
        back_plugins: Mapping[str, Mapping[str, Any]] = cur.plugins if cur is not None else {}
        updated = [p for p in sorted(new) if old.get(p, {}).get("sha256") != new[p]["sha256"]]
        culprits = [exc.plugin_id] if exc.plugin_id in updated else updated
        self._remember_failure(now.number, [(p, str(new[p]["version"])) for p in culprits],
                               exc.message, failed=True)
        self._commit(host, now, back_plugins,
                     f"rollback to {back_to} (automatic: {exc.message})", [], force=True)
        for pid in enabled:
            with contextlib.suppress(CorralError):
                if pid in back_plugins and host.info(pid)["state"] != "enabled":
                    host.enable(pid)
        raise PluginError(
            f"the change failed its health check and was rolled back to generation "
            f"{back_to} (now generation {now.number + 1}): {exc.message}",
            plugin_id=exc.plugin_id, cause=exc.to_dict(), generation=now.number + 1,
        ) from exc

    def _without(
        self, held: list[dict[str, Any]], reqs: list[Requirement], locked: dict[str, str],
        upgrade: list[str], source: Source, old: Mapping[str, Mapping[str, Any]],
        specs: Mapping[str, str], created: list[Path],
    ) -> dict[str, dict[str, Any]]:
        """The update plan with ``held`` plugins pinned to their installed versions.

        A held plugin new to the home has no version to pin: the plan must do
        without it (the caller checks).
        """
        pins = [Requirement(r["id"], f"=={r['installed']}") for r in held if r["installed"]]
        rest = [p for p in upgrade if p not in {r["id"] for r in held}]
        try:
            releases = _resolve([*reqs, *pins], source, locked=locked, upgrade=rest)
        except ConflictError:
            return {p: dict(e) for p, e in old.items()}
        return self._materialise(releases, source, old, specs, created)

    def _self_test(self, plugin_id: str,
                   plugins: Mapping[str, Mapping[str, Any]]) -> str | None:
        """Run the ``self-test`` export of a new version in a throwaway host; raise if it fails.

        It never runs in this process: a plugin (or a dependency) of isolation
        ``none`` is run at ``strict`` for the test (``limited`` where ``strict``
        cannot be enforced), under its own permissions.  Where neither can, the
        test is not run and the returned note says so.
        """
        from corral._host import Host
        from corral._services.sandboxed import sandbox_problem

        manifests = self._manifests(plugins)
        manifest = manifests[plugin_id]
        if "self-test" not in manifest.exports:
            return None
        closure = sorted(_closure([plugin_id], manifests))
        lifted = [p for p in closure if manifests[p].sandbox.isolation == "none"]
        level = next((x for x in ("strict", "limited") if not sandbox_problem(x)), None)
        if lifted and level is None:
            return (f"{plugin_id} {manifest.version}: self-test not run: it would run "
                    f"{', '.join(lifted)} (isolation none) in this process, and this machine "
                    f"cannot sandbox it ({sandbox_problem('limited')})")
        with tempfile.TemporaryDirectory(prefix="corral-selftest-") as tmp:
            trees = [self.tree(plugins[p]["sha256"]) if p not in lifted
                     else _sandboxed_copy(self.tree(plugins[p]["sha256"]),
                                          Path(tmp) / "lifted" / p, str(level))
                     for p in closure]
            try:
                with Host(home=Path(tmp) / "home", workspace=tmp) as throwaway:
                    throwaway.register(*trees)
                    throwaway.enable(plugin_id)
                    result = throwaway.call(plugin_id, "self-test", None)
            except CorralError as exc:
                how = (f" (run at isolation {level!r} for the test, where "
                       f"{', '.join(lifted)} asks for 'none')" if lifted else "")
                raise PluginError(
                    f"{plugin_id} {manifest.version}: self-test failed, the update was not "
                    f"applied{how}: {exc.message}", plugin_id=plugin_id, cause=exc.to_dict(),
                ) from exc
            if result is False or (isinstance(result, dict) and result.get("ok") is False):
                raise PluginError(
                    f"{plugin_id} {manifest.version}: self-test returned {result!r}, the "
                    "update was not applied", plugin_id=plugin_id,
                )
        return None

    # -- garbage ----------------------------------------------------------------

    def prune(self, keep: int) -> list[int]:
        """Delete generation files but the current one and the ``keep`` most recent others.

        Returns the numbers deleted, oldest first.

        Raises:
            UsageError: ``keep`` is negative.
        """
        if keep < 0:
            raise UsageError(f"--keep must be 0 or more, got {keep}")
        with self._operation():
            cur = self.current()
            current = None if cur is None else cur.number
            others = sorted(int(p.stem) for p in self.generations_dir.glob("*.json")
                            if p.stem.isdigit() and int(p.stem) != current)
            gone = []
            for n in others[:max(0, len(others) - keep)]:
                (self.generations_dir / f"{n}.json").unlink()
                gone.append(n)
            if gone:
                fsync_dir(self.generations_dir)
            return gone

    def gc(self, keep: int | None = None) -> list[str]:
        """Delete store trees no generation refers to; returns their digests.

        With ``keep``, first :meth:`prune` the generations to the current one
        and the ``keep`` most recent, so their trees can go too.
        """
        if keep is not None:
            self.prune(keep)
        with self._operation():
            cur = self.current()
            used: set[str] = {str(e["sha256"]) for e in (cur.plugins if cur else {}).values()}
            for path in self.generations_dir.glob("*.json"):
                with contextlib.suppress(CorralError, ValueError):
                    used.update(e["sha256"] for e in self.generation(int(path.stem)).plugins
                                .values())
            gone = []
            for path in sorted(self.store_dir.iterdir()):
                digest = path.name.removesuffix(".json")
                if digest.startswith(".") or digest in used:
                    continue
                _remove_tree(path)
                if not path.name.endswith(".json"):
                    gone.append(digest)
            return gone


@final
class _Offline:
    """A stand-in source for a plugin already in the store (nothing to fetch)."""

    def __init__(self, location: str) -> None:
        self.location = location

    def releases(self, plugin_id: str) -> Sequence[Release]:
        raise NotFoundError(f"{plugin_id}: offline", plugin_id=plugin_id)

    def fetch(self, release: Release, dest_dir: Path,
              progress: Callable[[int, int], None] | None = None) -> Path:
        raise TransferError(f"{release.id}: offline", plugin_id=release.id)


def _sandboxed_copy(tree: Path, dest: Path, level: str) -> Path:
    """A copy of ``tree`` whose manifest asks for ``level`` instead of isolation ``none``."""
    import tomlkit

    dest.parent.mkdir(parents=True, exist_ok=True)
    copy_plugin_dir(tree, dest)
    doc = tomlkit.parse((dest / MANIFEST_NAME).read_text(encoding="utf-8"))
    if "sandbox" not in doc:
        doc["sandbox"] = tomlkit.table()
    doc["sandbox"]["isolation"] = level
    (dest / MANIFEST_NAME).write_text(tomlkit.dumps(doc), encoding="utf-8")
    return dest


def _grants(perms: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in perms.items()) or "no permissions"


def _closure(roots: Sequence[str], manifests: Mapping[str, Manifest]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in manifests:
            continue
        seen.add(pid)
        todo.extend(manifests[pid].dependencies)
    return seen


def _same(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> bool:
    return {k: dict(v) for k, v in a.items()} == {k: dict(v) for k, v in b.items()}
