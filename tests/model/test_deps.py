"""Dependency rules: order, cycles, missing and incompatible plugins, requires-corral."""

from __future__ import annotations

import pytest

from corral import InvalidPluginError, Manifest
from corral._model.deps import (
    check_dependencies,
    check_requires_corral,
    dependency_order,
    dependents_of,
    find_cycle,
)


def m(pid: str, version: str = "1.0.0", requires: str = "", **deps: str) -> Manifest:
    plugin = {"id": pid, "name": pid, "version": version}
    if requires:
        plugin["requires-corral"] = requires
    return Manifest.from_dict(
        {"plugin": plugin, "dependencies": {k.replace("__", "."): v for k, v in deps.items()}}
    )


def known(*manifests: Manifest) -> dict[str, Manifest]:
    return {x.id: x for x in manifests}


def test_order_puts_dependencies_first() -> None:
    k = known(
        m("app.main", app__db=">=1", app__log=""),
        m("app.db", app__log=">=1"),
        m("app.log"),
        m("app.unrelated"),
    )
    order = dependency_order(["app.main"], k)
    assert order == ["app.log", "app.db", "app.main"]
    assert "app.unrelated" not in order


def test_order_of_several_targets_has_no_duplicates() -> None:
    k = known(m("a.x", a__z=""), m("a.y", a__z=""), m("a.z"))
    order = dependency_order(["a.y", "a.x"], k)
    assert sorted(order) == ["a.x", "a.y", "a.z"]
    assert order.index("a.z") < order.index("a.x")
    assert order.index("a.z") < order.index("a.y")


def test_cycle_names_every_member() -> None:
    k = known(m("c.a", c__b=""), m("c.b", c__c=""), m("c.c", c__a=""), m("c.free"))
    cycle = find_cycle({pid: tuple(x.dependencies) for pid, x in k.items()})
    assert cycle is not None
    assert sorted(cycle) == ["c.a", "c.b", "c.c"]
    with pytest.raises(InvalidPluginError) as info:
        dependency_order(["c.a"], k)
    message = str(info.value)
    assert "cycle" in message
    for member in ("c.a", "c.b", "c.c"):
        assert member in message
    assert "c.free" not in message
    assert sorted(info.value.details["cycle"]) == ["c.a", "c.b", "c.c"]


def test_two_plugin_cycle() -> None:
    graph = {"x.a": ("x.b",), "x.b": ("x.a",)}
    assert sorted(find_cycle(graph) or []) == ["x.a", "x.b"]


def test_no_cycle() -> None:
    assert find_cycle({"x.a": ("x.b",), "x.b": (), "x.c": ("x.a", "x.b")}) is None
    assert find_cycle({"x.a": ("not.known",)}) is None


def test_missing_dependency_names_the_range() -> None:
    with pytest.raises(InvalidPluginError) as info:
        check_dependencies(m("a.app", a__lib=">=1.0,<2"), known(m("a.other")))
    message = str(info.value)
    assert "a.app" in message
    assert "a.lib >=1.0,<2" in message
    assert "not registered" in message
    assert info.value.details["range"] == ">=1.0,<2"
    assert info.value.details["dependency"] == "a.lib"
    assert info.value.exit_code == 3


def test_missing_dependency_through_order() -> None:
    with pytest.raises(InvalidPluginError, match=r"a\.lib"):
        dependency_order(["a.app"], known(m("a.app", a__lib=">=1")))


def test_incompatible_version_names_found_version() -> None:
    with pytest.raises(InvalidPluginError) as info:
        check_dependencies(m("a.app", a__lib=">=2,<3"), known(m("a.lib", "1.4.0")))
    message = str(info.value)
    assert "a.lib >=2,<3" in message
    assert "1.4.0" in message
    assert info.value.details["found"] == "1.4.0"


def test_compatible_versions_pass() -> None:
    k = known(m("a.lib", "1.4.0"))
    check_dependencies(m("a.app", a__lib=">=1.0,<2"), k)
    check_dependencies(m("a.app", a__lib=""), k)
    check_dependencies(m("a.app", a__lib="~=1.4"), k)


def test_prerelease_dependency_counts_when_in_range() -> None:
    check_dependencies(m("a.app", a__lib=">=1.0"), known(m("a.lib", "2.0.0rc1")))


def test_requires_corral() -> None:
    check_requires_corral(m("a.p"), "0.1.0")
    check_requires_corral(m("a.p", requires=">=0.1"), "0.1.0")
    with pytest.raises(InvalidPluginError) as info:
        check_requires_corral(m("a.p", requires=">=99"), "0.1.0")
    assert ">=99" in str(info.value)
    assert "0.1.0" in str(info.value)
    assert info.value.details["requires_corral"] == ">=99"
    assert info.value.plugin_id == "a.p"


def test_dependents_of_is_transitive_and_ordered() -> None:
    k = known(
        m("d.base"),
        m("d.mid", d__base=""),
        m("d.top", d__mid=""),
        m("d.side", d__base=""),
        m("d.alone"),
    )
    out = dependents_of("d.base", k)
    assert sorted(out) == ["d.mid", "d.side", "d.top"]
    assert out.index("d.mid") < out.index("d.top")
    assert dependents_of("d.top", k) == []
    assert dependents_of("d.alone", k) == []
    assert dependents_of("d.mid", k) == ["d.top"]
