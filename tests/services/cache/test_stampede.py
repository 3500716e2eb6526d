"""Stampede protection: many callers of one missing key, one computation; stale values served."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral import Host
from corral._services.sandboxed import sandbox_problem


def _enable(host: Host, *dirs: Path) -> None:
    for d in dirs:
        host.enable(host.register(d)[0].id)


def test_threads_in_process_compute_once(host: Host, cache_plugin: Callable[..., Path]) -> None:
    _enable(host, cache_plugin("acme.c"))
    n = 16
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(
            lambda i: host.call("acme.c", "compute", {"key": "k", "sleep": 0.3, "value": i}),
            range(n)))
    assert host.call("acme.c", "computed", None) == ["k"]  # judged by the plugin's own counter
    assert len({r["value"] for r in results}) == 1  # everybody got the one computed value


def test_waiters_compute_after_a_failed_leader(host: Host,
                                              cache_plugin: Callable[..., Path]) -> None:
    _enable(host, cache_plugin("acme.c"))
    barrier = threading.Barrier(2)

    def leader() -> str:
        barrier.wait()
        try:
            host.call("acme.c", "compute", {"key": "k", "sleep": 0.3, "fail": True})
        except Exception as exc:
            return type(exc).__name__
        return "no error"

    def follower() -> int:
        barrier.wait()
        time.sleep(0.1)  # arrives while the leader computes
        return int(host.call("acme.c", "compute", {"key": "k", "value": 5})["value"])

    with ThreadPoolExecutor(2) as pool:
        failed, got = pool.submit(leader), pool.submit(follower)
        assert failed.result() == "PluginError"
        assert got.result() == 5  # the error was not shared: the follower computed itself
    assert host.call("acme.c", "computed", None) == ["k", "k"]


def test_stale_value_served_while_one_caller_recomputes(
        host: Host, cache_plugin: Callable[..., Path]) -> None:
    _enable(host, cache_plugin("acme.c"))
    first = host.call("acme.c", "compute", {"key": "k", "value": 1, "ttl": 0.2, "stale": 600})
    time.sleep(0.4)  # past its ttl, within its stale grace
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(host.call, "acme.c", "compute",
                           {"key": "k", "value": 2, "gate": True, "ttl": 600})
        deadline = time.monotonic() + 10
        while host.call("acme.c", "computed", None) != ["k", "k"]:
            assert time.monotonic() < deadline, "the recomputation never started"
            time.sleep(0.02)
        # while it recomputes, another caller gets the stale value at once
        assert host.call("acme.c", "compute", {"key": "k", "value": 3}) == first
        host.call("acme.c", "open_gate", None)
        assert slow.result()["value"] == 2
    assert host.call("acme.c", "compute", {"key": "k", "value": 4})["value"] == 2
    assert host.call("acme.c", "computed", None) == ["k", "k"]


@pytest.mark.skipif(sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))
def test_workers_sharing_a_namespace_compute_once(
        host: Host, cache_plugin: Callable[..., Path]) -> None:
    """Two strict plugins (two workers) ask for one missing key of a shared namespace."""
    grants = ["cache.read:shared.k", "cache.write:shared.k"]
    _enable(host, cache_plugin("acme.one", "strict", grants=grants),
            cache_plugin("acme.two", "strict", grants=grants))
    for pid in ("acme.one", "acme.two"):
        host.call(pid, "computed", None)  # workers started before the race
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(
            lambda pid: host.call(pid, "compute", {"ns": "shared.k", "key": "k", "sleep": 1.0,
                                                   "value": pid}),
            ["acme.one", "acme.two"]))
    counts = [len(host.call(pid, "computed", None)) for pid in ("acme.one", "acme.two")]
    assert sorted(counts) == [0, 1]
    assert results[0] == results[1]


@pytest.mark.parametrize("level", [
    "none",
    pytest.param("strict", marks=pytest.mark.skipif(
        sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))),
])
def test_a_leader_refused_its_write_ends_its_lease(
        host: Host, cache_plugin: Callable[..., Path], level: str) -> None:
    _enable(host, cache_plugin("acme.ro", level, grants=["cache.read:shared.r"]))
    with pytest.raises(Exception, match=r"cache\.write:shared\.r"):
        host.call("acme.ro", "compute", {"ns": "shared.r", "key": "k"})
    assert host.call("acme.ro", "computed", None) == ["k"]
    assert host._services.cache.flights.leading() == 0
