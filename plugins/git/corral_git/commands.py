"""The exports of ``corral.git``: ``status``, ``log`` and ``authors``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._parse import parse_log, parse_numstat, parse_status
from ._run import DEFAULT_TIMEOUT, git, has_commits, require_repo

if TYPE_CHECKING:
    from corral import PluginContext

__all__ = ["authors", "log", "status"]

_US: Final = "%x1f"  # unit separator between fields: never in names or subjects
_RS: Final = "%x1e"  # record separator between commits


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


def _setup(ctx: PluginContext) -> tuple[Path, float]:
    timeout = ctx.config.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"config timeout must be a positive number of seconds, got {timeout!r}")
    require_repo(ctx.workspace, float(timeout))
    return ctx.workspace, float(timeout)


def status(input: object, ctx: PluginContext) -> dict[str, Any]:
    """Branch, upstream, ahead/behind and changed files of the work tree.

    Input: ``{"limit"?: 100}``, the most file names listed per group.  Counts are
    always complete.
    """
    limit = _count(_options(input, "status"), "limit", 100, 10_000)
    workspace, timeout = _setup(ctx)
    proc = git(workspace, "status", "--porcelain=v2", "--branch", "-z",
               "--untracked-files=normal", timeout=timeout)
    return parse_status(proc.stdout, limit)


def log(input: object, ctx: PluginContext) -> dict[str, Any]:
    """The last ``limit`` commits of ``HEAD``: hash, author, email, date, subject.

    Input: ``{"limit"?: 10}``.  A repository with no commits gives an empty list.
    """
    limit = _count(_options(input, "log"), "limit", 10, 10_000)
    workspace, timeout = _setup(ctx)
    if not has_commits(workspace, timeout):
        return {"commits": [], "count": 0}
    fmt = _US.join(("%H", "%h", "%an", "%ae", "%aI", "%s")) + _RS
    proc = git(workspace, "log", f"--max-count={limit}", f"--format={fmt}", "--no-color",
               timeout=timeout)
    commits = parse_log(proc.stdout)
    return {"commits": commits, "count": len(commits)}


def authors(input: object, ctx: PluginContext) -> dict[str, Any]:
    """Commits and lines added/removed per author over ``HEAD``'s history.

    Input: ``{"limit"?: N}`` caps the commits read (newest first; default
    10000).  Authors are grouped by e-mail and sorted by commits, most first.
    """
    limit = _count(_options(input, "authors"), "limit", 10_000, 1_000_000)
    workspace, timeout = _setup(ctx)
    if not has_commits(workspace, timeout):
        return {"authors": [], "commits": 0}
    fmt = _RS + _US.join(("%an", "%ae"))
    proc = git(workspace, "log", f"--max-count={limit}", f"--format={fmt}", "--numstat",
               "--no-renames", "--no-color", timeout=timeout)
    rows = parse_numstat(proc.stdout)
    return {"authors": rows, "commits": sum(r["commits"] for r in rows)}
