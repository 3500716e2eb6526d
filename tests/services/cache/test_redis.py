"""L2 in a real Redis server (``[cache] url``): two homes share one cache."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.hosts import close_quietly

from corral import Host
from corral._errors import ManifestError
from corral._services.cache.store import cache_url
from corral._services.sandboxed import sandbox_problem

pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="no redis-server on this machine")
MIB = 1024 * 1024


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


def _host(home: Path, workspace: Path, url: str) -> Host:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text(f'[cache]\nurl = "{url}"\n')
    return Host(home=home, workspace=workspace, hook_timeout=5.0)


@pytest.mark.parametrize("level", [
    "none",
    pytest.param("strict", marks=pytest.mark.skipif(
        sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))),
])
def test_two_homes_share_one_redis_cache(tmp_path: Path, workspace: Path, redis_url: str,
                                         cache_plugin: Callable[..., Path], level: str) -> None:
    a = _host(tmp_path / "a", workspace, redis_url)
    b = _host(tmp_path / "b", workspace, redis_url)
    try:
        for h in (a, b):
            h.enable(h.register(cache_plugin("acme.r", level))[0].id)
        assert a.call("acme.r", "put", {"key": "k", "value": {"v": 1}, "tags": ["t"]}) is True
        assert b.call("acme.r", "get", {"key": "k"}) == {"v": 1}  # the other home reads it
        assert b.call("acme.r", "invalidate", {"tags": ["t"]}) == 1
        time.sleep(0.3)  # a looks for other hosts' changes every 0.2 s
        assert a.call("acme.r", "get", {"key": "k"}) == "MISSING"
        first = a.call("acme.r", "square", {"n": 4})
        assert b.call("acme.r", "square", {"n": 4}) == first  # memoised once for both
        computed = [len(h.call("acme.r", "computed", None)) for h in (a, b)]
        assert sorted(computed) == [0, 1]
        assert not (tmp_path / "a" / "cache.db").exists()
        stats = a.cache_stats("acme.r")[0]
        assert stats["entries"] == 1
        assert stats["levels"]["memo"]["misses"] >= 1
        assert b.cache_clear("acme.r")["entries"] == 1
        assert a.cache_stats("acme.r")[0]["entries"] == 0
    finally:
        close_quietly(a)
        close_quietly(b)


def test_budget_holds_in_redis(tmp_path: Path, workspace: Path, redis_url: str,
                               cache_plugin: Callable[..., Path]) -> None:
    h = _host(tmp_path / "a", workspace, redis_url)
    try:
        h.enable(h.register(cache_plugin("acme.r", sandbox={"cache-mb": 1}))[0].id)
        for i in range(30):
            h.call("acme.r", "put_bytes", {"key": f"k{i}", "value": "x" * 1024, "times": 100})
            assert h.cache_stats("acme.r")[0]["bytes"] <= 1 * MIB
        levels = h.cache_stats("acme.r")[0]["levels"]
        assert levels["l2"]["evictions"] + levels["l2"]["rejected"] >= 20
        for _ in range(3):  # asked for again and again: admitted
            stored = h.call("acme.r", "put_bytes", {"key": "hot", "value": "y", "times": 1000})
        assert stored is True
        assert h.call("acme.r", "get_bytes_len", {"key": "hot"}) == ["bytes", 1000]
    finally:
        close_quietly(h)


def test_bad_urls_are_named(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('[cache]\nurl = "http://cache:6379"\n')
    with pytest.raises(ManifestError) as err:
        cache_url(tmp_path)
    assert err.value.details["key"] == "cache.url"
    (tmp_path / "settings.toml").write_text("[cache]\n")
    assert cache_url(tmp_path) is None


def test_an_unreachable_redis_is_unavailable(tmp_path: Path, workspace: Path,
                                              cache_plugin: Callable[..., Path]) -> None:
    h = _host(tmp_path / "a", workspace, f"unix://{tmp_path}/nobody.sock")
    try:
        h.enable(h.register(cache_plugin("acme.r"))[0].id)
        out = h.call("acme.r", "try_", {"method": "get", "args": ["k"]})
        assert out["code"] == "unavailable"
        assert "nobody.sock" in out["message"]
    finally:
        close_quietly(h)


def test_a_redis_that_goes_away_is_unavailable(tmp_path: Path, workspace: Path,
                                               redis_url: str,
                                               cache_plugin: Callable[..., Path]) -> None:
    import redis

    h = _host(tmp_path / "a", workspace, redis_url)
    try:
        h.enable(h.register(cache_plugin("acme.r"))[0].id)
        assert h.call("acme.r", "put", {"key": "k", "value": 1}) is True
        redis.Redis.from_url(redis_url).shutdown(nosave=True)
        out = h.call("acme.r", "try_", {"method": "get", "args": ["other"]})
        assert out["code"] == "unavailable"
        # what its L1 holds can no longer be checked against the others': not served
        time.sleep(0.3)
        out = h.call("acme.r", "try_", {"method": "get", "args": ["k"]})
        assert out["code"] == "unavailable"
    finally:
        close_quietly(h)
