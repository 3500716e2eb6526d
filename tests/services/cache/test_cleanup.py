"""What the host keeps of a plugin's ``ctx.cache`` goes with ``remove --purge`` and ``gc``,
and ``corral top`` shows its hit rate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from helpers.cli import CliResult

from corral._host import Host
from corral._services.cache.stats import cache_stats


def test_purge_removes_the_plugins_cache_entries(host: Host,
                                                 cache_plugin: Callable[..., Path]) -> None:
    host.enable(host.register(cache_plugin("acme.c"))[0].id)
    host.enable(host.register(cache_plugin("acme.other"))[0].id)
    host.call("acme.c", "put", {"key": "a", "value": "x" * 100})
    host.call("acme.c", "put", {"key": "b", "value": "y"})
    host.call("acme.other", "put", {"key": "a", "value": "kept"})
    host._services.cache.flush()
    assert [s["entries"] for s in cache_stats(host.home, "acme.c")] == [2]
    report = host.unregister("acme.c", purge_data=True)
    assert report is not None
    assert report["removed"]["cache_entries"]["rows"] == 2
    assert report["removed"]["cache_entries"]["bytes"] > 100
    assert [(s["entries"], s["bytes"]) for s in cache_stats(host.home, "acme.c")] == [(0, 0)]
    # the neighbour's entry is untouched
    assert [s["entries"] for s in cache_stats(host.home, "acme.other")] == [1]
    assert host.call("acme.other", "get", {"key": "a"}) == "kept"


def test_top_shows_the_cache_hit_rate(host: Host, cache_plugin: Callable[..., Path],
                                      run_cli: Callable[..., CliResult]) -> None:
    host.enable(host.register(cache_plugin("acme.c"))[0].id)
    host.call("acme.c", "put", {"key": "a", "value": "x"})
    for _ in range(3):
        host.call("acme.c", "get", {"key": "a"})
    host.call("acme.c", "get", {"key": "missing"})
    host._services.cache.flush()
    host.flush_metrics()
    top = run_cli("top", "--once", "--json")
    assert top.code == 0, top.err
    (row,) = [p for p in top.json["plugins"] if p["plugin"] == "acme.c"]
    assert row["cache_hit_rate"] == 0.75
