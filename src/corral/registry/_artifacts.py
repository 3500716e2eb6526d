"""Artifact storage: where published ``.corral`` archives live.

:class:`ArtifactStore` is the plug point (an S3-compatible store would be a
second implementation); :class:`FilesystemArtifactStore` keeps archives under
``artifacts/ab/cd/<sha256>``, content-addressed, each written to a temporary
file in the same directory tree and renamed into place so that a reader never
sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Final, final

from corral._errors import NotFoundError, UnavailableError

__all__ = ["ArtifactError", "ArtifactStore", "FilesystemArtifactStore"]

_CHUNK: Final = 1024 * 1024


class ArtifactError(UnavailableError):
    """The artifact store failed (disk full, permissions): the server's fault."""

    reason = "artifacts"


class ArtifactStore(ABC):
    """Content-addressed blobs keyed by their sha256 (hex)."""

    def put_file(self, path: Path, sha256: str) -> bool:
        """Store the file at ``path`` under ``sha256``; return True if it was new.

        Raises:
            ArtifactError: the store could not write it.
        """
        try:
            return self._put_file(path, sha256)
        except OSError as exc:
            raise ArtifactError(f"artifact store: cannot write {sha256}: {exc}") from exc

    def delete(self, sha256: str) -> None:
        """Remove a blob (used to undo a failed publish); missing is fine."""
        try:
            self._delete(sha256)
        except OSError as exc:
            raise ArtifactError(f"artifact store: cannot delete {sha256}: {exc}") from exc

    @abstractmethod
    def _put_file(self, path: Path, sha256: str) -> bool: ...

    @abstractmethod
    def _delete(self, sha256: str) -> None: ...

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether a blob is stored under ``sha256``."""

    @abstractmethod
    def open(self, sha256: str) -> IO[bytes]:
        """Open a blob for reading.

        Raises:
            NotFoundError: nothing is stored under ``sha256``.
        """

    def local_path(self, sha256: str) -> Path | None:
        """A file path the web server can send directly, if the store has one."""
        return None


def _check_digest(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


@final
class FilesystemArtifactStore(ArtifactStore):
    """Blobs as files under ``root/ab/cd/<sha256>``."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        digest = _check_digest(sha256)
        return self.root / digest[:2] / digest[2:4] / digest

    def _put_file(self, path: Path, sha256: str) -> bool:
        target = self._path(sha256)
        if target.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=target.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, Path(path).open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ValueError(f"{path}: content does not hash to {sha256}")
            os.chmod(tmp_name, 0o644)
            if target.is_file():  # a concurrent writer stored the same bytes
                os.unlink(tmp_name)
                return False
            os.rename(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return True

    def _delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def open(self, sha256: str) -> IO[bytes]:
        try:
            return self._path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"artifact {sha256} is not in the store") from None

    def local_path(self, sha256: str) -> Path | None:
        path = self._path(sha256)
        return path if path.is_file() else None

    def sweep_temp(self, older_than: float | None = None) -> int:
        """Remove temp files of interrupted writes (only those older than ``older_than`` s)."""
        cutoff = time.time() - older_than if older_than is not None else None
        n = 0
        for tmp in self.root.glob("*/*/.upload.*.tmp"):
            try:
                if cutoff is None or tmp.lstat().st_mtime <= cutoff:
                    tmp.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n

    def sweep_unreferenced(self, used: set[str]) -> int:
        """Remove blobs whose digest is not in ``used`` (left by a publish cut short).

        Only safe while no publish runs: the blob is stored before its row commits.
        """
        n = 0
        for blob in self.files():
            if blob.name not in used:
                blob.unlink(missing_ok=True)
                n += 1
        return n

    def files(self) -> list[Path]:
        """Every stored blob (for checks and tests)."""
        return sorted(p for p in self.root.rglob("*") if p.is_file() and len(p.name) == 64)
