"""``ctx.cache`` at every isolation level: get/set/delete, TTLs, tags, copies, bounds, grants."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.hosts import close_quietly

from corral import Host
from corral._services.sandboxed import sandbox_problem

LEVELS = [
    pytest.param("none", id="none"),
    pytest.param("limited", id="limited", marks=pytest.mark.skipif(
        sandbox_problem("limited") is not None, reason=str(sandbox_problem("limited")))),
    pytest.param("strict", id="strict", marks=pytest.mark.skipif(
        sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))),
]


@pytest.fixture
def host(home: Path, workspace: Path) -> Iterator[Host]:
    h = Host(home=home, workspace=workspace, hook_timeout=5.0)
    try:
        yield h
    finally:
        close_quietly(h)


def _enable(host: Host, *dirs: Path) -> None:
    for d in dirs:
        host.enable(host.register(d)[0].id)


@pytest.mark.parametrize("level", LEVELS)
def test_set_get_delete_and_copies(host: Host, cache_plugin: Callable[..., Path],
                                   level: str) -> None:
    _enable(host, cache_plugin("acme.c", level))
    assert host.call("acme.c", "get", {"key": "a"}) == "MISSING"
    assert host.call("acme.c", "put", {"key": "a", "value": {"x": [1, 2]}}) is True
    assert host.call("acme.c", "get", {"key": "a"}) == {"x": [1, 2]}
    # what a caller gets is its own copy: changing it never changes the cache
    assert host.call("acme.c", "get_twice_mutating", {"key": "a"}) == {"x": [1, 2]}
    assert host.call("acme.c", "put_bytes", {"key": "b", "value": "xy", "times": 3}) is True
    assert host.call("acme.c", "get_bytes_len", {"key": "b"}) == ["bytes", 6]
    assert host.call("acme.c", "delete", {"key": "a"}) is True
    assert host.call("acme.c", "delete", {"key": "a"}) is False
    assert host.call("acme.c", "get", {"key": "a"}) == "MISSING"
    # L2 outlives the host: a new host on the same home reads it
    close_quietly(host)
    again = Host(home=host.home, workspace=host.workspace, hook_timeout=5.0)
    try:
        again.enable("acme.c")
        assert again.call("acme.c", "get_bytes_len", {"key": "b"}) == ["bytes", 6]
    finally:
        close_quietly(again)


@pytest.mark.parametrize("level", LEVELS)
def test_ttl_expiry_and_tags(host: Host, cache_plugin: Callable[..., Path], level: str) -> None:
    _enable(host, cache_plugin("acme.c", level))
    host.call("acme.c", "put", {"key": "short", "value": 1, "ttl": 0.3})
    host.call("acme.c", "put", {"key": "long", "value": 2, "ttl": 600})
    host.call("acme.c", "put", {"key": "t1", "value": 3, "tags": ["users", "x"]})
    host.call("acme.c", "put", {"key": "t2", "value": 4, "tags": ["users"]})
    host.call("acme.c", "put", {"key": "t3", "value": 5, "tags": ["orders"]})
    assert host.call("acme.c", "get", {"key": "short"}) == 1
    time.sleep(0.5)
    assert host.call("acme.c", "get", {"key": "short"}) == "MISSING"
    assert host.call("acme.c", "get", {"key": "long"}) == 2
    assert host.call("acme.c", "invalidate", {"tags": ["users"]}) == 2
    assert [host.call("acme.c", "get", {"key": k}) for k in ("t1", "t2", "t3")] == [
        "MISSING", "MISSING", 5]


@pytest.mark.parametrize("level", LEVELS)
def test_errors_are_never_kept(host: Host, cache_plugin: Callable[..., Path], level: str) -> None:
    _enable(host, cache_plugin("acme.c", level))
    for _ in range(2):
        with pytest.raises(Exception, match="no value today"):
            host.call("acme.c", "compute", {"key": "k", "fail": True})
    assert host.call("acme.c", "computed", None) == ["k", "k"]
    first = host.call("acme.c", "compute", {"key": "k", "value": 7})
    assert first["value"] == 7
    assert host.call("acme.c", "compute", {"key": "k", "value": 8}) == first
    assert host.call("acme.c", "computed", None) == ["k", "k", "k"]


@pytest.mark.parametrize("level", LEVELS)
def test_hostile_keys_and_values_are_bounded(host: Host, cache_plugin: Callable[..., Path],
                                             level: str) -> None:
    _enable(host, cache_plugin("acme.c", level))

    def attempt(method: str, *args: object, **kwargs: object) -> dict[str, object]:
        out = host.call("acme.c", "try_", {"method": method, "args": list(args),
                                           "kwargs": kwargs})
        assert isinstance(out, dict)
        return out

    too_long = attempt("set", "k" * 513, 1)
    assert too_long["code"] == "resource_limit"
    assert too_long["details"]["limit"] == "cache-key-bytes"
    wide = attempt("set", "é" * 300, 1)  # 600 bytes in UTF-8, 300 characters
    assert wide["details"]["limit"] == "cache-key-bytes"
    huge = attempt("set", "k", "x" * (5 * 1024 * 1024))
    assert huge["code"] == "resource_limit"
    assert huge["details"]["limit"] == "cache-value-bytes"
    assert "cache-value-bytes" in str(huge["message"])
    tags = attempt("set", "k", 1, tags=[f"t{i}" for i in range(17)])
    assert tags["details"]["limit"] == "cache-tags"
    assert attempt("set", "", 1)["code"] == "usage"
    assert attempt("set", "k", 1, ttl=-1)["code"] == "usage"
    assert attempt("get", 12)["code"] == "usage"
    assert host.call("acme.c", "bad_value", None) == "usage"
    assert attempt("namespace", "../x")["code"] == "usage"
    # positive control: the bounds themselves are fine
    assert attempt("set", "k" * 512, "x" * 1024) == {"ok": True}
    assert host.call("acme.c", "get", {"key": "k" * 512}) == "x" * 1024


@pytest.mark.parametrize("level", LEVELS)
def test_other_namespaces_need_grants(host: Host, cache_plugin: Callable[..., Path],
                                      level: str) -> None:
    _enable(host,
            cache_plugin("acme.victim", "none"),
            cache_plugin("acme.thief", level),
            cache_plugin("acme.reader", level, grants=[
                "cache.read:acme.victim", "cache.read:shared.*", "cache.write:shared.*"]))
    host.call("acme.victim", "put", {"key": "secret", "value": "hunter2"})
    for op in ("get", "set", "delete", "invalidate"):
        args: list[object] = {"get": ["secret"], "set": ["secret", "owned"],
                              "delete": ["secret"], "invalidate": ["x"]}[op]
        out = host.call("acme.thief", "try_", {"ns": "acme.victim", "method": op, "args": args})
        assert out["code"] == "permission_denied", (op, out)
        grant = "cache.read" if op == "get" else "cache.write"
        assert out["details"]["permission"] == f"host-api:{grant}:acme.victim"
        assert f"{grant}:acme.victim" in out["message"]
    # the granted reader reads, but may not write there
    assert host.call("acme.reader", "get", {"ns": "acme.victim", "key": "secret"}) == "hunter2"
    out = host.call("acme.reader", "try_", {"ns": "acme.victim", "method": "set",
                                             "args": ["secret", "owned"]})
    assert out["code"] == "permission_denied"
    assert out["details"]["permission"] == "host-api:cache.write:acme.victim"
    assert host.call("acme.victim", "get", {"key": "secret"}) == "hunter2"
    # a shared namespace it was granted: written by the reader, read back there
    assert host.call("acme.reader", "put", {"ns": "shared.a", "key": "k", "value": 1}) is True
    assert host.call("acme.reader", "get", {"ns": "shared.a", "key": "k"}) == 1
    out = host.call("acme.thief", "try_", {"ns": "shared.a", "method": "get", "args": ["k"]})
    assert out["details"]["permission"] == "host-api:cache.read:shared.a"


def test_a_disabled_and_enabled_plugin_still_sees_clears(
        host: Host, cache_plugin: Callable[..., Path]) -> None:
    _enable(host, cache_plugin("acme.c"))
    host.call("acme.c", "put", {"key": "a", "value": 1})
    host.disable("acme.c")
    host.enable("acme.c")
    host.call("acme.c", "put", {"key": "a", "value": 2})
    assert host.call("acme.c", "get", {"key": "a"}) == 2
    from corral._services.cache.stats import clear_cache

    clear_cache(host.home, "acme.c")  # as another process would
    time.sleep(0.3)
    assert host.call("acme.c", "get", {"key": "a"}) == "MISSING"
