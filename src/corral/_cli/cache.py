"""The ``cache`` verb: ``corral cache stats [ID]`` and ``corral cache clear ID [--tag T]``.

Both read ``<home>/cache.db`` (see docs/caching.md); running hosts drop their
in-memory copies of what ``clear`` removed before they next use them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from corral._cli.output import dump, host_for, table
from corral._errors import UsageError

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder

__all__ = ["add_verbs"]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / (1024 * 1024):.1f} MiB"


def _stats_rows(stats: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in stats:
        levels = s["levels"]
        memo = levels.get("memo")
        rows.append([
            s["plugin"], _rate(s["hit_rate"]), _rate(levels["l1"]["hit_rate"]),
            _rate(levels["l2"]["hit_rate"]), _rate(memo["hit_rate"]) if memo else "-",
            str(s["entries"]), f"{_size(s['bytes'])} of {_size(s['budget'])}",
            str(sum(lv["evictions"] for lv in levels.values())),
            str(sum(lv["rejected"] for lv in levels.values())),
        ])
    return rows


def cmd_cache(args: argparse.Namespace) -> int:
    if args.action == "stats":
        if args.tag is not None:
            raise UsageError("--tag goes with corral cache clear")
        with host_for(args) as host:
            stats = host.cache_stats(args.id)
        if args.json:
            dump({"plugins": stats})
        elif not stats:
            print("no plugin has used its cache yet")
        else:
            print(table(_stats_rows(stats), ["plugin", "hit rate", "l1", "l2", "memo", "entries",
                                             "l2 size", "evicted", "refused"]))
        return 0
    if args.id is None:
        raise UsageError("corral cache clear needs the plugin's id")
    with host_for(args) as host:
        removed = host.cache_clear(args.id, args.tag)
    if args.json:
        dump({"plugin": args.id, "tag": args.tag, "removed": removed})
    else:
        what = f"entries tagged {args.tag!r}" if args.tag else "entries"
        print(f"removed {removed['entries']} {what} ({_size(removed['bytes'])}) "
              f"from the cache of {args.id}")
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``cache stats|clear``."""
    sp = verb("cache", cmd_cache, "show hit rates and sizes of plugins' caches, or clear one")
    sp.add_argument("action", choices=["stats", "clear"],
                    help="stats: hits, misses, evictions per level and size; clear: empty it")
    sp.add_argument("id", nargs="?", default=None, help="the plugin (all with a cache if unset)")
    sp.add_argument("--tag", default=None, help="clear only the entries carrying this tag")
