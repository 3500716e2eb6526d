"""Finding and importing plugin code that runs in the host process (``isolation = "none"``).

:func:`corral._disk.targets.check_targets` proves, without running anything, that every ``entry``,
export and micro handler names a module inside the plugin directory that
compiles and defines that name.  :class:`ModuleScope` then imports the code
with the plugin directory as the only root for its top-level modules.
:func:`source_only` makes every import from under a plugin directory compile
from its source (what the signature covers): byte code the plugin shipped
(``__pycache__``, a sourceless ``.pyc``) is never read, none is written.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from corral._errors import InvalidPluginError, PluginError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType


__all__ = ["ModuleScope", "source_only"]


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles a plugin module from its source every time; never reads or writes a cache."""

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)  # and so writes no cache


_SOURCE_ROOTS: set[str] = set()
#: Extension modules and source, as Python's own order; no sourceless byte code.
_LOADERS: Final = (
    (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    (_SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES),
)


def _under_roots(path: str) -> bool:
    return any(path == r or path.startswith(r + os.sep) for r in _SOURCE_ROOTS)


def _source_only_hook(entry: str) -> importlib.abc.PathEntryFinder:
    """A path hook: a source-only finder for a folder under a plugin directory."""
    full = os.path.abspath(entry or os.getcwd())
    if not _under_roots(full):
        raise ImportError("not a plugin directory")
    return importlib.machinery.FileFinder(full, *_LOADERS)


def source_only(plugin_dir: str | os.PathLike[str]) -> None:
    """Import everything under ``plugin_dir`` from source, ignoring any shipped byte code.

    Python would otherwise run ``__pycache__/m.cpython-3X.pyc`` whenever its
    header (source mtime and size) matches, whatever code it holds, and a
    sourceless ``m.pyc`` outright; neither is covered by a signature.
    """
    _SOURCE_ROOTS.add(os.path.abspath(plugin_dir))
    if _source_only_hook not in sys.path_hooks:
        sys.path_hooks.insert(0, _source_only_hook)
    for cached in [k for k in sys.path_importer_cache if _under_roots(os.path.abspath(k or "."))]:
        del sys.path_importer_cache[cached]


@final
class _Owner:
    """Who provides a top-level module name: a plugin version, from one directory."""

    __slots__ = ("plugin_id", "root", "users", "version")

    def __init__(self, plugin_id: str, version: str, root: str) -> None:
        self.plugin_id = plugin_id
        self.version = version
        self.root = root
        self.users = 1


@final
class _ScopedFinder(importlib.abc.MetaPathFinder):
    """Serves the top-level modules claimed by loaded plugins from their own directories.

    ``sys.modules`` is one namespace per process: two hosts that load the same
    version of a plugin share its modules; two versions cannot be loaded at once.
    """

    def __init__(self) -> None:
        self.owners: dict[str, _Owner] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is not None:
            return None
        owner = self.owners.get(fullname)
        if owner is None:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [owner.root])


_FINDER = _ScopedFinder()


def _top_level_names(plugin_dir: Path) -> set[str]:
    names: set[str] = set()
    for child in plugin_dir.iterdir():
        if child.suffix == ".py" and child.stem.isidentifier():
            names.add(child.stem)
        elif child.is_dir() and child.name.isidentifier() and child.name != "__pycache__":
            names.add(child.name)
    return names


@final
class ModuleScope:
    """The imported code of one in-process plugin; :meth:`release` forgets it again."""

    __slots__ = ("_names", "plugin_dir", "plugin_id", "version")

    def __init__(self, plugin_id: str, version: str, plugin_dir: Path) -> None:
        self.plugin_id = plugin_id
        self.version = version
        self.plugin_dir = plugin_dir
        self._names: set[str] = set()

    def claim(self, needed: set[str]) -> None:
        """Claim the plugin's top-level module names.

        A name in ``needed`` (the heads of the manifest's targets) that another
        plugin or an installed module already owns is refused; other clashing
        names are left unclaimed, so a stray ``tests`` folder does no harm.
        """
        if _FINDER not in sys.meta_path:
            sys.meta_path.append(_FINDER)
        source_only(self.plugin_dir)
        root = str(self.plugin_dir)
        claimed: set[str] = set()
        shared: set[str] = set()
        for name in sorted(_top_level_names(self.plugin_dir) | needed):
            owner = _FINDER.owners.get(name)
            problem = None
            if owner is not None:
                if (owner.plugin_id, owner.version) == (self.plugin_id, self.version):
                    shared.add(name)
                    continue
                if owner.plugin_id == self.plugin_id:
                    problem = (
                        f"is already loaded in this process from version {owner.version} "
                        f"({owner.root}); in-process plugins share one module namespace, so "
                        "two versions cannot be loaded at once"
                    )
                else:
                    problem = (
                        f"is already provided by plugin {owner.plugin_id} ({owner.root}); "
                        "rename one of them"
                    )
            elif (
                name in sys.modules
                or name in sys.stdlib_module_names
                or importlib.machinery.PathFinder.find_spec(name) is not None
            ):
                problem = "would shadow an installed module of the same name; rename it"
            if problem is None:
                claimed.add(name)
            elif name in needed:
                raise InvalidPluginError(
                    f"{self.plugin_id}: top-level module {name!r} {problem}",
                    plugin_id=self.plugin_id,
                    module=name,
                )
        for name in claimed:
            _FINDER.owners[name] = _Owner(self.plugin_id, self.version, root)
        for name in shared:
            _FINDER.owners[name].users += 1
        self._names = claimed | shared

    def resolve(self, target: str) -> Any:
        """Import ``module:attr`` and return the attribute; failures are the plugin's."""
        module_name, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError as exc:
            raise InvalidPluginError(
                f"{self.plugin_id}: {target}: {exc}", plugin_id=self.plugin_id, target=target
            ) from exc
        except Exception as exc:
            import traceback

            raise PluginError(
                f"{self.plugin_id}: importing {module_name} raised "
                f"{type(exc).__name__}: {exc}",
                plugin_id=self.plugin_id,
                traceback="".join(traceback.format_exception(exc)),
            ) from exc
        return obj

    def release(self) -> None:
        """Drop the plugin's modules from ``sys.modules`` and free its names."""
        for name in self._names:
            owner = _FINDER.owners.get(name)
            if owner is None or owner.plugin_id != self.plugin_id:
                continue
            owner.users -= 1
            if owner.users > 0:
                continue
            del _FINDER.owners[name]
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]
        self._names = set()
        importlib.invalidate_caches()
