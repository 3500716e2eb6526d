"""Fast discovery of plugin directories under ``<home>/plugins/``.

A plugin directory is ``<root>/<name>/`` holding ``corral.toml``.  The host
keeps, in its database, the ``(st_mtime_ns, st_size)`` of each manifest it has
parsed; :func:`scan_plugin_dirs` stats every manifest (one ``scandir`` of the
root and one ``stat`` per plugin, no file is opened) and says which directories
are new, changed, unchanged or gone, so that only new and changed manifests
are parsed again and a host with hundreds of plugins starts fast.

Hidden entries (names starting with ``.``) are skipped: archives are extracted
into hidden temporary siblings before being renamed into place.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from corral._disk.layout import MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "ScanResult", "StatKey", "scan_plugin_dirs"]


#: What is remembered of a manifest: ``(st_mtime_ns, st_size)``.
StatKey = tuple[int, int]


class ScanResult:
    """How the plugin directories differ from the cache passed in.

    Keys of :attr:`cache` and the paths in each list are the plugin directories
    as ``str(root / name)``; every list is sorted.  (A plain class: importing
    dataclasses would cost more than a whole scan of a hundred plugins.)
    """

    __slots__ = ("cache", "changed", "gone", "new", "unchanged")

    def __init__(self, cache: dict[str, StatKey] | None = None) -> None:
        #: Directories not in the old cache.
        self.new: list[Path] = []
        #: Directories whose manifest's mtime or size differs from the cache.
        self.changed: list[Path] = []
        #: Directories whose manifest looks the same: no need to parse it again.
        self.unchanged: list[Path] = []
        #: Cached directories with no manifest any more.
        self.gone: list[Path] = []
        #: The cache to persist: every directory present now, with its manifest's stat.
        self.cache: dict[str, StatKey] = {} if cache is None else cache

    @property
    def dirty(self) -> bool:
        """Whether anything differs from the cache passed in."""
        return bool(self.new or self.changed or self.gone)


def scan_plugin_dirs(root: Path, cache: dict[str, StatKey]) -> ScanResult:
    """Compare the manifests under ``root`` with ``cache``; never parse TOML.

    Args:
        root: the plugins folder (``<home>/plugins``); a missing folder holds
            no plugins.
        cache: ``{str(plugin_dir): (st_mtime_ns, st_size)}`` from the last scan;
            not modified.

    Returns:
        A :class:`ScanResult` whose :attr:`~ScanResult.cache` replaces ``cache``.
    """
    current: dict[str, StatKey] = {}
    try:
        entries = os.scandir(root)
    except (FileNotFoundError, NotADirectoryError):
        entries = None
    if entries is not None:
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if not entry.is_dir():
                        continue
                    st = os.stat(os.path.join(entry.path, MANIFEST_NAME))
                except OSError:  # no manifest, or a dangling link: not a plugin
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                current[entry.path] = (st.st_mtime_ns, st.st_size)
    result = ScanResult(cache=current)
    for key in sorted(current):
        old = cache.get(key)
        if old is None:
            result.new.append(Path(key))
        elif tuple(old) != current[key]:
            result.changed.append(Path(key))
        else:
            result.unchanged.append(Path(key))
    result.gone.extend(Path(key) for key in sorted(cache.keys() - current.keys()))
    return result
