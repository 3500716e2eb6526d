"""A strict worker forging cache requests past its proxy: the broker trusts none of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral import Host
from corral._services.sandboxed import sandbox_problem

pytestmark = pytest.mark.skipif(sandbox_problem("strict") is not None,
                                reason=str(sandbox_problem("strict")))


@pytest.fixture
def evil(host: Host, cache_plugin: Callable[..., Path]) -> Callable[..., Any]:
    for d in (cache_plugin("acme.victim", "none"), cache_plugin("acme.evil", "strict")):
        host.enable(host.register(d)[0].id)
    host.call("acme.victim", "put", {"key": "secret", "value": "hunter2", "tags": ["t"]})

    def raw(op: str, **args: Any) -> Any:
        return host.call("acme.evil", "raw", {"op": op, "args": args})

    return raw


def test_no_request_reaches_another_namespace(host: Host, evil: Callable[..., Any]) -> None:
    for op, args in [("cache.get", {"key": "secret"}), ("cache.lease", {"key": "secret"}),
                     ("cache.delete", {"key": "secret"}), ("cache.invalidate", {"tags": ["t"]}),
                     ("cache.release", {"key": "secret"})]:
        out = evil(op, ns="acme.victim", **args)
        assert out["code"] == "permission_denied", (op, out)
        assert "acme.victim" in out["details"]["permission"]
    out = host.call("acme.evil", "raw_set", {"size": 10, "args": {
        "ns": "acme.victim", "key": "secret", "kind": 0, "ttl": None, "stale": 0, "tags": []}})
    assert out["code"] == "permission_denied"
    assert out["details"]["permission"] == "host-api:cache.write:acme.victim"
    # namespaces that are not names, and an operation that does not exist
    for ns in (None, "", "ACME.victim", "acme..victim", ".acme", "acme.victim\x00", 7,
               "a" * 200, ["acme.victim"]):
        assert evil("cache.get", ns=ns, key="secret")["code"] == "usage", ns
    assert evil("cache.get", ns="acme.evil", key={"k": 1})["code"] == "usage"
    assert evil("cache.nuke", ns="acme.victim")["code"] == "permission_denied"
    # positive control: its own namespace answers, and the victim's entry is untouched
    assert evil("cache.get", ns="acme.evil", key="nothing") == {"ok": None}
    assert host.call("acme.victim", "get", {"key": "secret"}) == "hunter2"


def test_forged_values_are_refused(host: Host, evil: Callable[..., Any]) -> None:
    base = {"ns": "acme.evil", "key": "k", "ttl": None, "stale": 0, "tags": []}

    def forged(size: int, **changes: Any) -> Any:
        return host.call("acme.evil", "raw_set", {"size": size, "args": {**base, **changes}})

    big = forged(5 * 1024 * 1024, kind=1)
    assert big["code"] == "resource_limit"
    assert big["details"]["limit"] == "cache-value-bytes"
    assert forged(10, kind=0)["code"] == "usage"  # "xxxxxxxxxx" is not JSON
    assert forged(10, kind=7)["code"] == "usage"
    assert forged(10, kind=1, ttl="forever")["code"] == "usage"
    assert forged(10, kind=1, tags="t")["code"] == "usage"
    assert forged(10, kind=1, key="k" * 600)["details"]["limit"] == "cache-key-bytes"
    assert forged(10, kind=1, tags=[f"t{i}" for i in range(100)])["details"]["limit"] == \
        "cache-tags"
    # positive control: a well-formed request is kept
    assert forged(10, kind=1)["ok"]["stored"] is True
    assert host.call("acme.evil", "get_bytes_len", {"key": "k"}) == ["bytes", 10]


def test_forged_counters_are_ignored(host: Host, evil: Callable[..., Any]) -> None:
    for l1 in ({"hits": 10**15}, {"hits": -5}, {"hits": "many"}, {"evictions": 1.5}, "x"):
        evil("cache.get", ns="acme.evil", key="k", l1=l1)
    evil("cache.get", ns="acme.evil", key="k", l1={"hits": 3})
    assert host.cache_stats("acme.evil")[0]["levels"]["l1"]["hits"] == 3
