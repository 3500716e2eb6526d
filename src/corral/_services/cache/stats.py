"""What ``corral cache stats`` and ``corral top`` read: counters per plugin and level, L2 use.

Counters are written to ``<home>/cache.db`` by the processes that counted them
(every few seconds and when a plugin stops), so another process can read them
without a host: :func:`cache_stats`.  :func:`clear_cache` empties a plugin's cache
the same way (``corral cache clear``, ``corral remove --purge``, ``corral gc``), and
:func:`purge_expired` drops what is past its time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from corral._services.cache.store import Level2, open_existing

__all__ = ["LEVELS", "cache_stats", "clear_cache", "describe", "hit_rate", "hit_rates",
           "purge_expired"]

#: The levels reported: ``ctx.cache``'s L1 (in process, or in the worker) and L2 (the home),
#: and memoised exports (``memo``: answered from memory or L2, or computed: a miss).
LEVELS: Final = ("l1", "l2", "memo")
_FIELDS: Final = ("hits", "misses", "sets", "evictions", "rejected", "expired")


def hit_rate(counters: dict[str, int]) -> float | None:
    """Hits over lookups, or ``None`` before the first lookup."""
    lookups = counters.get("hits", 0) + counters.get("misses", 0)
    return round(counters.get("hits", 0) / lookups, 4) if lookups else None


def describe(store: Level2, plugin_id: str, cap: int | None) -> dict[str, Any]:
    """``plugin_id``'s counters per level, its entries and bytes in L2 and its budget."""
    counters = store.counters(plugin_id)
    memo_l1 = counters.pop("memo-l1", None)
    if memo_l1 is not None:  # a memo L1 miss goes on to L2, which counts it
        memo = counters.setdefault("memo", dict.fromkeys(_FIELDS, 0))
        for name in ("hits", "evictions", "rejected", "expired"):
            memo[name] = memo.get(name, 0) + memo_l1.get(name, 0)
    levels: dict[str, Any] = {}
    for level in LEVELS:
        c = counters.get(level, {})
        if c or level != "memo":
            levels[level] = {**{k: c.get(k, 0) for k in _FIELDS}, "hit_rate": hit_rate(c)}
    entries, used = store.usage(plugin_id)
    hits = sum(levels[lv]["hits"] for lv in LEVELS if lv in levels)
    # an L1 miss goes on to L2: count the lookups that reached the plugin's code once
    misses = levels["l2"]["misses"] + levels.get("memo", {}).get("misses", 0)
    out: dict[str, Any] = {
        "plugin": plugin_id,
        "entries": entries,
        "bytes": used,
        "budget": cap,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "levels": levels,
    }
    return out


def cache_stats(home: Path, plugin_id: str | None = None) -> list[dict[str, Any]]:
    """The stats of ``plugin_id`` (or of every plugin with a cache) from ``home``'s L2.

    ``budget`` is ``None`` here: the budget is the plugin's ``cache-mb``, which the
    caller knows from its manifest.  An absent database means no cache yet: ``[]``.
    """
    store = open_existing(home)
    if store is None:
        return []
    try:
        ids = [plugin_id] if plugin_id is not None else store.owners()
        return [describe(store, pid, None) for pid in ids]
    finally:
        store.close()


def hit_rates(home: Path) -> dict[str, float | None]:
    """Each plugin's overall cache hit rate (``None`` before its first lookup): the column
    ``corral top`` shows.  Plugins that never used their cache are absent."""
    return {s["plugin"]: s["hit_rate"] for s in cache_stats(home)}


def clear_cache(home: Path, plugin_id: str, tag: str | None = None) -> dict[str, int]:
    """Remove ``plugin_id``'s L2 entries (only those tagged ``tag``, if given) and, without
    a tag, its counters; ``{"entries": n, "bytes": n}`` removed.  Running hosts drop their
    L1s of it at their next look (within a fraction of a second, and before any call)."""
    store = open_existing(home)
    if store is None:
        return {"entries": 0, "bytes": 0}
    try:
        return store.clear(plugin_id, tag)
    finally:
        store.close()


def purge_expired(home: Path) -> int:
    """Remove every entry of ``home``'s L2 past its keeping time; how many (0 if no cache)."""
    store = open_existing(home)
    if store is None:
        return 0
    try:
        return store.purge_expired()
    finally:
        store.close()
