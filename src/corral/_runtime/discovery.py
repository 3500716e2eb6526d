"""Discovery: plugins present on this machine that the host has not registered.

Two places are looked at: directories under ``<home>/plugins`` and
pip-installed plugins (entry point group ``corral.plugins``).  Both results are
cached in the host database and invalidated by file-system stamps, so a host
with hundreds of plugins lists them without parsing a single manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._errors import CorralError
from corral._model.info import PluginInfo
from corral._model.lifecycle import State

if TYPE_CHECKING:
    from corral._runtime.database import HostDatabase

__all__ = ["discover", "entry_point_dirs"]


def discover(store: HostDatabase, plugins_dir: Path, registered: set[str]) -> list[PluginInfo]:
    """Plugin directories under ``plugins/`` and entry-point plugins not yet registered.

    Parsed manifests are cached in the database, keyed by each ``corral.toml``'s
    mtime and size, so only new or changed directories are read.
    """
    from corral._runtime.folders import scan_plugin_dirs

    raw = store.get_meta("discovered")
    cached: dict[str, Any] = json.loads(raw) if raw else {}
    stats: dict[str, tuple[int, int]] = {
        path: (entry["stat"][0], entry["stat"][1]) for path, entry in cached.items()
    }
    scan = scan_plugin_dirs(plugins_dir, stats)
    candidates = [(p, "directory") for p in (*scan.new, *scan.changed, *scan.unchanged)]
    candidates.extend((p, "entry-point") for p in entry_point_dirs(store))
    fresh: dict[str, Any] = {}
    out = []
    for plugin_dir, source in candidates:
        key = str(plugin_dir)
        if key in registered:
            continue
        entry = cached.get(key)
        if entry is None or plugin_dir in scan.changed or source == "entry-point":
            from corral._model.manifest import load_manifest

            try:
                entry = {"manifest": load_manifest(plugin_dir).to_dict()}
            except CorralError:
                continue
        if source == "directory":
            entry["stat"] = list(scan.cache[key])
            fresh[key] = entry
        out.append(
            PluginInfo.from_manifest_dict(
                entry["manifest"], state=State.DISCOVERED.value, source=source, path=key
            )
        )
    if fresh != cached:
        store.set_meta("discovered", json.dumps(fresh))
    return out

def entry_point_dirs(store: HostDatabase) -> list[Path]:
    """Directories of pip-installed plugins, cached until a ``sys.path`` folder changes."""
    from corral._runtime.entrypoints import sys_path_fingerprint

    stamp = [list(item) for item in sys_path_fingerprint()]
    cached = store.get_meta("entry_points")
    if cached:
        data = json.loads(cached)
        if data.get("stamp") == stamp:
            return [Path(p) for p in data["dirs"]]
    from corral._runtime.entrypoints import discover_entry_points

    dirs = [str(ep.plugin_dir) for ep in discover_entry_points() if ep.ok and ep.plugin_dir]
    store.set_meta("entry_points", json.dumps({"stamp": stamp, "dirs": dirs}))
    return [Path(p) for p in dirs]
