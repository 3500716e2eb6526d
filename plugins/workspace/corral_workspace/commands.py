"""The exports of ``corral.workspace``: ``summary`` and ``find``."""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._walk import confine, extension_of, language_of, walk_files

if TYPE_CHECKING:
    from corral import PluginContext

__all__ = ["find", "summary"]

#: Hard cap on files looked at in one call, so a huge tree cannot hang the host.
MAX_FILES: Final = 200_000
_GLOB_CHARS: Final = frozenset("*?[")


def _options(input: object, export: str) -> Mapping[str, Any]:
    if input is None:
        return {}
    if not isinstance(input, dict):
        raise ValueError(f"{export} takes an object as input, got {type(input).__name__}")
    return input


def _count(options: Mapping[str, Any], key: str, default: int, high: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{key} must be an integer from 1 to {high}, got {value!r}")
    return value


def _exclude(options: Mapping[str, Any]) -> frozenset[str]:
    value = options.get("exclude", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"exclude must be a list of folder names or paths, got {value!r}")
    return frozenset(v.strip("/") for v in value)


def _rel(root: Path, base: Path) -> str:
    rel = root.relative_to(base).as_posix()
    return "" if rel == "." else rel


def summary(input: object, ctx: PluginContext) -> dict[str, Any]:
    """Count the files under a folder of the workspace by extension and language.

    Input: ``{"path"?: "sub/dir", "top"?: 10, "exclude"?: ["build"]}``.
    Returns file and byte totals, ``by_extension`` and ``by_language`` (most files
    first) and the ``top`` ``largest`` files.
    """
    options = _options(input, "summary")
    top = _count(options, "top", 10, 1000)
    base = ctx.workspace.resolve()
    root = confine(ctx.workspace, options.get("path"))
    by_ext: dict[str, list[int]] = {}
    by_lang: dict[str, list[int]] = {}
    largest: list[tuple[int, str]] = []
    files = total = 0
    truncated = False
    for entry in walk_files(root, base, _exclude(options)):
        if files >= MAX_FILES:
            truncated = True
            break
        files += 1
        total += entry.size
        for table, key in ((by_ext, extension_of(entry.name)), (by_lang, language_of(entry.name))):
            slot = table.setdefault(key, [0, 0])
            slot[0] += 1
            slot[1] += entry.size
        item = (entry.size, entry.rel)
        if len(largest) < top:
            heapq.heappush(largest, item)
        else:
            heapq.heappushpop(largest, item)
    return {
        "path": _rel(root, base),
        "files": files,
        "bytes": total,
        "by_extension": _ranked(by_ext, "extension"),
        "by_language": _ranked(by_lang, "language"),
        "largest": [
            {"path": p, "bytes": s} for s, p in sorted(largest, key=lambda t: (-t[0], t[1]))
        ],
        "truncated": truncated,
    }


def _ranked(table: dict[str, list[int]], key: str) -> list[dict[str, Any]]:
    rows = sorted(table.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return [{key: name, "files": n, "bytes": size} for name, (n, size) in rows]


def find(input: object, ctx: PluginContext) -> dict[str, Any]:
    """Find files by name: a glob (``*.py``, ``src/**/test_*.py``) or a substring.

    Input: ``{"pattern": "...", "limit"?: 100, "path"?: "sub/dir"}``.  A pattern
    with ``* ? [`` is a glob, matched against the name, or against the path
    relative to the workspace when it holds a ``/``; anything else is a
    case-insensitive substring of the name.
    """
    options = _options(input, "find")
    pattern = options.get("pattern")
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"find needs a pattern (a glob or a substring), got {pattern!r}")
    limit = _count(options, "limit", 100, 10_000)
    base = ctx.workspace.resolve()
    root = confine(ctx.workspace, options.get("path"))
    is_glob = bool(_GLOB_CHARS & set(pattern))
    needle = pattern.lower()
    matches: list[dict[str, Any]] = []
    truncated = False
    for seen, entry in enumerate(walk_files(root, base, _exclude(options))):
        if seen >= MAX_FILES:
            truncated = True
            break
        if is_glob:
            subject = entry.rel if "/" in pattern else entry.name
            hit = fnmatch.fnmatchcase(subject, pattern)
        else:
            hit = needle in entry.name.lower()
        if not hit:
            continue
        if len(matches) >= limit:
            truncated = True
            break
        matches.append({"path": entry.rel, "bytes": entry.size})
    return {
        "pattern": pattern,
        "mode": "glob" if is_glob else "substring",
        "path": _rel(root, base),
        "matches": matches,
        "count": len(matches),
        "truncated": truncated,
    }
