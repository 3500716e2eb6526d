"""``corral cache stats|clear`` for real, and running hosts and workers seeing the clear."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cli import CliResult

from corral import Host
from corral._services.sandboxed import sandbox_problem

LEVELS = [
    pytest.param("none", id="none"),
    pytest.param("strict", id="strict", marks=pytest.mark.skipif(
        sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))),
]


@pytest.mark.parametrize("level", LEVELS)
def test_clear_from_another_process_reaches_a_running_host(
        host: Host, cache_plugin: Callable[..., Path], run_cli: Callable[..., CliResult],
        level: str) -> None:
    host.enable(host.register(cache_plugin("acme.c", level))[0].id)
    host.call("acme.c", "put", {"key": "a", "value": 1, "tags": ["users"]})
    host.call("acme.c", "put", {"key": "b", "value": 2})
    assert host.call("acme.c", "get", {"key": "a"}) == 1  # now in L1 (host's or worker's)
    out = run_cli("cache", "clear", "acme.c", "--tag", "users", "--json")
    assert out.code == 0, out.err
    assert out.json["removed"]["entries"] == 1
    time.sleep(0.3)  # in process, the host looks for other processes' changes every 0.2 s
    assert host.call("acme.c", "get", {"key": "a"}) == "MISSING"
    assert host.call("acme.c", "get", {"key": "b"}) == 2
    out = run_cli("cache", "clear", "acme.c")
    assert out.code == 0
    assert "removed 1 entries" in out.out
    time.sleep(0.3)
    assert host.call("acme.c", "get", {"key": "b"}) == "MISSING"


def test_stats_and_errors(host: Host, cache_plugin: Callable[..., Path],
                          run_cli: Callable[..., CliResult]) -> None:
    out = run_cli("cache", "stats", "--json")
    assert out.code == 0
    assert out.json == {"plugins": []}
    host.enable(host.register(cache_plugin("acme.c", sandbox={"cache-mb": 2}))[0].id)
    host.call("acme.c", "put", {"key": "a", "value": "x" * 100})
    host.call("acme.c", "get", {"key": "a"})
    host.call("acme.c", "square", {"n": 2})
    host.call("acme.c", "square", {"n": 2})
    host._services.cache.flush()
    out = run_cli("cache", "stats", "acme.c", "--json")
    assert out.code == 0, out.err
    (stats,) = out.json["plugins"]
    assert stats["plugin"] == "acme.c"
    assert stats["budget"] == 2 * 1024 * 1024
    assert stats["entries"] == 2  # its entry and the memoised result
    assert stats["levels"]["l1"]["hits"] == 1
    assert stats["levels"]["memo"]["hits"] == 1
    assert stats["levels"]["memo"]["misses"] == 1
    table = run_cli("cache", "stats")
    assert table.code == 0
    assert "acme.c" in table.out
    assert "HIT RATE" in table.out.upper()
    missing = run_cli("cache", "stats", "acme.nope", "--json")
    assert missing.code != 0
    assert missing.json["error"]["code"] == "not_found"
    no_id = run_cli("cache", "clear", "--json")
    assert no_id.json["error"]["code"] == "usage"
    stray = run_cli("cache", "stats", "--tag", "x", "--json")
    assert stray.json["error"]["code"] == "usage"
