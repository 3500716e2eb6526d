"""Memoised exports (``[exports.NAME] cache = {ttl = ...}``): keyed by input, version, config."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.hosts import close_quietly

from corral import Host
from corral._errors import ManifestError, PluginError
from corral._model.manifest import Manifest, parse_manifest
from corral._services.sandboxed import sandbox_problem

LEVELS = [
    pytest.param("none", id="none"),
    pytest.param("strict", id="strict", marks=pytest.mark.skipif(
        sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))),
]


def _computed(host: Host, pid: str) -> int:
    return len([w for w in host.call(pid, "computed", None) if w == "square"])


@pytest.mark.parametrize("level", LEVELS)
def test_same_input_computed_once(host: Host, cache_plugin: Callable[..., Path],
                                  level: str) -> None:
    host.enable(host.register(cache_plugin("acme.m", level))[0].id)
    first = host.call("acme.m", "square", {"n": 3, "m": 1})
    assert first["square"] == 9
    for _ in range(3):
        assert host.call("acme.m", "square", {"m": 1, "n": 3}) == first  # key order: same input
    assert _computed(host, "acme.m") == 1
    host.call("acme.m", "square", {"n": 3, "m": 1.0})  # 1.0 is not 1 in canonical JSON
    host.call("acme.m", "square", {"n": 3, "m": True})
    host.call("acme.m", "square", {"n": 4, "m": 1})
    assert _computed(host, "acme.m") == 4
    # a caller changing what it got never changes what the next caller gets
    got = host.call("acme.m", "square", {"n": 3, "m": 1})
    got["square"] = -1
    assert host.call("acme.m", "square", {"n": 3, "m": 1})["square"] == 9
    stats = host.cache_stats("acme.m")[0]["levels"]["memo"]
    assert stats["hits"] >= 4
    assert stats["misses"] == 4


@pytest.mark.parametrize("level", LEVELS)
def test_errors_are_not_memoised(host: Host, cache_plugin: Callable[..., Path],
                                 level: str) -> None:
    path = cache_plugin("acme.m", level)
    toml = (path / "corral.toml").read_text()
    mod = "cp_acme_m"
    (path / "corral.toml").write_text(toml.replace(
        f'"fails" = "{mod}:fails"',
        f'"fails" = {{"target" = "{mod}:fails", "cache" = {{"ttl" = 600}}}}'))
    host.enable(host.register(path)[0].id)
    for _ in range(3):
        with pytest.raises(PluginError, match="never kept"):
            host.call("acme.m", "fails", {"n": 1})
    assert host.call("acme.m", "computed", None).count("fails") == 3


@pytest.mark.skipif(sandbox_problem("strict") is not None, reason=str(sandbox_problem("strict")))
def test_a_strict_hit_never_reaches_the_worker(host: Host,
                                               cache_plugin: Callable[..., Path]) -> None:
    host.enable(host.register(cache_plugin("acme.m", "strict"))[0].id)
    host.call("acme.m", "square", {"n": 5})
    supervisor = host.attachments.supervisor()
    supervisor.stop("acme.m")  # no worker left to answer
    assert supervisor._plugins["acme.m"].worker is None
    assert host.call("acme.m", "square", {"n": 5})["square"] == 25
    assert supervisor._plugins["acme.m"].worker is None
    assert _computed(host, "acme.m") == 1


def test_update_and_config_change_miss(tmp_path: Path, home: Path, workspace: Path,
                                       cache_plugin: Callable[..., Path]) -> None:
    src = tmp_path / "src-plugin"
    cache_plugin("acme.m", root=src)
    plugin_dir = src / "src" / "acme.m"
    h = Host(home=home, workspace=workspace, config={"acme.m": {"unit": "m"}})
    try:
        h.enable(h.register(plugin_dir)[0].id)
        assert h.call("acme.m", "square", {"n": 2})["config"] == {"unit": "m"}
        h.call("acme.m", "square", {"n": 2})
        assert _computed(h, "acme.m") == 1
    finally:
        close_quietly(h)
    # the same version and configuration in a new host: kept in L2, not computed again
    h = Host(home=home, workspace=workspace, config={"acme.m": {"unit": "m"}})
    try:
        h.call("acme.m", "square", {"n": 2})
        assert _computed(h, "acme.m") == 1
    finally:
        close_quietly(h)
    # another configuration: computed again
    h = Host(home=home, workspace=workspace, config={"acme.m": {"unit": "km"}})
    try:
        assert h.call("acme.m", "square", {"n": 2})["config"] == {"unit": "km"}
        assert _computed(h, "acme.m") == 2
        # an update in place (same source, new version): computed again
        toml = (plugin_dir / "corral.toml").read_text()
        (plugin_dir / "corral.toml").write_text(toml.replace('"1.0.0"', '"1.1.0"'))
        assert h.register(plugin_dir)[0].version == "1.1.0"  # reloaded, still enabled
        h.call("acme.m", "square", {"n": 2})
        assert _computed(h, "acme.m") == 3
    finally:
        close_quietly(h)


def test_ttl_expiry(host: Host, cache_plugin: Callable[..., Path]) -> None:
    host.enable(host.register(cache_plugin("acme.m", ttl=0.3))[0].id)
    host.call("acme.m", "square", {"n": 2})
    host.call("acme.m", "square", {"n": 2})
    assert _computed(host, "acme.m") == 1
    time.sleep(0.5)
    host.call("acme.m", "square", {"n": 2})
    assert _computed(host, "acme.m") == 2


MANIFEST = """
[plugin]
id = "acme.m"
name = "M"
version = "1.0.0"

[exports]
plain = "acme_m:plain"

[exports.lookup]
target = "acme_m:lookup"
cache = { ttl = "10m", stale = 30 }
"""


def test_manifest_form_and_round_trip() -> None:
    m = parse_manifest(MANIFEST)
    assert m.exports == {"plain": "acme_m:plain", "lookup": "acme_m:lookup"}
    assert m.export_cache["lookup"].ttl == 600
    assert m.export_cache["lookup"].stale == 30
    assert "plain" not in m.export_cache
    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(("body", "where"), [
    ('cache = { ttl = "10 minutes" }', "exports.lookup.cache.ttl"),
    ("cache = { ttl = 0 }", "exports.lookup.cache.ttl"),
    ('cache = { ttl = "40d" }', "exports.lookup.cache.ttl"),
    ("cache = { stale = 5 }", "exports.lookup.cache.ttl"),
    ('cache = { ttl = "1m", size = 3 }', "exports.lookup.cache.size"),
    ('cache = "10m"', "exports.lookup.cache"),
    ("tagret = 'x:y'", "exports.lookup.tagret"),
])
def test_bad_cache_tables_name_the_key(body: str, where: str) -> None:
    text = MANIFEST.replace('cache = { ttl = "10m", stale = 30 }', body)
    with pytest.raises(ManifestError) as err:
        parse_manifest(text)
    assert where in err.value.message
