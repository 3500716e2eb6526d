"""Plugins installed with pip, found through the ``corral.plugins`` entry point group.

Each entry point's value names a package (``acme_stats``), optionally with an
attribute (``acme_stats:plugin``), or a module inside one (``acme.stats.cli``);
the plugin directory is the directory of that package and must hold
``corral.toml``.  Discovery never imports plugin code: the package is located
with the import system's finders, walking the dotted name one component at a
time through each package's search locations, so no ``__init__`` ever runs.
A broken entry point is reported in :attr:`EntryPointPlugin.error`, never raised,
so one bad distribution cannot hide the others.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from corral._disk.layout import MANIFEST_NAME

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from importlib.metadata import Distribution, EntryPoint

__all__ = [
    "ENTRY_POINT_GROUP",
    "EntryPointPlugin",
    "discover_entry_points",
    "sys_path_fingerprint",
]

ENTRY_POINT_GROUP: Final = "corral.plugins"
_DOTTED: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class EntryPointPlugin(NamedTuple):
    """One ``corral.plugins`` entry point and where its plugin directory is.

    Exactly one of :attr:`plugin_dir` and :attr:`error` is set.
    """

    #: The entry point name (left of ``=`` in ``entry_points.txt``).
    name: str
    #: The distribution that declares it, as its metadata spells it.
    dist_name: str
    dist_version: str
    #: The entry point value, e.g. ``acme_stats:plugin``.
    value: str
    #: The directory holding ``corral.toml``, when it was found.
    plugin_dir: Path | None = None
    #: Why this entry point cannot be used, when it cannot.
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the plugin directory was found."""
        return self.error is None


def sys_path_fingerprint() -> tuple[tuple[str, int], ...]:
    """``(entry, st_mtime_ns)`` for each folder on ``sys.path``: a cheap cache key.

    Installing, upgrading or removing a distribution adds or removes a
    ``.dist-info`` folder, which changes its site folder's mtime.  A host can keep
    the result of :func:`discover_entry_points` with this key and skip
    discovery (and the ~50 ms import of :mod:`importlib.metadata`) while the
    key is unchanged.  Entries that are not folders count as mtime ``-1``.
    """
    out: list[tuple[str, int]] = []
    cwd = os.getcwd()
    for entry in sys.path:
        if entry in ("", ".", cwd):
            # The working directory changes all the time and never holds installed plugins.
            continue
        try:
            out.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            out.append((entry, -1))
    return tuple(out)


def _find_spec(module: str) -> ModuleSpec | None:
    """Locate ``module`` without running any code of it or of its parent packages.

    ``importlib.util.find_spec("a.b")`` would import ``a``; instead the top-level
    name goes through ``sys.meta_path`` (which finds but never executes) and each
    further component through :class:`~importlib.machinery.PathFinder`, limited
    to the parent's ``submodule_search_locations``.
    """
    import importlib.util
    from importlib.machinery import PathFinder

    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    name = top
    for part in rest:
        if spec is None or spec.submodule_search_locations is None:
            return None
        name = f"{name}.{part}"
        spec = PathFinder.find_spec(name, list(spec.submodule_search_locations))
    return spec


def _plugin_dir(value: str) -> Path:
    """The directory of the package ``value`` names; raise ValueError with the reason."""
    module = value.partition(":")[0].strip()
    if not _DOTTED.match(module):
        raise ValueError(f"entry point value {value!r} does not name a module")
    try:
        spec = _find_spec(module)
    except (ImportError, ValueError) as e:
        raise ValueError(f"cannot locate module {module!r}: {e}") from e
    if spec is None:
        raise ValueError(f"module {module!r} is not installed")
    if spec.submodule_search_locations is not None:
        # A package: its own folder (for a namespace package, the one with a manifest).
        candidates = [Path(loc) for loc in spec.submodule_search_locations]
        with_manifest = [c for c in candidates if (c / MANIFEST_NAME).is_file()]
        if len(with_manifest) > 1:
            raise ValueError(
                f"namespace package {module!r} has {MANIFEST_NAME} in several folders"
            )
        folder = with_manifest[0] if with_manifest else candidates[0] if candidates else None
    elif "." in module and spec.has_location and spec.origin:
        # A module inside a package: the package's folder.
        folder = Path(spec.origin).parent
    else:
        raise ValueError(f"{module!r} is a top-level module, not a package folder")
    if folder is None or not folder.is_dir():
        raise ValueError(f"package {module!r} is not a folder on disk")
    if not (folder / MANIFEST_NAME).is_file():
        raise ValueError(f"package {module!r} has no {MANIFEST_NAME} in {folder}")
    return folder


def _unique(dists: list[Distribution]) -> list[Distribution]:
    """First distribution of each name on ``sys.path``, as ``entry_points()`` keeps."""
    seen: set[str] = set()
    out: list[Distribution] = []
    for dist in dists:
        raw = dist.metadata["Name"] if dist.metadata is not None else None
        key = re.sub(r"[-_.]+", "-", raw).lower() if raw else f"?{id(dist)}"
        if key not in seen:
            seen.add(key)
            out.append(dist)
    return out


def _dist_id(dist: Distribution | None) -> tuple[str, str]:
    """``(name, version)`` of a distribution as its metadata spells them."""
    meta = dist.metadata if dist is not None else None
    if meta is None:
        return "", ""
    return meta["Name"] or "", meta["Version"] or ""


def _collect() -> tuple[list[tuple[EntryPoint, Distribution | None]], list[EntryPointPlugin]]:
    """Our entry points with their distributions, plus distributions that cannot be read.

    The fast path reads only ``entry_points.txt`` files; if one of them is
    malformed, every distribution is read on its own so the others still count.
    """
    import importlib.metadata

    try:
        group = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        return [(ep, ep.dist) for ep in group], []
    except Exception:  # noqa: S110 - fall back to the slow path, which names the culprit
        pass
    pairs: list[tuple[EntryPoint, Distribution | None]] = []
    broken: list[EntryPointPlugin] = []
    for dist in _unique(list(importlib.metadata.distributions())):
        try:
            pairs += [(ep, dist) for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        except Exception as e:  # a malformed entry_points.txt is that dist's problem
            name, version = _dist_id(dist)
            broken.append(
                EntryPointPlugin(
                    name="",
                    dist_name=name,
                    dist_version=version,
                    value="",
                    error=f"unreadable entry_points.txt: {e}",
                )
            )
    return pairs, broken


def discover_entry_points() -> list[EntryPointPlugin]:
    """Every ``corral.plugins`` entry point of the installed distributions.

    Import caches are invalidated first so that a plugin pip-installed while a
    host runs is seen.  Results are sorted by entry point name then
    distribution.  Problems (a module that is not installed, a package without
    ``corral.toml``, a top-level module file, a name declared twice, an
    unreadable ``entry_points.txt``) are returned as entries with
    :attr:`~EntryPointPlugin.error` set.
    """
    import importlib

    importlib.invalidate_caches()
    pairs, found = _collect()
    for ep, dist in pairs:
        dist_name, dist_version = _dist_id(dist)
        error: str | None = None
        folder: Path | None = None
        if not dist_name:
            error = "distribution has no Name in its metadata"
        else:
            try:
                folder = _plugin_dir(ep.value)
            except ValueError as e:
                error = str(e)
        found.append(
            EntryPointPlugin(
                name=ep.name,
                dist_name=dist_name,
                dist_version=dist_version,
                value=ep.value,
                plugin_dir=folder,
                error=error,
            )
        )
    found.sort(key=lambda p: (p.name, p.dist_name.lower()))
    seen: dict[str, str] = {}
    for i, plugin in enumerate(found):
        if plugin.error is not None or not plugin.name:
            continue
        if plugin.name in seen:
            found[i] = EntryPointPlugin(
                name=plugin.name,
                dist_name=plugin.dist_name,
                dist_version=plugin.dist_version,
                value=plugin.value,
                error=f"entry point {plugin.name!r} is also declared by {seen[plugin.name]!r}",
            )
        else:
            seen[plugin.name] = plugin.dist_name
    return found
