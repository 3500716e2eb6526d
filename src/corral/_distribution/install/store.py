"""The content-addressed store: each archive's tree, sealed read-only, under its sha256.

A release enters ``<home>/store/<sha256>/`` by being fetched into
``store/.tmp-*``, checked against its announced sha256, extracted,
signature-checked, sealed and renamed into place, with ``<sha256>.json``
recording the hash of every file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Final, final

from corral._disk.archive import extract_archive
from corral._disk.files import sha256_file, write_atomic
from corral._errors import (
    CorralError,
    InvalidPluginError,
    SignatureInvalid,
    TransferError,
    UnavailableError,
)
from corral._model.manifest import Manifest, load_manifest
from corral._model.release import Release, Source

__all__ = ["CheckSignature", "Progress", "Store", "no_space", "remove_tree"]

#: ``progress(label, done, total)``: bytes of a download, or plugins of an install step.
Progress = Callable[[str, int, int], None]
#: ``check(tree, release, digest)``: verify an extracted tree's signature against the
#: trust store and policy (raising if refused); returns the signature record.
CheckSignature = Callable[[Path, Release, str], dict[str, Any]]

_CHUNK: Final = 1 << 16


def _make_writable(path: Path) -> None:
    for folder, dirs, _ in os.walk(path):
        for d in [folder, *(os.path.join(folder, x) for x in dirs)]:
            with contextlib.suppress(OSError):
                os.chmod(d, 0o755)  # noqa: S103 (our own tree, about to be deleted)


def remove_tree(path: Path) -> None:
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


def tree_files(tree: Path) -> dict[str, str]:
    """Every file under ``tree`` and its sha256, hashed now."""
    files: dict[str, str] = {}
    for folder, _, names in os.walk(tree):
        for name in names:
            path = Path(folder) / name
            files[path.relative_to(tree).as_posix()] = sha256_file(path)[0]
    return files


def _intact(tree: Path, record: Mapping[str, Any]) -> bool:
    """The files under ``tree`` are exactly those of its store record (hashed again)."""
    try:
        return tree_files(tree) == record.get("files")
    except OSError:
        return False


def no_space(exc: OSError) -> bool:
    """The error says the disk (or the quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@final
class Store:
    """The store of one home: trees by digest, their records, and how releases get in.

    :meth:`begin` starts an operation: what the last one hashed is forgotten
    and half-written temporary folders are dropped.  ``repairs`` lists the
    trees this operation fetched again because their files no longer matched.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / "store"
        self.repairs: list[dict[str, str]] = []
        self._matched: set[str] = set()  # digests whose tree this operation found intact

    def begin(self) -> None:
        """Start an operation (under the install lock)."""
        self._matched.clear()
        self.repairs.clear()
        for stale in self.dir.glob(".tmp-*"):
            remove_tree(stale)

    def tree(self, sha256: str) -> Path:
        """The store folder of the archive with this digest."""
        return self.dir / sha256

    def record(self, sha256: str) -> dict[str, Any] | None:
        """The store record ``<sha256>.json`` (id, version, signature, files), if readable."""
        try:
            data: dict[str, Any] = json.loads((self.dir / f"{sha256}.json").read_bytes())
        except (OSError, json.JSONDecodeError):
            return None
        return data

    def manifests(self, plugins: Mapping[str, Mapping[str, Any]]) -> dict[str, Manifest]:
        """The manifest of each plugin entry's store tree."""
        return {pid: load_manifest(self.tree(e["sha256"])) for pid, e in plugins.items()}

    def stored(self, rel: Release) -> bool:
        """The release's store tree is there and its files match its record (hashed)."""
        if not rel.sha256:
            return False
        tree, record = self.tree(rel.sha256), self.record(rel.sha256)
        return tree.is_dir() and record is not None and self.matches(rel.sha256, tree, record)

    def matches(self, sha: str, tree: Path, record: Mapping[str, Any]) -> bool:
        """The files of ``tree`` match ``record``: hashed once per operation and digest."""
        if sha not in self._matched:
            if not _intact(tree, record):
                return False
            self._matched.add(sha)
        return True

    def put(self, todo: Sequence[Release], source: Source, created: list[Path],
            check: CheckSignature, progress: Progress | None = None) -> None:
        """Fetch, check and seal each release of ``todo`` into the store.

        Paths it creates are appended to ``created`` (the caller removes them
        if the operation fails before the switch).
        """
        fetched = self._fetch_all(todo, source, progress)
        try:
            for i, rel in enumerate(todo):
                tmp, archive = fetched[i]
                self._add(rel, source, created, tmp, archive, check)
                if progress is not None:
                    progress("install", i + 1, len(todo))
        finally:
            for tmp, _ in fetched:
                remove_tree(tmp)

    def collect(self, used: set[str]) -> list[str]:
        """Delete store trees (and records) whose digest is not in ``used``; their digests."""
        gone = []
        for path in sorted(self.dir.iterdir()):
            digest = path.name.removesuffix(".json")
            if digest.startswith(".") or digest in used:
                continue
            remove_tree(path)
            if not path.name.endswith(".json"):
                gone.append(digest)
        return gone

    def no_space_error(self, rel: Release, exc: OSError) -> UnavailableError:
        """The error of a full disk while ``rel`` was coming in."""
        return UnavailableError(
            f"{rel.id} {rel.version}: no space left on the device of {self.home} "
            f"(nothing was changed): {exc}", plugin_id=rel.id, reason="no_space")

    def _fetch_all(self, todo: Sequence[Release], source: Source,
                   progress: Progress | None) -> list[tuple[Path, Path]]:
        """Download each release of ``todo`` into its own ``store/.tmp-*``: ``(tmp, archive)``.

        Concurrent when the source says it may be (``max_parallel_fetches``
        above 1).  If any download fails, the others are cancelled or waited
        for, every temporary folder is removed, and the failure of the first
        release in ``todo`` order that failed is raised: nothing is left behind.
        """
        workers = min(len(todo), max(1, int(getattr(source, "max_parallel_fetches", 1) or 1)))
        if progress is not None and workers > 1:
            lock = threading.Lock()
            inner = progress

            def progress(label: str, done: int, total: int) -> None:
                with lock:  # one redraw at a time
                    inner(label, done, total)

        tmps: list[Path] = []
        try:
            for _ in todo:
                tmps.append(Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.dir)))
            if workers <= 1:
                return [(tmp, self._fetch_one(rel, source, tmp, progress))
                        for rel, tmp in zip(todo, tmps, strict=True)]
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
                remove_tree(tmp)
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
            if no_space(exc):
                raise self.no_space_error(rel, exc) from exc
            raise
        except Exception as exc:  # a source's own failure: the transfer's fault
            raise TransferError(f"{rel.id} {rel.version}: fetching from "
                                f"{source.location} failed ({type(exc).__name__}: {exc})",
                                plugin_id=rel.id) from exc

    def _add(self, rel: Release, source: Source, created: list[Path], tmp: Path,
             archive: Path, check: CheckSignature) -> None:
        """Check, extract, verify and seal one fetched release (``archive`` in ``tmp``)."""
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
            signature = check(tree, rel, digest)
            files = _seal(tree)
            final = self.tree(digest)
            record = {"id": rel.id, "version": rel.version, "sha256": digest,
                      "signature": signature, "files": files,
                      "publisher_verified": rel.publisher_verified}
            record_path = self.dir / f"{digest}.json"
            known = self.record(digest) is not None
            aside = None
            if final.exists():
                # A tree left by a crash before its record, or one whose files no
                # longer match it: move it aside, put the new one in, delete the old.
                aside = self.dir / f".tmp-aside-{os.urandom(6).hex()}"
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
                remove_tree(aside)
                if known:
                    self.repairs.append({"id": rel.id, "version": rel.version})
        except OSError as exc:
            if no_space(exc):
                raise self.no_space_error(rel, exc) from exc
            raise
        finally:
            remove_tree(tmp)
