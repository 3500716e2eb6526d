"""Safe handling of ``.corral`` archives: zips of one plugin directory.

An archive holds ``corral.toml`` either at its root or inside exactly one
top-level folder.  Archives come from strangers, so :func:`extract_archive`
checks every entry before writing anything and keeps counting while it writes:

- names: no absolute paths, drive letters, backslashes, ``.``/``..`` or empty
  components, NUL or control characters; no duplicates, and no two names that
  collide on a case-insensitive file system;
- types: regular files and directories only (no links, devices, fifos), no
  encryption, only the compression methods of the standard library;
- size: at most ``max_entries`` entries, ``max_total_bytes`` uncompressed bytes
  (counted while extracting, not taken from the headers) and a per-entry
  compression ratio of ``max_ratio`` (zip bombs).

Everything is extracted into a fresh hidden sibling of the destination and
renamed into place, so a failure leaves nothing behind.  Files get mode 0o644
and directories 0o755 whatever the archive says (never a setuid bit).

:func:`pack_directory` is the inverse: a reproducible zip (sorted entries, fixed
timestamps and permissions) so that the same sources always give the same bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from corral._disk.layout import MANIFEST_NAME
from corral._errors import InvalidPluginError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "ARCHIVE_SUFFIX",
    "MAX_ENTRIES",
    "MAX_RATIO",
    "MAX_TOTAL_BYTES",
    "RATIO_MIN_BYTES",
    "SIGNATURE_FILE",
    "extract_archive",
    "iter_archive_names",
    "pack_directory",
    "plugin_files",
]

ARCHIVE_SUFFIX: Final = ".corral"
MAX_ENTRIES: Final = 10_000
MAX_TOTAL_BYTES: Final = 200 * 1024 * 1024
MAX_RATIO: Final = 100
#: Entries smaller than this are exempt from the ratio cap: their blow-up is
#: bounded and small repetitive files (padding, blank tables) compress very well.
RATIO_MIN_BYTES: Final = 64 * 1024

#: The signature at a signed plugin's root (see ``_signing``); never in its own file list.
SIGNATURE_FILE: Final = "corral.sig"
#: Fixed metadata written by :func:`pack_directory`.
PACK_DATE: Final = (1980, 1, 1, 0, 0, 0)
_FILE_ATTR: Final = (stat.S_IFREG | 0o644) << 16
_DIR_ATTR: Final = ((stat.S_IFDIR | 0o755) << 16) | 0x10  # 0x10: MS-DOS directory bit
#: Never packed: build leftovers and version control.
_PACK_SKIP_DIRS: Final = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache"})
_PACK_SKIP_SUFFIXES: Final = (".pyc", ".pyo")

_CHUNK: Final = 64 * 1024
_NAME_MAX: Final = 255  # bytes per path component, as on Linux
_PATH_MAX: Final = 1024
_DRIVE: Final = re.compile(r"^[A-Za-z]:")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_METHODS: Final = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
#: macOS Finder adds resource forks here; they are checked, never extracted.
_MACOSX: Final = "__MACOSX"


@dataclass(frozen=True, slots=True)
class _Member:
    """One checked entry: where it goes, relative to the plugin root."""

    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def _bad(archive: Path, message: str, entry: str | None = None) -> InvalidPluginError:
    """An :class:`InvalidPluginError` naming the archive and, if any, the entry."""
    where = f"{archive}: {entry!r}: " if entry is not None else f"{archive}: "
    return InvalidPluginError(where + message, archive=str(archive), entry=entry)


def _central_directory_size(fp: IO[bytes]) -> int | None:
    """The central directory size the end record declares, or None if unreadable.

    zipfile reads the whole central directory into memory before we can count
    entries, so its declared size is checked first to bound that memory.
    """
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    tail_len = min(size, 22 + 0xFFFF)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    (cd_size,) = struct.unpack_from("<I", tail, at + 12)
    loc = at - 20
    if loc >= 0 and tail[loc : loc + 4] == b"PK\x06\x07":
        (rec_offset,) = struct.unpack_from("<Q", tail, loc + 8)
        fp.seek(rec_offset)
        record = fp.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            (cd_size,) = struct.unpack_from("<Q", record, 40)
    return int(cd_size)


def _check_name(archive: Path, raw: str) -> tuple[tuple[str, ...], bool]:
    """Split an entry name into safe path components; raise if it is hostile."""
    if raw == "":
        raise _bad(archive, "empty entry name", raw)
    if "\x00" in raw:
        raise _bad(archive, "NUL byte in entry name", raw)
    if _CONTROL.search(raw):
        raise _bad(archive, "control character in entry name", raw)
    if "\\" in raw:
        raise _bad(archive, "backslash in entry name (use '/')", raw)
    if raw.startswith("/"):
        raise _bad(archive, "absolute path", raw)
    if _DRIVE.match(raw):
        raise _bad(archive, "drive letter in entry name", raw)
    if len(raw.encode()) > _PATH_MAX:
        raise _bad(archive, f"entry name longer than {_PATH_MAX} bytes", raw)
    is_dir = raw.endswith("/")
    parts = tuple((raw[:-1] if is_dir else raw).split("/"))
    for part in parts:
        if part == "..":
            raise _bad(archive, "'..' component escapes the plugin directory", raw)
        if part in ("", "."):
            raise _bad(archive, "empty or '.' path component", raw)
        if len(part.encode()) > _NAME_MAX:
            raise _bad(archive, f"path component longer than {_NAME_MAX} bytes", raw)
    return parts, is_dir


def _check_type(archive: Path, info: zipfile.ZipInfo, is_dir: bool) -> None:
    """Refuse links, special files, encryption and unknown compression."""
    raw = info.orig_filename
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise _bad(archive, "symbolic links are not allowed", raw)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _bad(archive, f"not a regular file or directory (mode {mode:#o})", raw)
    if kind == stat.S_IFDIR and not is_dir:
        raise _bad(archive, "directory mode on an entry that is not a directory", raw)
    if kind == stat.S_IFREG and is_dir:
        raise _bad(archive, "file mode on a directory entry", raw)
    if info.flag_bits & 0x1:
        raise _bad(archive, "encrypted entries are not supported", raw)
    if info.compress_type not in _METHODS:
        raise _bad(archive, f"unsupported compression method {info.compress_type}", raw)


def _fold(parts: tuple[str, ...]) -> str:
    """The key two paths share when a case-insensitive file system would merge them."""
    return unicodedata.normalize("NFC", "/".join(parts)).casefold()


def _plan(
    archive: Path,
    infos: list[zipfile.ZipInfo],
    *,
    max_entries: int,
    max_total_bytes: int,
    max_ratio: int,
) -> list[_Member]:
    """Check every entry before anything is written; return what to extract."""
    if len(infos) > max_entries:
        raise _bad(
            archive,
            f"more than {max_entries} entries (first one over: "
            f"{infos[max_entries].orig_filename!r})",
        )
    members: list[_Member] = []
    seen: dict[str, str] = {}  # folded path -> raw name, every explicit entry
    files: dict[str, str] = {}  # folded path -> raw name, files only
    dirs: dict[str, str] = {}  # folded path -> spelling, explicit and implied
    declared = 0
    for info in infos:
        raw = info.orig_filename
        parts, is_dir = _check_name(archive, raw)
        _check_type(archive, info, is_dir)
        key = _fold(parts)
        if key in seen:
            other = seen[key]
            if other == raw:
                raise _bad(archive, "duplicate entry", raw)
            if other.rstrip("/") == raw.rstrip("/"):
                raise _bad(archive, f"is both a file and a folder ({other!r})", raw)
            raise _bad(archive, f"collides with {other!r} on case-insensitive file systems", raw)
        seen[key] = raw
        declared += info.file_size
        if declared > max_total_bytes:
            raise _bad(archive, f"archive expands to more than {max_total_bytes} bytes", raw)
        if info.file_size > max(RATIO_MIN_BYTES, max_ratio * max(info.compress_size, 1)):
            raise _bad(
                archive,
                f"compression ratio over {max_ratio}:1 "
                f"({info.file_size} bytes from {info.compress_size})",
                raw,
            )
        spelled = parts if is_dir else parts[:-1]
        for depth in range(1, len(spelled) + 1):
            sub = spelled[:depth]
            prev = dirs.setdefault(_fold(sub), "/".join(sub))
            if prev != "/".join(sub):
                raise _bad(
                    archive, f"folder collides with {prev!r} on case-insensitive file systems", raw
                )
        if not is_dir:
            files[key] = raw
        members.append(_Member(info, parts, is_dir))
    for key, raw in files.items():
        if key in dirs:
            raise _bad(archive, f"is both a file and a folder ({dirs[key]!r})", raw)
    return members


def _strip_root(archive: Path, members: list[_Member]) -> list[_Member]:
    """Find the plugin root (archive root or one top folder) and re-base entries on it."""
    members = [m for m in members if m.parts[0] != _MACOSX]
    if any(m.parts == (MANIFEST_NAME,) and not m.is_dir for m in members):
        return members
    tops = {m.parts[0] for m in members}
    if len(tops) == 1:
        (top,) = tops
        nested = all(m.is_dir or len(m.parts) > 1 for m in members)
        if nested and any(m.parts == (top, MANIFEST_NAME) and not m.is_dir for m in members):
            return [_Member(m.info, m.parts[1:], m.is_dir) for m in members if m.parts[1:]]
    raise _bad(
        archive, f"no {MANIFEST_NAME} at the archive root or inside a single top-level folder"
    )


def _open_zip(archive: Path, max_entries: int) -> zipfile.ZipFile:
    """Open ``archive`` as a zip, translating every way it can be broken."""
    if not archive.is_file():
        raise NotFoundError(f"{archive}: no such archive", archive=str(archive))
    try:
        with archive.open("rb") as fp:
            cd_size = _central_directory_size(fp)
        # A central directory entry is at least 46 bytes; allow long names and extras.
        if cd_size is not None and cd_size > max(max_entries, 1) * 2048:
            raise _bad(
                archive,
                f"central directory of {cd_size} bytes is too large for {max_entries} entries",
            )
        return zipfile.ZipFile(archive)
    except InvalidPluginError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        ValueError,
        NotImplementedError,
        struct.error,
    ) as e:
        raise _bad(archive, f"not a valid zip archive ({e})") from e


def _copy(
    archive: Path,
    zf: zipfile.ZipFile,
    member: _Member,
    target: Path,
    *,
    budget: int,
    max_total_bytes: int,
    max_ratio: int,
) -> int:
    """Write one file entry to ``target``, counting real bytes; return how many."""
    info = member.info
    raw = info.orig_filename
    ratio_cap = max(RATIO_MIN_BYTES, max_ratio * max(info.compress_size, 1))
    written = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "wb") as out:
        try:
            src = zf.open(info)
        except Exception as e:  # the archive's fault: bad header, overlap, ...
            raise _bad(archive, f"corrupt entry ({e})", raw) from e
        with src:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except Exception as e:  # CRC mismatch, truncated data, bad stream
                    raise _bad(archive, f"corrupt entry ({e})", raw) from e
                if not chunk:
                    break
                written += len(chunk)
                if written > budget:
                    raise _bad(
                        archive, f"archive expands to more than {max_total_bytes} bytes", raw
                    )
                if written > ratio_cap:
                    raise _bad(archive, f"compression ratio over {max_ratio}:1", raw)
                if written > info.file_size:
                    raise _bad(archive, "more data than its header declares", raw)
                out.write(chunk)
    return written


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    max_entries: int = MAX_ENTRIES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: int = MAX_RATIO,
) -> Path:
    """Extract a ``.corral`` archive safely so that ``dest`` becomes the plugin directory.

    A single top-level folder holding ``corral.toml`` is stripped, so ``dest``
    itself holds ``corral.toml``.

    Args:
        archive: the zip file.
        dest: the directory to create; it must not exist, its parent must.
        max_entries: most entries allowed in the archive.
        max_total_bytes: most uncompressed bytes, counted while extracting.
        max_ratio: largest uncompressed/compressed ratio of one entry.

    Returns:
        ``dest``.

    Raises:
        NotFoundError: ``archive`` does not exist.
        InvalidPluginError: the archive is hostile or broken; the message names
            the archive and the entry at fault.  Nothing is left on disk.
        FileExistsError: ``dest`` already exists.
    """
    archive = Path(archive)
    dest = Path(dest)
    if os.path.lexists(dest):
        raise FileExistsError(f"{dest}: already exists")
    with _open_zip(archive, max_entries) as zf:
        members = _plan(
            archive,
            zf.infolist(),
            max_entries=max_entries,
            max_total_bytes=max_total_bytes,
            max_ratio=max_ratio,
        )
        members = _strip_root(archive, members)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            total = 0
            made: set[tuple[str, ...]] = {()}
            for member in members:
                folder = member.parts if member.is_dir else member.parts[:-1]
                for depth in range(1, len(folder) + 1):
                    if folder[:depth] not in made:
                        path = tmp.joinpath(*folder[:depth])
                        path.mkdir()
                        path.chmod(0o755)
                        made.add(folder[:depth])
                if not member.is_dir:
                    total += _copy(
                        archive,
                        zf,
                        member,
                        tmp.joinpath(*member.parts),
                        budget=max_total_bytes - total,
                        max_total_bytes=max_total_bytes,
                        max_ratio=max_ratio,
                    )
            tmp.chmod(0o755)
            if os.path.lexists(dest):
                raise FileExistsError(f"{dest}: already exists")
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def iter_archive_names(archive: Path) -> Iterator[str]:
    """Yield the raw entry names of ``archive`` in stored order (for listings).

    Raises:
        NotFoundError: ``archive`` does not exist.
        InvalidPluginError: it is not a readable zip.
    """
    archive = Path(archive)
    with _open_zip(archive, MAX_ENTRIES) as zf:
        for info in zf.infolist():
            yield info.orig_filename


def _pack_members(src: Path, out: Path | None) -> list[tuple[str, Path | None]]:
    """Sorted ``(name, file or None for a folder)`` pairs to pack from ``src``.

    ``out`` itself is skipped when it lies inside ``src``; every name must pass
    the same checks as on extraction, so a packed plugin always extracts.
    """
    found: list[tuple[str, Path | None]] = []
    skip = out.resolve() if out is not None else None
    for folder, dirnames, filenames in os.walk(src):
        here = Path(folder)
        dirnames[:] = sorted(d for d in dirnames if d not in _PACK_SKIP_DIRS)
        for name in [*dirnames, *filenames]:
            path = here / name
            rel = path.relative_to(src).as_posix()
            if path.is_symlink():
                raise InvalidPluginError(
                    f"{path}: links cannot be packed into an archive", file=str(path)
                )
            if name in dirnames:
                found.append((rel + "/", None))
            elif not name.endswith(_PACK_SKIP_SUFFIXES) and path.resolve() != skip:
                if not path.is_file():
                    raise InvalidPluginError(
                        f"{path}: not a regular file, cannot be packed", file=str(path)
                    )
                found.append((rel, path))
    for name, _ in found:
        _check_name(src, name)
    return sorted(found)


def plugin_files(src: Path) -> list[tuple[str, Path]]:
    """Sorted ``(posix name, path)`` of every file :func:`pack_directory` packs from ``src``.

    The signature file (``corral.sig`` at the root) is left out: it is what
    signs this list.  Folders are left out too: only files carry content.

    Raises:
        InvalidPluginError: ``src`` holds a link or a special file.
    """
    return [
        (name, path)
        for name, path in _pack_members(Path(src), None)
        if path is not None and name != SIGNATURE_FILE
    ]


def pack_directory(src: Path, out: Path, extra: Mapping[str, bytes] | None = None) -> Path:
    """Pack the plugin directory ``src`` into a reproducible ``.corral`` zip at ``out``.

    Entries are sorted, dated 1980-01-01 and given mode 0o644 (0o755 for
    folders); ``__pycache__``, ``.git`` and ``*.pyc`` are left out.  The same
    sources therefore always give the same bytes.  ``out`` is written through a
    temporary sibling and replaced atomically.  ``extra`` maps posix names to
    contents packed as well (``{"corral.sig": envelope}``), replacing a file of
    the same name in ``src``, so a signature can be added without touching ``src``.

    Raises:
        NotFoundError: ``src`` is not a directory.
        InvalidPluginError: ``src`` has no ``corral.toml`` or holds a link, or an
            ``extra`` name is unsafe or names a folder.
    """
    src = Path(src)
    out = Path(out)
    if not src.is_dir():
        raise NotFoundError(f"{src}: no such plugin directory", file=str(src))
    if not (src / MANIFEST_NAME).is_file():
        raise InvalidPluginError(f"{src}: no {MANIFEST_NAME}", file=str(src))
    entries: dict[str, Path | bytes | None] = dict(_pack_members(src, out))
    for name, data in (extra or {}).items():
        parts, is_dir = _check_name(src, name)
        if is_dir or name + "/" in entries:
            raise InvalidPluginError(
                f"{src}: extra entry {name!r} names a folder", file=str(src), entry=name
            )
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth]) + "/"
            if "/".join(parts[:depth]) in entries:
                raise InvalidPluginError(
                    f"{src}: extra entry {name!r} lies under a file", file=str(src), entry=name
                )
            entries.setdefault(folder, None)
        entries[name] = bytes(data)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fp, zipfile.ZipFile(fp, "w") as zf:
            for name, item in sorted(entries.items()):
                info = zipfile.ZipInfo(name, date_time=PACK_DATE)
                info.create_system = 3  # unix, whatever machine packs it
                if item is None:
                    info.external_attr = _DIR_ATTR
                    zf.writestr(info, b"")
                    continue
                info.external_attr = _FILE_ATTR
                info.compress_type = zipfile.ZIP_DEFLATED
                if isinstance(item, bytes):
                    zf.writestr(info, item)
                    continue
                info.file_size = item.stat().st_size
                with item.open("rb") as f_in, zf.open(info, "w") as f_out:
                    shutil.copyfileobj(f_in, f_out, _CHUNK)
        tmp.chmod(0o644)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
