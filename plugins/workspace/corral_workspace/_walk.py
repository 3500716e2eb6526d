"""Walking the workspace safely: confinement, skipped folders, languages."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["SKIP_DIRS", "FileEntry", "confine", "language_of", "walk_files"]

#: Folders never descended into: VCS metadata, caches and virtual environments
#: (and ``*.egg-info`` build metadata).
SKIP_DIRS: Final = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", ".hypothesis", ".tox", ".nox"}
)

_LANGUAGES: Final = {
    ".py": "Python", ".pyi": "Python", ".pyx": "Cython", ".js": "JavaScript",
    ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript", ".ts": "TypeScript",
    ".tsx": "TypeScript", ".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML",
    ".md": "Markdown", ".rst": "reStructuredText", ".txt": "Text", ".html": "HTML",
    ".htm": "HTML", ".css": "CSS", ".scss": "CSS", ".sh": "Shell", ".bash": "Shell",
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".hpp": "C++", ".rs": "Rust",
    ".go": "Go", ".java": "Java", ".kt": "Kotlin", ".rb": "Ruby", ".php": "PHP",
    ".sql": "SQL", ".cfg": "Config", ".ini": "Config", ".xml": "XML", ".svg": "SVG",
    ".png": "Image", ".jpg": "Image", ".jpeg": "Image", ".gif": "Image", ".zip": "Archive",
    ".gz": "Archive", ".tar": "Archive", ".lock": "Lockfile", ".csv": "CSV",
}
_NAMED: Final = {
    "makefile": "Makefile", "dockerfile": "Dockerfile", "license": "Text", "readme": "Text",
}


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file: its path relative to the workspace (POSIX) and size."""

    rel: str
    name: str
    size: int


def confine(workspace: Path, rel: object, *, what: str = "path") -> Path:
    """Resolve ``rel`` beneath ``workspace`` or raise ``ValueError``.

    Args:
        workspace: the workspace root.
        rel: a relative path (``None`` or ``""`` mean the root).
    Raises:
        ValueError: ``rel`` is not a string, escapes the workspace or is not a folder.
    """
    root = workspace.resolve()
    if rel is None or rel == "":
        return root
    if not isinstance(rel, str):
        raise ValueError(f"{what} must be a string relative to the workspace, got {rel!r}")
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"{what} {rel!r} escapes the workspace {root}; refused")
    if not target.is_dir():
        raise ValueError(f"{what} {rel!r} is not a folder of the workspace")
    return target


def language_of(name: str) -> str:
    """A file's language from its extension (or well-known name); ``"Other"`` if unknown."""
    ext = os.path.splitext(name)[1].lower()
    if ext in _LANGUAGES:
        return _LANGUAGES[ext]
    return _NAMED.get(name.lower().split(".")[0], "Other")


def extension_of(name: str) -> str:
    """The lower-cased extension with its dot, or ``"(none)"``."""
    return os.path.splitext(name)[1].lower() or "(none)"


def walk_files(root: Path, base: Path, exclude: frozenset[str] = frozenset()) -> Iterator[
    FileEntry
]:
    """Regular files under ``root`` in a stable order; symlinks are never followed.

    ``exclude`` holds folder names, or paths relative to ``base``, to skip.
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIP_DIRS and d not in exclude and not d.endswith(".egg-info")
            and (here / d).relative_to(base).as_posix() not in exclude
        )
        for name in sorted(filenames):
            path = here / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            yield FileEntry(path.relative_to(base).as_posix(), name, st.st_size)

