"""A plugin's purge and a home's orphans: everything the host keeps for plugins, found,
counted and removed, with a report of what went (``remove --purge``, ``gc``).

Files are the runtime's (``_runtime/cleanup.py``), rows of the host database too;
shared state and durable subscriptions are the services' (``purge.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from corral._model.manifest import check_id
from corral._runtime.cleanup import (
    PLUGIN_DIRS,
    delete_rows,
    orphan_dirs,
    orphan_rows,
    remove_dir,
    tree_count,
)
from corral._services.cache import stats as cache_stats
from corral._services.purge import purge_services, service_orphans

if TYPE_CHECKING:
    from corral._runtime.database import HostDatabase
    from corral._services.hub import Services

__all__ = ["clear_cache", "collect_orphans", "find_orphans", "purge_plugin", "scratch_counts"]


def _totals(removed: dict[str, dict[str, int]]) -> dict[str, int]:
    files = sum(v.get("files", 0) for v in removed.values())
    size = sum(v.get("bytes", 0) for v in removed.values())
    return {"files": files, "bytes": size}


def clear_cache(services: Services, plugin_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Everything cached for ``plugin_id``, removed; what its folder held (``files``,
    ``bytes``) and what its ``ctx.cache`` entries held (``rows``, ``bytes``).

    The one place a purge or ``gc`` clears a plugin's cache: its ``{cache}`` folder
    (bounded by ``cache-mb``, emptied on disable and unload) and the entries the host
    keeps for its ``ctx.cache``.
    """
    folder = remove_dir(services.home, "cache", plugin_id)
    entries = cache_stats.clear_cache(services.home, plugin_id)
    return folder, {"rows": entries["entries"], "bytes": entries["bytes"]}


def scratch_counts(services: Services, plugin_id: str) -> dict[str, dict[str, int]]:
    """What a plugin's ``{cache}`` and ``{tmp}`` hold now (stopping it wipes them; a purge
    that stops it counts them first, so its report says what the whole removal took).
    """
    check_id(plugin_id)
    out: dict[str, dict[str, int]] = {}
    for sub in ("cache", "tmp"):
        files, size = tree_count(services.home / sub / plugin_id)
        out[sub] = {"files": files, "bytes": size}
    return out


def purge_plugin(services: Services, db: HostDatabase, plugin_id: str,
                 before: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Remove ``plugin_id``'s data, cache, tmp, shared state, durable subscriptions,
    metrics and quota usage; the report of what was removed.

    ``{"plugin": id, "removed": {"data": {"files", "bytes"}, "cache": ..., "tmp": ...,
    "state": {"keys", "bytes", "history"}, "subscriptions": {"consumers"},
    "metrics": {"rows"}, "quota_usage": {"rows"}}, "files": n, "bytes": n}``;
    ``before`` is :func:`scratch_counts` taken before the plugin was stopped.
    """
    check_id(plugin_id)  # an id names nothing outside its folders
    home = services.home
    removed: dict[str, dict[str, int]] = {}
    for sub in PLUGIN_DIRS:
        if sub == "cache":
            removed[sub], removed["cache_entries"] = clear_cache(services, plugin_id)
        else:
            removed[sub] = remove_dir(home, sub, plugin_id)
        earlier = (before or {}).get(sub)
        if earlier is not None and earlier["files"] + earlier["bytes"] > \
                removed[sub]["files"] + removed[sub]["bytes"]:
            removed[sub] = earlier
    removed.update(purge_services(services, plugin_id))
    for kind, n in delete_rows(db, plugin_id).items():
        removed[kind] = {"rows": n}
    return {"plugin": plugin_id, "removed": removed, **_totals(removed)}


def find_orphans(services: Services, db: HostDatabase, registered: Iterable[str]
                 ) -> dict[str, Any]:
    """What plugins that are not registered left in the home: folders (``dirs``), host
    database rows (``rows``: id -> metrics and quota_usage) and shared state (``state``:
    id -> keys and bytes), with the files and bytes of the folders in total.
    """
    known = set(registered)
    dirs = orphan_dirs(services.home, known)
    return {
        "dirs": dirs,
        "rows": orphan_rows(db, known),
        "state": service_orphans(services.home, known),
        "files": sum(d["files"] for d in dirs),
        "bytes": sum(d["bytes"] for d in dirs),
    }


def collect_orphans(services: Services, db: HostDatabase, registered: Iterable[str]
                    ) -> dict[str, Any]:
    """Remove what :func:`find_orphans` finds; returns what it found (and removed)."""
    known = set(registered)
    found = find_orphans(services, db, known)
    home = services.home
    for d in found["dirs"]:
        remove_dir(home, d["dir"], d["name"])
    for pid in found["rows"]:
        delete_rows(db, pid)
    for pid in found["state"]:
        purge_services(services, pid)
    for pid in {d["name"] for d in found["dirs"]} | set(found["rows"]) | set(found["state"]):
        clear_cache(services, pid)
    found["cache_expired"] = cache_stats.purge_expired(home)
    return found
