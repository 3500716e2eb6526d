"""Plugin dependency rules: order, cycles, missing and incompatible versions.

I/O-free: takes the manifests the host knows and answers or raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from corral._errors import InvalidPluginError

if TYPE_CHECKING:
    from corral._model.manifest import Manifest

__all__ = [
    "check_dependencies",
    "check_requires_corral",
    "dependency_order",
    "dependents_of",
    "find_cycle",
]


def check_requires_corral(manifest: Manifest, host_version: str) -> None:
    """Refuse a plugin whose ``requires-corral`` excludes this host."""
    if not manifest.requires_corral:
        return
    from packaging.specifiers import SpecifierSet

    if host_version not in SpecifierSet(manifest.requires_corral, prereleases=True):
        raise InvalidPluginError(
            f"{manifest.id}: plugin.requires-corral = {manifest.requires_corral!r} excludes "
            f"this host, corral {host_version}",
            plugin_id=manifest.id,
            key="plugin.requires-corral",
            requires_corral=manifest.requires_corral,
            host_version=host_version,
        )


def _dependency_key(dep_id: str) -> str:
    """The manifest key of a dependency, as written: ``dependencies."acme.lib"``."""
    return f'dependencies."{dep_id}"'


def check_dependencies(manifest: Manifest, known: Mapping[str, Manifest]) -> None:
    """Raise naming the dependency and the range when one is missing or out of range."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for dep_id, spec in manifest.dependencies.items():
        dep = known.get(dep_id)
        if dep is None:
            raise InvalidPluginError(
                f"{manifest.id} needs {dep_id} {spec or '(any version)'} "
                f"({_dependency_key(dep_id)}), which is not registered",
                plugin_id=manifest.id,
                key=_dependency_key(dep_id),
                dependency=dep_id,
                range=spec,
            )
        if spec and Version(dep.version) not in SpecifierSet(spec, prereleases=True):
            raise InvalidPluginError(
                f"{manifest.id} needs {dep_id} {spec} ({_dependency_key(dep_id)}), "
                f"but {dep_id} {dep.version} is registered",
                plugin_id=manifest.id,
                key=_dependency_key(dep_id),
                dependency=dep_id,
                range=spec,
                found=dep.version,
            )


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return the members of one dependency cycle (in order), or ``None``."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in color:
                continue
            if color[nxt] == grey:
                return stack[stack.index(nxt) :]
            if color[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in sorted(graph):
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def dependency_order(targets: Iterable[str], known: Mapping[str, Manifest]) -> list[str]:
    """Every target with its dependencies, dependencies first; raise on cycles or gaps."""
    graph = {pid: tuple(m.dependencies) for pid, m in known.items()}
    order: list[str] = []
    seen: set[str] = set()
    path: list[str] = []

    def visit(pid: str) -> None:
        if pid in seen:
            return
        if pid in path:
            cycle = path[path.index(pid) :]
            raise InvalidPluginError(
                "dependency cycle: " + " -> ".join([*cycle, pid]),
                plugin_id=pid,
                cycle=cycle,
            )
        manifest = known.get(pid)
        if manifest is None:
            raise InvalidPluginError(
                f"{path[-1] if path else pid} needs {pid}, which is not registered",
                plugin_id=path[-1] if path else pid,
                dependency=pid,
            )
        check_dependencies(manifest, known)
        path.append(pid)
        for dep in sorted(graph[pid]):
            visit(dep)
        path.pop()
        seen.add(pid)
        order.append(pid)

    for target in sorted(targets):
        visit(target)
    return order


def dependents_of(plugin_id: str, known: Mapping[str, Manifest]) -> list[str]:
    """Every plugin that needs ``plugin_id``, directly or not, dependents last."""
    reverse: dict[str, list[str]] = {}
    for pid, m in known.items():
        for dep in m.dependencies:
            reverse.setdefault(dep, []).append(pid)
    out: list[str] = []
    todo = sorted(reverse.get(plugin_id, ()))
    while todo:
        pid = todo.pop(0)
        if pid in out:
            continue
        out.append(pid)
        todo.extend(sorted(reverse.get(pid, ())))
    return out
