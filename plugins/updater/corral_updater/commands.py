"""The export of ``corral.updater``: ``check``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .versions import compare

if TYPE_CHECKING:
    from corral import PluginContext

__all__ = ["check", "read_source"]

#: The largest source file read, in bytes.
MAX_SOURCE_BYTES: Final = 5_000_000
_ORDER: Final = {"major": 0, "minor": 1, "patch": 2, "pre-release": 3, "post-release": 4}


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of version strings, got {value!r}")
    return value


def read_source(ctx: PluginContext, name: str) -> Mapping[str, Any]:
    """Load a JSON source of versions from under ``{workspace}`` or ``{data}``.

    A relative ``name`` is looked up in the workspace first, then in the data
    folder.  Raises ``ValueError`` for a path outside both, a missing file or bad JSON.
    """
    roots = [ctx.workspace.resolve(), ctx.data_dir.resolve()]
    candidates = [Path(name)] if Path(name).is_absolute() else [r / name for r in roots]
    for candidate in candidates:
        path = candidate.resolve()
        if not any(path.is_relative_to(r) for r in roots):
            raise ValueError(f"source {name!r} is outside the workspace and the data folder; "
                             "refused")
        if path.is_file():
            if path.stat().st_size > MAX_SOURCE_BYTES:
                raise ValueError(f"source {name!r} is larger than {MAX_SOURCE_BYTES} bytes")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"source {name!r} is not valid JSON: {exc}") from None
            doc = _mapping(data, f"source {name!r}")
            return _mapping(doc.get("available", doc), f"source {name!r} available")
    raise ValueError(f"source {name!r} not found in the workspace or the data folder")


def _entry(value: object, plugin_id: str) -> tuple[list[str], list[str]]:
    """``["1.0", ...]`` or ``{"versions": [...], "yanked"?: [...]}``."""
    if isinstance(value, dict):
        versions = _strings(value.get("versions"), f"available.{plugin_id}.versions")
        yanked = _strings(value.get("yanked", []), f"available.{plugin_id}.yanked")
        return versions, yanked
    return _strings(value, f"available.{plugin_id}"), []


def check(input: object, ctx: PluginContext) -> dict[str, Any]:
    """Which installed plugins have newer versions, and what kind of update each is.

    Input: ``{"installed": {"id": "1.0.0"}, "available": {"id": ["1.0.0", "1.1.0"]}}``
    or ``"source": "versions.json"`` instead of ``available``; an entry of
    ``available`` may also be ``{"versions": [...], "yanked": [...]}``.
    Returns ``plugins`` (one row per installed id, sorted) and ``updates`` (the
    rows with a newer version, biggest update first).
    """
    options = _mapping(input, "check input")
    installed = _mapping(options.get("installed"), "installed")
    if "available" in options and "source" in options:
        raise ValueError("give either available or source, not both")
    if "source" in options:
        if not isinstance(options["source"], str):
            raise ValueError("source must be a file name")
        available = read_source(ctx, options["source"])
    else:
        available = _mapping(options.get("available"), "available")
    rows: list[dict[str, Any]] = []
    for plugin_id in sorted(installed):
        version = installed[plugin_id]
        if not isinstance(version, str):
            raise ValueError(f"installed.{plugin_id} must be a version string, got {version!r}")
        if plugin_id not in available:
            rows.append({"id": plugin_id, "current": version, "latest": None,
                         "update": "unknown", "newer": []})
            continue
        rows.append(compare(plugin_id, version, *_entry(available[plugin_id], plugin_id)))
    updates = sorted((r for r in rows if r["update"] in _ORDER),
                     key=lambda r: (_ORDER[r["update"]], r["id"]))
    return {"plugins": rows, "updates": [r["id"] for r in updates], "count": len(updates)}
