"""Copying a plugin directory into the home, refusing links and special files; its content hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Final

from corral._errors import InvalidPluginError

__all__ = [
    "MAX_FILES", "MAX_TOTAL_BYTES", "check_entry", "check_plugin_tree", "copy_plugin_dir",
    "tree_digest",
]

MAX_FILES: Final = 10_000
MAX_TOTAL_BYTES: Final = 200 * 1024 * 1024
_SKIP: Final = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache",
                          ".ruff_cache"})


def check_entry(path: Path) -> None:
    """Refuse ``path`` unless it is a regular file or a folder (never followed if a link)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise InvalidPluginError(
            f"{path}: symbolic links are not allowed in a plugin", file=str(path)
        )
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InvalidPluginError(f"{path}: not a regular file or directory", file=str(path))


def check_plugin_tree(src: Path) -> None:
    """Refuse a plugin directory holding a link or a special file anywhere (as a copy would).

    For readers of a plugin's files that did not copy it first: a link could
    make them read, and publish, a file outside the plugin.
    """
    for root, dirs, names in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        for name in [*dirs, *names]:
            check_entry(Path(root) / name)


def copy_plugin_dir(src: Path, dest: Path) -> None:
    """Copy ``src`` to the new directory ``dest`` (regular files and folders only).

    A symbolic link, device, socket or FIFO anywhere in the tree is refused by
    name: a link could hand the plugin a file outside its own directory.  On
    any failure ``dest`` is removed again.
    """
    files = 0
    total = 0
    try:
        os.mkdir(dest, 0o755)
        for root, dirs, names in os.walk(src):
            rel = Path(root).relative_to(src)
            dirs[:] = sorted(d for d in dirs if d not in _SKIP)
            for name in [*dirs, *names]:
                check_entry(Path(root) / name)
            for name in dirs:
                os.mkdir(dest / rel / name, 0o755)
            for name in sorted(names):
                if name.endswith((".pyc", ".pyo")):
                    continue
                files += 1
                total += (Path(root) / name).stat().st_size
                if files > MAX_FILES:
                    raise InvalidPluginError(f"{src}: more than {MAX_FILES} files")
                if total > MAX_TOTAL_BYTES:
                    raise InvalidPluginError(
                        f"{src}: larger than {MAX_TOTAL_BYTES // (1024 * 1024)} MiB"
                    )
                target = dest / rel / name
                shutil.copyfile(Path(root) / name, target, follow_symlinks=False)
                os.chmod(target, 0o644)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def tree_digest(src: Path) -> str:
    """A SHA-256 over the files a copy of ``src`` would hold: names and contents, in order.

    Tells "the same files" from "different files" when a plugin is registered
    again; caches (``__pycache__``, ``.pyc``, version-control folders) do not count.
    """
    h = hashlib.sha256()
    for root, dirs, names in os.walk(src):
        rel = Path(root).relative_to(src).as_posix()
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root) / name
            if not path.is_file() or path.is_symlink():
                continue
            h.update(f"{rel}/{name}\0".encode("utf-8", "surrogateescape"))
            with open(path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()
