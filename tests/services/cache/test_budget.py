"""The cache stays within ``cache-mb``; admission keeps what is used; stats count it all."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corral import Host
from corral._runtime.cache.memory import MemoryCache
from corral._runtime.cache.values import KIND_BYTES
from corral._services.sandboxed import sandbox_problem

MIB = 1024 * 1024
LEVELS = [
    pytest.param("none", id="none"),
    pytest.param("strict", id="strict", marks=pytest.mark.skipif(
        sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))),
]


@pytest.mark.parametrize("level", LEVELS)
def test_l2_stays_within_cache_mb(host: Host, cache_plugin: Callable[..., Path],
                                  level: str) -> None:
    host.enable(host.register(cache_plugin("acme.b", level, sandbox={"cache-mb": 1}))[0].id)
    kept = 0
    for i in range(40):  # 40 x 100 KiB = 4 MiB written into a 1 MiB budget
        kept += bool(host.call("acme.b", "put_bytes",
                               {"key": f"k{i}", "value": "x" * 1024, "times": 100}))
        stats = host.cache_stats("acme.b")[0]
        assert stats["bytes"] <= 1 * MIB, i
    assert stats["budget"] == 1 * MIB
    levels = stats["levels"]
    assert levels["l2"]["evictions"] + levels["l2"]["rejected"] >= 30
    assert stats["entries"] <= 10
    assert kept >= 10
    held = [i for i in range(40)
            if host.call("acme.b", "get_bytes_len", {"key": f"k{i}"}) == ["bytes", 102400]]
    assert 1 <= len(held) <= 10
    # a key asked for again and again is admitted over the colder ones it displaces
    for _ in range(3):
        stored = host.call("acme.b", "put_bytes", {"key": "hot", "value": "y" * 1024,
                                                   "times": 100})
    assert stored is True
    assert host.call("acme.b", "get_bytes_len", {"key": "hot"}) == ["bytes", 102400]
    assert host.cache_stats("acme.b")[0]["bytes"] <= 1 * MIB


@pytest.mark.parametrize("level", LEVELS)
def test_one_entry_larger_than_the_budget_is_refused(
        host: Host, cache_plugin: Callable[..., Path], level: str) -> None:
    host.enable(host.register(cache_plugin("acme.b", level, sandbox={"cache-mb": 1}))[0].id)
    out = host.call("acme.b", "try_", {"method": "set", "args": ["big", "x" * (2 * MIB)]})
    assert out["code"] == "resource_limit"
    assert out["details"]["limit"] == "cache-mb"
    assert host.cache_stats("acme.b")[0]["bytes"] == 0


class _AdmitAll:
    """No admission: every newcomer displaces the least recently used entry."""

    def record(self, key: object) -> None:
        pass

    def admit(self, *args: object) -> bool:
        return True


def _workload(l1: MemoryCache) -> int:
    """50 hot keys asked for in turn, a never-repeated scan key between two of them;
    how many of the hot keys are held at the end."""
    hot = [f"hot{i}" for i in range(50)]
    for i in range(5000):
        for key in (hot[i % 50], f"scan{i}"):
            if l1.get(key) is None:
                l1.put(key, b"x" * 36, KIND_BYTES, 1e12, 1e12, 100)
    assert l1.size <= l1.capacity
    return sum(key in l1.data for key in hot)


def test_admission_keeps_hot_entries_through_a_scan() -> None:
    l1 = MemoryCache(60 * 100)  # room for 60 entries: fewer than the reuse distance
    assert _workload(l1) >= 25
    assert l1.stats.rejected > 4000  # most scan keys never got in
    assert l1.stats.hits > 2000  # of the 5000 hot lookups (measured: 2775)
    # positive control: plain LRU (every newcomer admitted) loses every hot key to the scan
    plain = MemoryCache(60 * 100)
    plain.admission = _AdmitAll()  # type: ignore[assignment]
    _workload(plain)
    assert plain.stats.hits == 0  # every hot key was pushed out before it was asked again


def test_stats_count_each_level(host: Host, cache_plugin: Callable[..., Path]) -> None:
    host.enable(host.register(cache_plugin("acme.s"))[0].id)
    host.call("acme.s", "put", {"key": "a", "value": 1})
    for _ in range(3):
        host.call("acme.s", "get", {"key": "a"})  # L1 hits
    host.call("acme.s", "get", {"key": "nope"})  # L1 miss, L2 miss
    host._services.cache.l1("acme.s").clear()
    host.call("acme.s", "get", {"key": "a"})  # L1 miss, L2 hit
    stats = host.cache_stats("acme.s")[0]
    l1, l2 = stats["levels"]["l1"], stats["levels"]["l2"]
    assert (l1["hits"], l1["misses"], l2["hits"], l2["misses"]) == (3, 2, 1, 1)
    assert l2["sets"] == 1
    assert stats["hit_rate"] == pytest.approx(4 / 5)
    assert stats["entries"] == 1
    from corral._services.cache.stats import hit_rates

    assert hit_rates(host.home) == {"acme.s": pytest.approx(4 / 5)}  # as `corral top` reads


def test_purge_expired_from_outside(host: Host, cache_plugin: Callable[..., Path]) -> None:
    from corral._services.cache.stats import purge_expired

    assert purge_expired(host.home) == 0  # no cache yet
    host.enable(host.register(cache_plugin("acme.p"))[0].id)
    host.call("acme.p", "put", {"key": "gone", "value": 1, "ttl": 0.1})
    host.call("acme.p", "put", {"key": "kept", "value": 2, "ttl": 600})
    time.sleep(0.3)
    assert purge_expired(host.home) == 1
    assert host.cache_stats("acme.p")[0]["entries"] == 1


def test_threads_sharing_one_l1_keep_it_consistent() -> None:
    from concurrent.futures import ThreadPoolExecutor

    l1 = MemoryCache(50 * 100)

    def hammer(t: int) -> None:
        for i in range(3000):
            key = f"k{(i * 7 + t) % 400}"
            if l1.get(key) is None:
                l1.put(key, b"x" * 36, KIND_BYTES, 1e12, 1e12, 100)
            if i % 97 == 0:
                l1.discard(key)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hammer, range(8)))  # re-raises any error of a thread
    assert l1.size == sum(e[4] for e in l1.data.values())
    assert l1.size <= l1.capacity
