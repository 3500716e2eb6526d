"""Durable file primitives shared by every layer that writes state: one copy of each.

:func:`write_atomic` replaces a file in one step (temporary sibling, fsync,
rename, fsync of the folder) so that a crash or a full disk leaves either the
old bytes or the new ones; :func:`exclusive` serialises writers across
processes; :func:`sha256_file` hashes a file in bounded memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = ["exclusive", "fsync_dir", "sha256_file", "write_atomic"]

_CHUNK: Final = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in the folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, *, mode: int | None = None, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` in one step: temporary sibling, fsync, rename.

    ``mode`` defaults to that of the file replaced (0o644 for a new one) and is
    set exactly, whatever the umask.  On any failure (a full disk included)
    ``path`` is untouched and the temporary file is gone.  ``durable=False``
    leaves the fsyncs to a later ``syncfs`` of the whole file system.
    """
    path = Path(path)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def sha256_file(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of the file at ``path``, read in 1 MiB chunks."""
    import hashlib  # OpenSSL's load costs a one-shot CLI call ~6 ms where nothing is hashed

    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], *, mode: int = 0o600) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on the lock file ``path`` (created with ``mode`` if needed).

    The kernel drops the lock when the process dies, so a killed writer never
    leaves a stale lock behind.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
