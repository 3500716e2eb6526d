"""Where releases come from: a folder of ``.corral`` archives, or a registry URL.

:func:`open_source` turns a ``--source`` location into a :class:`~corral._model.release.Source`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, final

from corral._disk.files import sha256_file
from corral._disk.layout import MANIFEST_NAME, default_home
from corral._errors import (
    InvalidPluginError,
    NotFoundError,
    SignatureInvalid,
    TransferError,
    UsageError,
)
from corral._model.manifest import Manifest, parse_manifest
from corral._model.release import Release, Source

__all__ = ["DirectorySource", "Offline", "need_source", "open_source"]

_CHUNK: Final = 1 << 16


def _archive_manifest(archive: Path) -> Manifest:
    """The manifest inside a ``.corral`` zip (root or single top folder), unpacking nothing."""
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
                    isolation=manifest.sandbox.isolation,
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
        # Deferred, and guarded: a build may leave the registry client (TUF) out.
        try:
            from corral._distribution.registry_source import RegistrySource
        except ImportError:
            raise UsageError(
                f"{location}: registry sources need corral._distribution.registry_source "
                "(not available in this build); use --source DIR", source=location,
            ) from None
        if home is None:
            home = default_home()
        src: Source = RegistrySource(location, Path(home))
        return src
    return DirectorySource(location)


def need_source(source: Source | None) -> Source:
    """``source``, or the usage error that says how to name one.

    Raises:
        UsageError: ``source`` is ``None``.
    """
    if source is None:
        raise UsageError("no source: pass --source DIR_OR_URL or set CORRAL_REGISTRY")
    return source


@final
class Offline:
    """A stand-in source for a plugin already in the store (nothing to fetch)."""

    def __init__(self, location: str) -> None:
        self.location = location

    def releases(self, plugin_id: str) -> Sequence[Release]:
        raise NotFoundError(f"{plugin_id}: offline", plugin_id=plugin_id)

    def fetch(self, release: Release, dest_dir: Path,
              progress: Callable[[int, int], None] | None = None) -> Path:
        raise TransferError(f"{release.id}: offline", plugin_id=release.id)

